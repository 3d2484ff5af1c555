"""A Responses request as the chat request it means, so the chat path runs it unchanged.

* `instructions` -> a first system message (OpenAI does not carry them over `previous_response_id`);
* the stored conversation (earlier turns' input and output items), then this turn's input items ->
  messages: a `function_call` joins the assistant message before it as a tool call, a
  `function_call_output` is a tool message, a `reasoning` item is the next assistant message's
  reasoning_content, `developer` is `system`;
* function `tools` / `tool_choice` -> the chat shapes; `text.format` -> `response_format`;
  `reasoning.effort` -> `reasoning_effort` (or, for efforts the chat field lacks, the template's
  own `reasoning_effort` keyword); `max_output_tokens` -> `max_completion_tokens`.

Errors the chat side finds name the chat field (`messages`, `response_format`); `responses_param`
turns them back into this API's names.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional

from pydantic import TypeAdapter, ValidationError

from frontend import errors
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.responses.request import (FunctionCallItem, FunctionCallOutputItem, FunctionToolChoice, InputItem,
                                               MessageItem, ReasoningItem, ResponsesRequest, TextFormatJsonObject,
                                               TextFormatJsonSchema)

_ITEMS = TypeAdapter(list[InputItem])
# efforts the chat field takes; the others reach the template as its `reasoning_effort` keyword
_CHAT_EFFORTS = frozenset({"none", "low", "medium", "high"})
_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty",
             "seed", "stop", "min_tokens", "stop_token_ids", "ignore_eos", "logit_bias", "user", "prompt_cache_key",
             "parallel_tool_calls")


def stored_items(dumped: Iterable[dict]) -> list:
    """Items kept by the store (input and output items, as JSON) back as input-item models."""
    return _ITEMS.validate_python([_as_input(d) for d in dumped], strict=False)


def _as_input(item: dict) -> dict:
    # Output items carry fields an input item does not take (they are ignored and logged otherwise).
    if item.get("type") == "reasoning":
        return {k: v for k, v in item.items() if k in ("type", "id", "summary", "content", "status")}
    return item


def messages_of(items: Iterable) -> list[dict]:
    """Input items -> chat messages (see the module docstring)."""
    messages: list[dict] = []
    reasoning: list[str] = []
    open_assistant: Optional[dict] = None       # the assistant message that function calls join
    for item in items:
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            msg: dict[str, Any] = {"role": role, "content": item.text()}
            if role == "assistant":
                if reasoning:
                    msg["reasoning_content"] = "".join(reasoning)
                    reasoning = []
                open_assistant = msg
            else:
                open_assistant = None
            messages.append(msg)
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            if open_assistant is None:
                open_assistant = {"role": "assistant", "content": None}
                if reasoning:
                    open_assistant["reasoning_content"] = "".join(reasoning)
                    reasoning = []
                messages.append(open_assistant)
            open_assistant.setdefault("tool_calls", []).append(call)
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text()})
            open_assistant = None
        elif isinstance(item, ReasoningItem):
            reasoning.append(item.text())
    return messages


def chat_request(req: ResponsesRequest, history: list) -> ChatCompletionRequest:
    """The chat request for `req`, after the stored conversation `history` (input-item models)."""
    messages = [{"role": "system", "content": req.instructions}] if req.instructions is not None else []
    messages += messages_of([*history, *req.input_items])
    body: dict[str, Any] = {"model": req.model, "messages": messages,
                            "max_completion_tokens": req.max_output_tokens}
    for name in _SAMPLING:
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    body["top_k"] = max(req.top_k, 0)
    if req.tools:
        body["tools"] = [{"type": "function", "function": {k: v for k, v in {
            "name": t.name, "description": t.description, "parameters": t.parameters, "strict": t.strict}.items()
            if v is not None}} for t in req.tools]
    if isinstance(req.tool_choice, FunctionToolChoice):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, TextFormatJsonSchema):
        spec = {"name": fmt.name, "schema": fmt.schema_}
        if fmt.strict is not None:
            spec["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif isinstance(fmt, TextFormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    kwargs = dict(req.chat_template_kwargs or {})
    effort = req.reasoning.effort if req.reasoning is not None else None
    if effort in _CHAT_EFFORTS:
        body["reasoning_effort"] = effort
    elif effort is not None:
        kwargs.setdefault("reasoning_effort", effort)
        kwargs.setdefault("enable_thinking", True)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = errors.validation_error_to_api_error(exc)
        raise translate(err) from None
    except errors.APIError as err:
        raise translate(err) from None


_TOOL_FUNCTION = re.compile(r"^tools\[(\d+)\]\.function")


def responses_param(param: Optional[str]) -> Optional[str]:
    """A chat request's field path as the Responses request's (`messages[3]` -> `input`)."""
    if param is None:
        return None
    if param.startswith("messages"):
        return "input"
    if param.startswith("response_format"):
        return "text.format" + param[len("response_format"):].replace(".json_schema", "")
    if param.startswith("max_completion_tokens") or param.startswith("max_tokens"):
        return "max_output_tokens"
    if param.startswith("tool_choice.function"):
        return "tool_choice" + param[len("tool_choice.function"):]
    if param.startswith("reasoning_effort"):
        return "reasoning.effort"
    return _TOOL_FUNCTION.sub(r"tools[\1]", param)


def translate(err: errors.APIError) -> errors.APIError:
    """The same error, naming this API's field."""
    old, param = err.param, responses_param(err.param)
    if param != old:
        err.param = param
        err.message = err.message.replace(f"'{old}'", f"'{param}'")
    return err
