"""Tool calling: prompting and constrained call grammars (parsing is frontend/openai/parsers/).

Call format. A tool call is produced as constrained JSON text:

* Llama-2 and every template that does not render a tool list itself: the tools go into the
  system prompt with the fixed wording of `tools_system_prompt` (below), and a call is
  `{"name": <tool name>, "arguments": {...}}`.
* Templates that render tools natively (Llama-3.1/3.2/3.3: the template reads `tools`): the
  template renders the tools, and a call is Llama-3.1's `{"name": <tool name>, "parameters": {...}}`.

`tool_choice` (default `auto` with tools, else `none`):

* `none`: no tools in the prompt, no tool grammar: plain text (a `response_format` applies if
  given); finish_reason stop / length.
* `auto`: tools in the prompt; the grammar allows a call, or (with `parallel_tool_calls`) a JSON
  array of >= 1 calls, or plain text whose first non-whitespace character is not `{` or `[`;
  finish_reason `tool_calls` when a call was produced, else stop / length.
* `required`: tools in the prompt; a call or (parallel) an array of >= 1 calls; `tool_calls`.
* named function: tools in the prompt; Llama-2 (no tool list in the template): the output is the
  function's arguments object (guide: its parameters schema); native templates: a call of that
  one function in the template's format. finish_reason `stop`, as OpenAI does for a forced call.

A call's name is one of the request's tools (`const`), its arguments follow the tool's
`parameters` schema (a tool without parameters takes `{}`); the schemas are compiled with
xgrammar's strict mode (no properties beyond those listed). `response_format` together with
`tool_choice` auto is refused (a JSON answer and a call could not be told apart); with named or
required the tool grammar wins (there is no text answer to format).

Parsing. The model's tool-call family (frontend/openai/parsers/: `json_tools` for our format,
`llama3_json` for templates that render tools) reads one choice's answer text incrementally into
OpenAI's deltas: the first delta of each call carries `index`, `id` (`call_<24 hex>`), `type:
"function"` and `function: {name, arguments: ""}`; later deltas carry only `{index, function:
{arguments: <fragment>}}`, where the fragments are the raw text of the arguments value in the
output. The non-streamed response runs the same parser over the same text and joins the
fragments, so the streamed and non-streamed `arguments` strings are equal byte for byte. In auto
mode the first non-whitespace character decides, as in the grammar: `{` or `[` is a call,
anything else is content (leading whitespace is held until then). A call whose
text ends early (finish_reason length) keeps its partial arguments; text that never got as far
as a tool name comes back as `content`.

Round trip. Assistant messages with `tool_calls` and `tool` messages go back into the prompt:
for Llama-2 as documented in `chat_prompt.py` (calls as the same JSON, results as user turns);
for native templates as the template renders them (Llama-3.1: calls as its JSON, results as
`ipython` turns; arguments are handed to the template as objects, and a message with several
calls becomes consecutive assistant messages of one call each, since the template takes one).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Optional

from frontend import errors
from frontend.openai.message_models import ChatTool
from frontend.openai.parsers import TOOL_PARSERS, ToolParser, tool_parser_for
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.structured import MAX_TOOLS, GuideSpec, checked_schema

EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
# Plain text in auto mode: anything whose first non-whitespace character is not `{` or `[` (so it
# cannot be taken for a call, also after SentencePiece's leading space is stripped from the text).
TEXT_RULE = r"root ::= [ \t\r\n]{0,8} [^{\[ \t\r\n] [^]*"


def parameters_of(tool: ChatTool) -> dict:
    return tool.function.parameters if tool.function.parameters is not None else EMPTY_PARAMETERS


# ---- the plan of one request -----------------------------------------------------------------

@dataclass
class ToolPlan:
    mode: str                       # none | auto | required | named
    tools: list[ChatTool]
    parser: str                     # the tool-call family (frontend/openai/parsers/)
    native: bool                    # the template renders the tool list
    parallel: bool
    named: Optional[ChatTool] = None

    @classmethod
    def from_request(cls, req: ChatCompletionRequest, native: bool) -> "ToolPlan":
        if req.tools and len(req.tools) > MAX_TOOLS:
            raise errors.bad_request(f"Invalid 'tools': {len(req.tools)} tools; at most {MAX_TOOLS} are allowed.",
                                     "tools", "too_many_tools")
        mode = req.tool_choice_mode
        tools = list(req.tools or []) if mode != "none" else []
        return cls(mode, tools, tool_parser_for(native), native, bool(req.parallel_tool_calls),
                   req.named_tool if mode == "named" else None)

    @property
    def key(self) -> str:
        """The call object's member that holds the arguments ("arguments" or "parameters")."""
        return TOOL_PARSERS.lookup(self.parser).key

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    @property
    def arguments_only(self) -> bool:
        """Named function on a family whose prompt asks for the arguments object alone (ours: a
        template without a tool list)."""
        return self.mode == "named" and TOOL_PARSERS.lookup(self.parser).named_call_is_arguments

    def finish_reason(self, reason: Optional[str], produced_calls: bool) -> Optional[str]:
        if reason == "stop" and produced_calls and self.mode in ("auto", "required"):
            return "tool_calls"
        return reason

    def template_tools(self) -> Optional[list[dict]]:
        """The tool list for a template that renders tools (OpenAI's shape)."""
        if not self.active or not self.native:
            return None
        return [t.model_dump(exclude_none=True, by_alias=True) for t in self.tools]

    def system_prompt(self) -> Optional[str]:
        """Our tool instructions for templates that do not render tools themselves."""
        if not self.active or self.native:
            return None
        return tools_system_prompt(self.tools, self.mode, self.parallel,
                                   self.named.function.name if self.named else None)

    def guide(self) -> Optional[GuideSpec]:
        if not self.active:
            return None
        return tool_guide(self)

    def new_parser(self) -> ToolParser:
        """A parser of one choice's answer, of the model's tool-call family."""
        family = TOOL_PARSERS.lookup(self.parser)
        return family(arguments_of=self.named.function.name if self.arguments_only else None)


def check_combination(req: ChatCompletionRequest, plan: ToolPlan, has_response_format: bool) -> None:
    if plan.active and plan.mode == "auto" and has_response_format:
        raise errors.bad_request(
            "response_format cannot be combined with tool_choice 'auto': a formatted answer and a tool call "
            "could not be told apart. Use tool_choice 'none' (answer formatted) or 'required' / a named "
            "function (calls only).", "response_format", "unsupported_combination")


# ---- prompt wording --------------------------------------------------------------------------

def _function_line(tool: ChatTool) -> str:
    entry = {"name": tool.function.name}
    if tool.function.description:
        entry["description"] = tool.function.description
    entry["parameters"] = parameters_of(tool)
    return json.dumps(entry, ensure_ascii=False)


def tools_system_prompt(tools: list[ChatTool], mode: str, parallel: bool, named: Optional[str] = None) -> str:
    """The fixed tool instructions for templates without a tool list (appended to the system prompt)."""
    lines = ["You can call functions. These are the available functions, one JSON object per line, each with "
             "its name, its description and its parameters as a JSON schema:", ""]
    lines += [_function_line(t) for t in tools]
    lines.append("")
    call = ('{"name": <function name>, "arguments": <JSON object of the arguments, matching the function\'s '
            'parameters>}')
    several = " To call several functions at once, reply with a JSON array of such objects." if parallel else ""
    if mode == "named":
        lines.append(f'You must call the function "{named}": reply with only the JSON object of its arguments, '
                     f"matching its parameters, and nothing else.")
    elif mode == "required":
        lines.append(f"You must call at least one function: reply with only a JSON object of exactly this form, "
                     f"and nothing else: {call}.{several}")
    else:
        lines.append(f"To call a function, reply with only a JSON object of exactly this form, and nothing else: "
                     f"{call}.{several} If no function is needed, reply in plain text that does not start with "
                     f'"{{" or "[".')
    lines.append('The result of a call comes back in a user message that starts with "[tool result for call <id>]".')
    return "\n".join(lines)


# ---- grammars --------------------------------------------------------------------------------

def _rewrite_refs(node: Any, base: str) -> Any:
    """Point a tool's own `$ref`s ("#/...") at its copy under `base` ("#/$defs/tool0")."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and (v == "#" or v.startswith("#/")):
                out[k] = base + v[1:]
            else:
                out[k] = _rewrite_refs(v, base)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, base) for v in node]
    return node


def calls_schema(tools: list[ChatTool], key: str, parallel: bool, parameters: Optional[list[dict]] = None) -> dict:
    """JSON schema of the call output: one call object (any tool), or an array of >= 1 when parallel.
    `parameters` are the tools' parameter schemas as checked (schema_subset), else as given."""
    defs: dict = {}
    alternatives = []
    for i, tool in enumerate(tools):
        name = f"tool{i}"
        params = parameters[i] if parameters is not None else parameters_of(tool)
        defs[name] = _rewrite_refs(copy.deepcopy(params), f"#/$defs/{name}")
        alternatives.append({"type": "object",
                             "properties": {"name": {"const": tool.function.name}, key: {"$ref": f"#/$defs/{name}"}},
                             "required": ["name", key], "additionalProperties": False})
    one = alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    schema: dict = {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if parallel else dict(one)
    schema["$defs"] = defs
    return schema


def tool_guide(plan: ToolPlan) -> GuideSpec:
    """The calls guide. Each tool's parameters are size-capped and keyword-checked here (a 400 names
    `tools[i].function.parameters`) and compiled on their own first (`checks`), so a compile error
    names the tool too."""
    checked = [checked_schema(parameters_of(t), f"tools[{i}].function.parameters") for i, t in enumerate(plan.tools)]
    checks = tuple((f"tools[{i}].function.parameters", "json_schema", text) for i, text in enumerate(checked))
    if plan.arguments_only:
        i = plan.tools.index(plan.named)
        return GuideSpec("json_schema", checks[i][2], checks[i][0])
    indices = [plan.tools.index(plan.named)] if plan.mode == "named" else range(len(plan.tools))
    tools = [plan.tools[i] for i in indices]
    parallel = plan.parallel and plan.mode != "named"
    schema = json.dumps(calls_schema(tools, plan.key, parallel, [json.loads(checked[i]) for i in indices]),
                        ensure_ascii=False)
    if plan.mode in ("required", "named"):
        return GuideSpec("json_schema", schema, "tools", checks)
    return GuideSpec("json_schema", schema, "tools", checks, kind="tools_auto", text_rule=TEXT_RULE)
