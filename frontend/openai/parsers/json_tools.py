"""Our tool-call format: `{"name": <tool>, "arguments": {...}}`, or a JSON array of such calls.

The family of Llama-2 and of every template that does not render a tool list: the tools go into
the system prompt with our wording (frontend/openai/tools.py, `tools_system_prompt`), which asks for
this format. A named tool_choice asks for the function's arguments object alone, so with
`arguments_of` the whole reply is that call's arguments.
"""
from __future__ import annotations

from frontend.openai.parsers.json_calls import JsonCallParser


class JsonToolsParser(JsonCallParser):
    name = "json_tools"
    key = "arguments"
    named_call_is_arguments = True
