"""Tool-call and reasoning parsers, one class per model family, behind two registries.

`TOOL_PARSERS` and `REASONING_PARSERS` map a family's name to its class; `tool_parser_for` and
`reasoning_parser_for` pick the family for the served model from what decides it (its chat
template and vocabulary). docs/ARCHITECTURE.md ("Parser families") says how to add one.
"""
from __future__ import annotations

from typing import Optional

from frontend.openai.parsers.base import Item, ParsedCall, ReasoningParser, ToolParser, new_call_id
from frontend.openai.parsers.deepseek_r1 import THINK_END, THINK_START, DeepSeekR1ReasoningParser
from frontend.openai.parsers.json_tools import JsonToolsParser
from frontend.openai.parsers.llama3_json import Llama3JsonParser
from frontend.openai.parsers.registry import ParserRegistry, UnknownParser

TOOL_PARSERS: ParserRegistry[ToolParser] = ParserRegistry("tool-call parser", ToolParser)
TOOL_PARSERS.register(JsonToolsParser)
TOOL_PARSERS.register(Llama3JsonParser)

REASONING_PARSERS: ParserRegistry[ReasoningParser] = ParserRegistry("reasoning parser", ReasoningParser)
REASONING_PARSERS.register(DeepSeekR1ReasoningParser)


def tool_parser_for(renders_tools: bool) -> str:
    """The tool-call family of a model: a template that renders the tool list itself (it reads
    `tools`: Llama-3.1/3.2/3.3) asks for Llama-3.1's calls; every other template gets our tool
    prompt, which asks for ours."""
    return Llama3JsonParser.name if renders_tools else JsonToolsParser.name


def reasoning_parser_for(chat_template: Optional[str], vocab: Optional[dict]) -> Optional[str]:
    """The reasoning family of a model, or None when it writes no reasoning part: the first
    registered family that fits its template and vocabulary."""
    return next((family.name for family in REASONING_PARSERS if family.fits(chat_template, vocab)), None)


__all__ = ["Item", "ParsedCall", "ReasoningParser", "ToolParser", "new_call_id", "THINK_END", "THINK_START",
           "DeepSeekR1ReasoningParser", "JsonToolsParser", "Llama3JsonParser", "TOOL_PARSERS", "REASONING_PARSERS",
           "ParserRegistry", "UnknownParser", "tool_parser_for", "reasoning_parser_for"]
