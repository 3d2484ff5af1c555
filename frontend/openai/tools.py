"""Tool calling: prompting, constrained call grammars, and the incremental tool-call parser.

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

Parsing. `ToolCallParser` reads one choice's answer text incrementally and emits OpenAI's
deltas: the first delta of each call carries `index`, `id` (`call_<24 hex>`), `type:
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
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from frontend import errors
from frontend.openai.message_models import ChatTool
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.structured import MAX_TOOLS, GuideSpec, checked_schema

ARGUMENTS = "arguments"     # our key (Llama-2 and other templates without a tool list)
PARAMETERS = "parameters"   # Llama-3.1's key
EMPTY_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}
# Plain text in auto mode: anything whose first non-whitespace character is not `{` or `[` (so it
# cannot be taken for a call, also after SentencePiece's leading space is stripped from the text).
TEXT_RULE = r"root ::= [ \t\r\n]{0,8} [^{\[ \t\r\n] [^]*"


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parameters_of(tool: ChatTool) -> dict:
    return tool.function.parameters if tool.function.parameters is not None else EMPTY_PARAMETERS


# ---- the plan of one request -----------------------------------------------------------------

@dataclass
class ToolPlan:
    mode: str                       # none | auto | required | named
    tools: list[ChatTool]
    key: str                        # "arguments" or "parameters"
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
        return cls(mode, tools, PARAMETERS if native else ARGUMENTS, native, bool(req.parallel_tool_calls),
                   req.named_tool if mode == "named" else None)

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    @property
    def arguments_only(self) -> bool:
        """Named function on a template without a tool list: the output is the arguments object."""
        return self.mode == "named" and not self.native

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

    def parser(self) -> "ToolCallParser":
        if self.arguments_only:
            return ToolCallParser("named", self.key, named=self.named.function.name)
        return ToolCallParser("calls", self.key)


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


# ---- the incremental parser ------------------------------------------------------------------

@dataclass
class ParsedCall:
    index: int
    id: str
    name: Optional[str] = None
    fragments: list[str] = field(default_factory=list)
    announced: bool = False

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)

    def as_message(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


_WS = " \t\r\n"


class ToolCallParser:
    """One choice's answer text -> content text and OpenAI tool-call deltas, incrementally.

    `feed(text)` and `finish()` return a list of `("content", str)` and `("tool_calls", [delta])`
    items. Modes: "named" (the whole text is the arguments of the named function) and "calls"
    (a JSON call object or array of calls, decided by the first character; other text is content).
    """

    def __init__(self, mode: str, key: str, *, named: Optional[str] = None, id_factory=new_call_id):
        assert mode in ("named", "calls")
        self.mode = mode
        self.key = key
        self.named = named
        self._new_id = id_factory
        self.calls: list[ParsedCall] = []
        self._kind: Optional[str] = None       # "text" | "json" once decided
        self._lead = ""                        # leading whitespace while undecided
        self._raw: list[str] = []              # the json text, for the fallback to content
        self._out: list = []
        # scanner state
        self._depth = 0
        self._call_depth = 1
        self._in_str = False
        self._esc = False
        self._done = False
        self._call: Optional[ParsedCall] = None
        self._pending: list[str] = []          # arguments seen before the name
        self._phase = "key"                    # key | in_key | colon | value | in_value | after
        self._key_raw: list[str] = []
        self._member: Optional[str] = None
        self._value_kind: Optional[str] = None # container | string | scalar
        self._value_raw: list[str] = []

    # -- public ---------------------------------------------------------------------------------
    @property
    def produced_calls(self) -> bool:
        return any(c.announced for c in self.calls)

    def feed(self, text: str) -> list:
        self._out = []
        if not text:
            return []
        if self.mode == "named":
            call = self._named_call()
            self._args(call, text)
            return self._flush_out()
        if self._kind is None:
            text = self._lead + text
            first = text.lstrip()
            if not first:
                self._lead = text      # whitespace only so far: undecided
                return []
            self._lead = ""
            self._kind = "json" if first[0] in "{[" else "text"
        if self._kind == "text":
            return [("content", text)]
        self._raw.append(text)
        for ch in text:
            self._char(ch)
        return self._flush_out()

    def finish(self) -> list:
        self._out = []
        if self.mode == "named":
            self._named_call()
        elif self._kind == "json" and not self.produced_calls:
            self.calls = []
            return [("content", "".join(self._raw))]
        elif self._kind is None and self._lead:
            lead, self._lead = self._lead, ""
            return [("content", lead)]
        return self._flush_out()

    def message_calls(self) -> list[dict]:
        return [c.as_message() for c in self.calls if c.announced]

    # -- output ---------------------------------------------------------------------------------
    def _announce(self, call: ParsedCall) -> None:
        call.announced = True
        self._out.append(("tool_calls", [{"index": call.index, "id": call.id, "type": "function",
                                          "function": {"name": call.name, "arguments": ""}}]))
        if self._pending:
            self._args(call, "".join(self._pending))
            self._pending = []

    def _args(self, call: ParsedCall, fragment: str) -> None:
        if not fragment:
            return
        if not call.announced:
            self._pending.append(fragment)
            return
        call.fragments.append(fragment)
        last = self._out[-1] if self._out else None
        if last and last[0] == "tool_calls" and "id" not in last[1][0] and last[1][0]["index"] == call.index:
            last[1][0]["function"]["arguments"] += fragment
        else:
            self._out.append(("tool_calls", [{"index": call.index, "function": {"arguments": fragment}}]))

    def _flush_out(self) -> list:
        out, self._out = self._out, []
        return out

    def _named_call(self) -> ParsedCall:
        if not self.calls:
            call = ParsedCall(0, self._new_id(), self.named)
            self.calls.append(call)
            self._announce(call)
        return self.calls[0]

    # -- the JSON scanner -----------------------------------------------------------------------
    def _start_call(self) -> None:
        self._call = ParsedCall(len(self.calls), self._new_id())
        self.calls.append(self._call)
        self._pending = []
        self._phase = "key"

    def _end_call(self) -> None:
        call = self._call
        if call is not None and not call.announced:
            self.calls.remove(call)   # no name: not a call
        self._call = None
        self._pending = []

    def _in_arguments(self) -> bool:
        return self._call is not None and self._member == self.key

    def _end_value(self) -> None:
        if self._member == "name" and self._value_kind == "string" and self._call is not None:
            try:
                name = json.loads("".join(self._value_raw))
            except ValueError:
                name = None
            if isinstance(name, str) and self._call.name is None:
                self._call.name = name
                self._announce(self._call)
        self._phase = "after"
        self._member = None
        self._value_kind = None
        self._value_raw = []

    def _char(self, ch: str) -> None:
        if self._done:
            return
        d = self._depth
        # inside the value of a call member (any depth below the call object)
        if self._phase == "in_value" and self._call is not None:
            if self._value_kind == "scalar" and not self._in_str and (ch in _WS or ch in ",}"):
                self._end_value()
                self._char(ch)
                return
            self._value_raw.append(ch)
            if self._in_arguments():
                self._args(self._call, ch)
            if self._in_str:
                if self._esc:
                    self._esc = False
                elif ch == "\\":
                    self._esc = True
                elif ch == '"':
                    self._in_str = False
                    if self._value_kind == "string" and d == self._call_depth:
                        self._end_value()
                return
            if ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == self._call_depth:
                    self._end_value()
            return
        # the key of a member
        if self._phase == "in_key":
            self._key_raw.append(ch)
            if self._esc:
                self._esc = False
            elif ch == "\\":
                self._esc = True
            elif ch == '"':
                try:
                    self._member = json.loads("".join(self._key_raw))
                except ValueError:
                    self._member = None
                self._phase = "colon"
            return
        if ch in _WS:
            return
        # structure outside member values
        if d == 0:
            if ch == "[":
                self._depth, self._call_depth = 1, 2
            elif ch == "{":
                self._depth, self._call_depth = 1, 1
                self._start_call()
            else:
                self._done = True
            return
        if d == 1 and self._call_depth == 2 and self._call is None:
            if ch == "{":
                self._depth = 2
                self._start_call()
            elif ch == "]":
                self._depth = 0
                self._done = True
            return            # "," between calls
        # directly inside a call object
        if self._phase == "key":
            if ch == '"':
                self._phase, self._key_raw, self._esc = "in_key", ['"'], False
            elif ch == "}":
                self._close_call()
        elif self._phase == "colon":
            if ch == ":":
                self._phase = "value"
        elif self._phase == "value":
            self._phase = "in_value"
            self._value_raw = []
            if ch == '"':
                self._value_kind, self._in_str, self._esc = "string", True, False
                self._value_raw.append(ch)
                if self._in_arguments():
                    self._args(self._call, ch)
            elif ch in "{[":
                self._value_kind = "container"
                self._depth += 1
                self._value_raw.append(ch)
                if self._in_arguments():
                    self._args(self._call, ch)
            else:
                self._value_kind = "scalar"
                self._value_raw.append(ch)
                if self._in_arguments():
                    self._args(self._call, ch)
        elif self._phase == "after":
            if ch == ",":
                self._phase = "key"
            elif ch == "}":
                self._close_call()

    def _close_call(self) -> None:
        self._end_call()
        self._depth = self._call_depth - 1
        self._phase = "key"
        if self._depth == 0:
            self._done = True
