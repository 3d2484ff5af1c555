"""Llama-3.1's JSON tool-call format: `{"name": <tool>, "parameters": {...}}` (or an array of them).

The family of templates that render the tool list themselves (Llama-3.1/3.2/3.3: their template
reads `tools` and asks for this object). A named tool_choice still produces a whole call object of
that one function, in this format, so there is no arguments-only mode.
"""
from __future__ import annotations

from frontend.openai.parsers.json_calls import JsonCallParser


class Llama3JsonParser(JsonCallParser):
    name = "llama3_json"
    key = "parameters"
    named_call_is_arguments = False
