"""Response objects and stream events from the chat path's output items.

`OutputAssembler` takes what `ChatOutput.feed`/`finish` produce (`("reasoning_content", text)`,
`("content", text)`, `("tool_calls", [delta])`) and builds the Response's output items: a
`reasoning` item, an assistant `message` with one `output_text` part, one `function_call` item
per tool call, in the order the model wrote them. Each step also returns the typed stream events
that describe it (`response.output_item.added`, `response.content_part.added`,
`response.output_text.delta`, `response.reasoning_text.delta`,
`response.function_call_arguments.delta`, and their `.done` events), so a stream and a
non-streamed answer are built by the same code. `EventEncoder` numbers and frames them as SSE
(`event: <type>` + `data: <json>`; the Responses API ends with `response.completed`, no `[DONE]`).
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional

import orjson

from frontend.openai.responses.request import FunctionToolChoice, ResponsesRequest, TextFormatJsonObject, TextFormatJsonSchema


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class OutputAssembler:
    """One response's output items, built incrementally (see the module docstring)."""

    def __init__(self) -> None:
        self.items: list[dict] = []
        self._open: Optional[dict] = None        # the item being written
        self._text: list[str] = []               # its text (reasoning, message) or arguments so far

    def _start(self, item: dict, part: Optional[dict]) -> list[dict]:
        events = self._close()
        self._open, self._text = item, []
        self.items.append(item)
        index = len(self.items) - 1
        events.append({"type": "response.output_item.added", "output_index": index, "item": _copy(item)})
        if part is not None:
            events.append({"type": "response.content_part.added", "item_id": item["id"], "output_index": index,
                           "content_index": 0, "part": part})
        return events

    def add(self, items: list) -> list[dict]:
        """ChatOutput items -> stream events (the output items grow as a side effect)."""
        events: list[dict] = []
        for kind, value in items:
            if kind == "reasoning_content":
                if self._kind() != "reasoning":
                    events += self._start({"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [],
                                           "status": "in_progress"}, {"type": "reasoning_text", "text": ""})
                self._text.append(value)
                events.append({"type": "response.reasoning_text.delta", "item_id": self._open["id"],
                               "output_index": len(self.items) - 1, "content_index": 0, "delta": value})
            elif kind == "content":
                if self._kind() != "message":
                    events += self._start({"id": new_id("msg"), "type": "message", "status": "in_progress",
                                           "role": "assistant", "content": []}, _output_text(""))
                self._text.append(value)
                events.append({"type": "response.output_text.delta", "item_id": self._open["id"],
                               "output_index": len(self.items) - 1, "content_index": 0, "delta": value,
                               "logprobs": []})
            elif kind == "tool_calls":
                for delta in value:
                    function = delta.get("function") or {}
                    if "id" in delta:
                        events += self._start({"id": new_id("fc"), "type": "function_call", "status": "in_progress",
                                               "call_id": delta["id"], "name": function.get("name", ""),
                                               "arguments": ""}, None)
                    arguments = function.get("arguments")
                    if arguments and self._kind() == "function_call":
                        self._text.append(arguments)
                        events.append({"type": "response.function_call_arguments.delta",
                                       "item_id": self._open["id"], "output_index": len(self.items) - 1,
                                       "delta": arguments})
        return events

    def _kind(self) -> Optional[str]:
        return self._open["type"] if self._open is not None else None

    def _close(self, status: str = "completed") -> list[dict]:
        item = self._open
        if item is None:
            return []
        self._open = None
        text = "".join(self._text)
        index = self.items.index(item)
        base = {"item_id": item["id"], "output_index": index}
        events: list[dict] = []
        if item["type"] == "reasoning":
            part = {"type": "reasoning_text", "text": text}
            events += [{"type": "response.reasoning_text.done", **base, "content_index": 0, "text": text},
                       {"type": "response.content_part.done", **base, "content_index": 0, "part": part}]
            item["content"] = [part]
        elif item["type"] == "message":
            part = _output_text(text)
            events += [{"type": "response.output_text.done", **base, "content_index": 0, "text": text,
                        "logprobs": []},
                       {"type": "response.content_part.done", **base, "content_index": 0, "part": part}]
            item["content"] = [part]
        else:
            item["arguments"] = text
            events.append({"type": "response.function_call_arguments.done", **base, "name": item["name"],
                           "arguments": text})
        item["status"] = status
        events.append({"type": "response.output_item.done", "output_index": index, "item": _copy(item)})
        return events

    def finish(self, status: str = "completed") -> list[dict]:
        """Closes the open item; an answer with no output at all gets an empty message, so that
        `output[0]` is there for clients that read it."""
        if not self.items:
            events = self._start({"id": new_id("msg"), "type": "message", "status": "in_progress",
                                  "role": "assistant", "content": []}, _output_text(""))
            return events + self._close(status)
        return self._close(status)

    @property
    def reasoning_text(self) -> str:
        return "".join(p["text"] for item in self.items if item["type"] == "reasoning" for p in item["content"])


def _copy(item: dict) -> dict:
    return orjson.loads(orjson.dumps(item))


# ----------------------------------------------------------------------------------------------------
# The Response object

def usage(input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int) -> dict:
    return {"input_tokens": input_tokens,
            # cache_write_tokens: OpenAI's explicit-cache billing figure; prefix caching here writes nothing
            # a client pays for, so it is always 0.
            "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens}


def text_config(req: ResponsesRequest) -> dict:
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, TextFormatJsonSchema):
        out = {"type": "json_schema", "name": fmt.name, "schema": fmt.schema_, "strict": bool(fmt.strict)}
        if fmt.description is not None:
            out["description"] = fmt.description
        return {"format": out, "verbosity": "medium"}
    if isinstance(fmt, TextFormatJsonObject):
        return {"format": {"type": "json_object"}, "verbosity": "medium"}
    return {"format": {"type": "text"}, "verbosity": "medium"}


def response_object(req: ResponsesRequest, *, id: str, model: str, created_at: int, status: str,
                    output: list[dict], usage: Optional[dict], error: Optional[dict] = None,
                    incomplete_reason: Optional[str] = None, store: Optional[bool] = None) -> dict[str, Any]:
    """The Response as OpenAI's API returns it, echoing the request's settings."""
    if isinstance(req.tool_choice, FunctionToolChoice):
        tool_choice: Any = {"type": "function", "name": req.tool_choice.name}
    else:
        tool_choice = req.tool_choice or "auto"
    return {
        "id": id, "object": "response", "created_at": created_at, "status": status, "background": False,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "max_tool_calls": req.max_tool_calls, "metadata": dict(req.metadata or {}), "model": model,
        "output": output, "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id, "prompt_cache_key": req.prompt_cache_key,
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None,
                      "summary": req.reasoning.summary if req.reasoning else None},
        "safety_identifier": req.safety_identifier, "service_tier": "default",
        "store": req.store if store is None else store,
        "temperature": req.temperature, "text": text_config(req), "tool_choice": tool_choice,
        "tools": [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                   "strict": t.strict} for t in req.tools or ()],
        "top_logprobs": 0, "top_p": req.top_p, "truncation": "disabled", "usage": usage, "user": req.user,
    }


# ----------------------------------------------------------------------------------------------------
# SSE

class EventEncoder:
    """Numbers events from 0 in the order they are sent and frames each as one SSE event."""

    def __init__(self) -> None:
        self.sequence = 0

    def encode(self, event: dict) -> bytes:
        event["sequence_number"] = self.sequence
        self.sequence += 1
        return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
