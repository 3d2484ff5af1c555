"""The incremental JSON call scanner both JSON tool-call families share (json_tools.py,
llama3_json.py); they differ only in the member that holds the arguments and in what a named
tool_choice produces.

What it reads. Our guides (frontend/openai/tools.py) constrain a reply to one call object `{"name": ...,
<key>: {...}}`, a JSON array of such objects (parallel_tool_calls), or, in auto mode, plain text
whose first non-whitespace character is not `{` or `[`. So the first non-whitespace character
decides: `{` or `[` is a call, anything else is content (leading whitespace is held until then).
Members may come in any order; arguments seen before the name are held until the name is known.

What it emits. A call is announced once its name is complete; its arguments follow as the raw text
of the arguments value, fragment by fragment (never re-serialized), so the streamed and
non-streamed `arguments` strings are equal byte for byte. A call whose text ends early
(finish_reason length) keeps its partial arguments; text that never got as far as a tool name
comes back as `content`. `arguments_of`: the whole text is that function's arguments.

vLLM's `llama3_json` parser (vllm/entrypoints/openai/tool_parsers/llama_tool_parser.py@02de3de,
the version read) reads unconstrained output instead: an optional `<|python_tag|>`, calls
separated by `; `, either key, and arguments re-serialized with json.dumps. None of that can occur
under our guides, and re-serializing would break the byte-equality above.
"""
from __future__ import annotations

import json
from typing import Optional

from frontend.openai.parsers.base import Item, ParsedCall, ToolParser

_WS = " \t\r\n"


class JsonCallParser(ToolParser):
    """The scanner; a family sets `name`, `key` and `named_call_is_arguments`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
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

    def feed(self, text: str) -> list[Item]:
        self._out = []
        if not text:
            return []
        if self.arguments_of is not None:
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

    def finish(self) -> list[Item]:
        self._out = []
        if self.arguments_of is not None:
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

    def _flush_out(self) -> list[Item]:
        out, self._out = self._out, []
        return out

    def _named_call(self) -> ParsedCall:
        if not self.calls:
            call = ParsedCall(0, self.new_id(), self.arguments_of)
            self.calls.append(call)
            self._announce(call)
        return self.calls[0]

    # -- the JSON scanner -----------------------------------------------------------------------
    def _start_call(self) -> None:
        self._call = ParsedCall(len(self.calls), self.new_id())
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
