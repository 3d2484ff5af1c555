"""`POST /v1/responses`: the request model, validated with the request policy of request_models.py.

Same rules as the chat endpoint: `null` means absent, unknown fields are ignored and logged, known
fields we cannot honour (background mode, conversations, built-in tools, file and image inputs,
`include`, `truncation: auto`) are a 400 naming the field, and every validation error's `param` is
the path of the offending field in *this* request (`input[2].content[0].type`, `tools[1].type`).
Sampling fields and our extensions carry the chat request's ranges.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from frontend.errors import ParamError, bad_request
# by_key tags by a string field only: a list or object there is a 400, not an unhashable-key 500
from frontend.openai.request_base import (MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_STOP_TOKEN_IDS, MAX_TOKENS_LIMIT,
                                          OpenAIBaseModel, RequestBase, by_key, screen_items, screen_sizes,
                                          str_or_list, strict_int, tagged, too_long)
from frontend.openai.request_models import LogitBias, Seed, Stop, TokenCount, TokenId
from frontend.openai.structured import MAX_TOOLS

# What orjson (the response and the store) can write: JSON integers outside this range are refused
# where a request would be echoed or stored (tool parameters, text.format.schema, input items).
JSON_INT_MIN, JSON_INT_MAX = -(1 << 63), (1 << 64) - 1

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512

_REJECTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "background": ((False,), "background mode is not supported; send the request without 'background' and read "
                             "the answer (or stream it)."),
    "conversation": ((), "the Conversations API is not supported; chain responses with 'previous_response_id'."),
    "prompt": ((), "reusable prompt templates ('prompt') are not supported; send 'input' and 'instructions'."),
    "truncation": (("disabled",), "only truncation 'disabled' is supported: a conversation longer than the "
                                  "context is a 400, never silently shortened."),
    "include": (([],), "'include' is not supported (no logprobs, encrypted reasoning or tool results to add)."),
    "top_logprobs": ((0,), "'top_logprobs' is not supported on /v1/responses; use /v1/chat/completions."),
    "service_tier": (("auto", "default"), "only service_tier 'auto' or 'default' is supported."),
    # vLLM-style guided decoding fields: text.format is the Responses way
    "guided_json": ((), "'guided_json' is not supported; use text.format {type: json_schema}."),
    "guided_regex": ((), "'guided_regex' is not supported."),
    "structured_outputs": ((), "'structured_outputs' is not supported; use text.format."),
}


# The chat request's caps, on this API's lists (docs/API.md, "Limits"): input items as messages,
# the content parts of all items together (message content, function_call_output output, reasoning
# summary and content), tools. Checked on the decoded body before validation, as the chat
# endpoint's: a refusal costs a length check, not the validation of every item.
ITEM_PART_LISTS = ("content", "output", "summary")


def screen_responses_lists(data: Any) -> None:
    """The list caps of a Responses body; raises `APIError` (400 naming the field)."""
    screen_sizes(data)                  # stop_token_ids: the same field as on the chat endpoint
    if not isinstance(data, dict):
        return
    screen_items(data.get("input"), "input", ITEM_PART_LISTS, "the input items")
    tools = data.get("tools")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        raise too_long("tools", MAX_TOOLS, len(tools))
    metadata = data.get("metadata")
    if isinstance(metadata, dict) and len(metadata) > MAX_METADATA_PAIRS:
        raise bad_request(f"'metadata' holds at most {MAX_METADATA_PAIRS} pairs, got {len(metadata)}.", "metadata")


def declared(model: OpenAIBaseModel) -> dict[str, Any]:
    """A request model as JSON without the fields nobody declared (those are ignored and logged,
    never stored or echoed as if they had been accepted), by alias, without None."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if value is not None:
            out[field.alias or name] = _declared_value(value)
    return out


def _declared_value(value: Any) -> Any:
    if isinstance(value, OpenAIBaseModel):
        return declared(value)
    if isinstance(value, (list, tuple)):
        return [_declared_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _declared_value(v) for k, v in value.items()}
    return value


def _check_ints(value: Any, path: str) -> None:
    """ParamError naming the first integer a JSON writer cannot represent (orjson: 64 bits)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not JSON_INT_MIN <= value <= JSON_INT_MAX:
            raise ParamError(f"integers beyond 64 bits are not supported here (got {str(value)[:40]}...).", path)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_ints(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_ints(v, f"{path}[{i}]")


# ----------------------------------------------------------------------------------------------------
# Input items

class InputText(OpenAIBaseModel):
    type: Literal["input_text"]
    text: str


class OutputText(OpenAIBaseModel):
    """Assistant text sent back as history (an earlier response's output item)."""
    type: Literal["output_text"]
    text: str
    annotations: Optional[list[Any]] = None
    logprobs: Optional[list[Any]] = None


class Refusal(OpenAIBaseModel):
    type: Literal["refusal"]
    refusal: str


class UnsupportedPart(OpenAIBaseModel):
    """Images, files and audio: parsed so the error can name the part; this model reads text only."""
    type: Literal["input_image", "input_file", "input_audio"]


_PART_TAGS = {"input_text": "<input_text>", "output_text": "<output_text>", "refusal": "<refusal>",
              "input_image": "<unsupported>", "input_file": "<unsupported>", "input_audio": "<unsupported>"}
ContentPart = tagged({"<input_text>": InputText, "<output_text>": OutputText, "<refusal>": Refusal,
                      "<unsupported>": UnsupportedPart},
                     by_key("type", _PART_TAGS),
                     "invalid_part_type",
                     "content part 'type' must be one of 'input_text', 'output_text', 'refusal'")


Content = tagged({"<string>": str, "<array>": list[ContentPart]}, str_or_list, "invalid_content",
                 "content must be a string or an array of content parts")


def _content_text(content: Union[str, list, None]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.refusal if isinstance(p, Refusal) else p.text for p in content
                   if isinstance(p, (InputText, OutputText, Refusal)))


class MessageItem(OpenAIBaseModel):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: Content
    id: Optional[str] = None
    status: Optional[str] = None
    phase: Optional[str] = None

    @model_validator(mode="after")
    def _text_only(self):
        if isinstance(self.content, list):
            for j, part in enumerate(self.content):
                if isinstance(part, UnsupportedPart):
                    raise ParamError(f"content parts of type '{part.type}' are not supported: this model reads "
                                     f"text only.", f"content[{j}].type", "unsupported_value")
        return self

    def text(self) -> str:
        return _content_text(self.content)


class FunctionCallItem(OpenAIBaseModel):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: Optional[str] = None
    status: Optional[str] = None


class FunctionCallOutputItem(OpenAIBaseModel):
    type: Literal["function_call_output"]
    call_id: str
    output: Content
    id: Optional[str] = None
    status: Optional[str] = None

    def text(self) -> str:
        return _content_text(self.output)


class SummaryText(OpenAIBaseModel):
    type: Literal["summary_text"]
    text: str


class ReasoningText(OpenAIBaseModel):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(OpenAIBaseModel):
    """An earlier response's reasoning, sent back as history; it becomes the next assistant
    message's reasoning_content (which templates usually drop)."""
    type: Literal["reasoning"]
    id: Optional[str] = None
    summary: list[SummaryText] = Field(default_factory=list)
    content: Optional[list[ReasoningText]] = None
    encrypted_content: Optional[str] = None
    status: Optional[str] = None

    @field_validator("encrypted_content")
    @classmethod
    def _no_encrypted(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            raise ParamError("encrypted reasoning is not supported: this server never produces it.",
                             code="unsupported_value")
        return v

    def text(self) -> str:
        return "".join(c.text for c in self.content or ())


class ItemReference(OpenAIBaseModel):
    type: Literal["item_reference"]
    id: str

    @model_validator(mode="after")
    def _unsupported(self):
        raise ParamError("item references are not supported; send the item itself or use previous_response_id.",
                         "type", "unsupported_value")


_ITEM_TAGS = {"message": "<message>", "function_call": "<function_call>",
              "function_call_output": "<function_call_output>", "reasoning": "<reasoning>",
              "item_reference": "<item_reference>"}


def _item_tag(v: Any) -> Optional[str]:
    if isinstance(v, dict):
        kind = v.get("type")
        if kind is None and "role" in v:
            return "<message>"          # the short form: {"role": ..., "content": ...}
        return _ITEM_TAGS.get(kind) if isinstance(kind, str) else None
    return None


InputItem = tagged({"<message>": MessageItem, "<function_call>": FunctionCallItem,
                     "<function_call_output>": FunctionCallOutputItem, "<reasoning>": ReasoningItem,
                     "<item_reference>": ItemReference}, _item_tag, "invalid_item_type",
                   "input item 'type' must be one of 'message', 'function_call', 'function_call_output', "
                   "'reasoning'")


# ----------------------------------------------------------------------------------------------------
# Tools, text format, reasoning

class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class OtherTool(OpenAIBaseModel):
    """Built-in tools (web_search, file_search, mcp, ...): parsed so the error names them."""
    type: str

    @model_validator(mode="after")
    def _unsupported(self):
        raise ParamError(f"tools of type '{self.type}' are not supported; only 'function' tools are.", "type",
                         "unsupported_value")


Tool = tagged({"<function>": FunctionTool, "<other>": OtherTool},
              lambda v: ("<function>" if v.get("type") == "function" else "<other>")
              if isinstance(v, dict) and isinstance(v.get("type"), str) else None,
              "invalid_tool", "a tool needs a string 'type'")


class FunctionToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    name: str


class OtherToolChoice(OpenAIBaseModel):
    type: str

    @model_validator(mode="after")
    def _unsupported(self):
        raise ParamError(f"tool_choice of type '{self.type}' is not supported; use 'none', 'auto', 'required' or "
                         f"{{type: 'function', name}}.", "type", "unsupported_value")


ToolChoice = tagged(
    {"<mode>": Literal["none", "auto", "required"], "<function>": FunctionToolChoice, "<other>": OtherToolChoice},
    lambda v: "<mode>" if isinstance(v, str) else (
        ("<function>" if v.get("type") == "function" else "<other>")
        if isinstance(v, dict) and isinstance(v.get("type"), str) else None),
    "invalid_tool_choice", "tool_choice must be 'none', 'auto', 'required' or {type: 'function', name}")


class TextFormatText(OpenAIBaseModel):
    type: Literal["text"]


class TextFormatJsonObject(OpenAIBaseModel):
    type: Literal["json_object"]


class TextFormatJsonSchema(OpenAIBaseModel):
    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    strict: Optional[bool] = None
    description: Optional[str] = None


_FORMAT_TAGS = {"text": "<text>", "json_object": "<json_object>", "json_schema": "<json_schema>"}
TextFormat = tagged({"<text>": TextFormatText, "<json_object>": TextFormatJsonObject,
                      "<json_schema>": TextFormatJsonSchema},
                    by_key("type", _FORMAT_TAGS),
                    "invalid_response_format", "text.format 'type' must be one of 'text', 'json_object', "
                                                "'json_schema'")


class TextConfig(OpenAIBaseModel):
    format: Optional[TextFormat] = None
    verbosity: Optional[Literal["medium"]] = Field(None, description="Only 'medium' (the model's own) is supported.")


class ReasoningConfig(OpenAIBaseModel):
    effort: Optional[Literal["none", "minimal", "low", "medium", "high", "xhigh"]] = None
    summary: Optional[Literal["auto"]] = Field(None, description="'auto': the model decides; this server writes "
                                                                 "no summaries ('concise'/'detailed' are refused).")
    generate_summary: Optional[Literal["auto"]] = None


class ResponseStreamOptions(OpenAIBaseModel):
    include_obfuscation: bool = Field(True, description="Accepted; events carry no obfuscation padding.")


# ----------------------------------------------------------------------------------------------------
# The request

class ResponsesRequest(RequestBase):
    """`POST /v1/responses`."""

    _rejected: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = _REJECTED

    @classmethod
    def screen_lists(cls, data: Any) -> None:
        screen_responses_lists(data)

    model: str = Field(description="Model name as listed by GET /v1/models.")
    input: tagged({"<string>": str, "<array>": Annotated[list[InputItem], Field(max_length=MAX_MESSAGES)]},
                  str_or_list, "invalid_input", "input must be a string or an array of input items") = Field(
        description=f"Text, or a list of 1 to {MAX_MESSAGES} input items, with at most {MAX_CONTENT_PARTS} "
                    f"content parts in all.")
    instructions: Optional[str] = Field(None, description="A system message put first; not carried over by "
                                                          "previous_response_id.")
    previous_response_id: Optional[str] = None
    store: bool = True
    stream: bool = False
    stream_options: Optional[ResponseStreamOptions] = None
    metadata: Optional[dict[str, str]] = None
    max_output_tokens: Optional[strict_int(ge=1, le=MAX_TOKENS_LIMIT)] = Field(None, description="null = the server "
                                                                                           "decides.")
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    tools: Optional[Annotated[list[Tool], Field(max_length=MAX_TOOLS)]] = None
    tool_choice: Optional[ToolChoice] = Field(None, description="Default: 'auto' with tools, else 'none'.")
    parallel_tool_calls: bool = True
    max_tool_calls: Optional[strict_int(ge=1)] = Field(None, description="Limits built-in tool calls; there are none.")
    text: Optional[TextConfig] = None
    reasoning: Optional[ReasoningConfig] = None
    user: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    # extensions, as on the chat endpoint
    # -1 is vLLM's "off" as well as 0: Shepherd Model Gateway adds `top_k: -1` to every Responses
    # request it forwards (measured with smg 1.13, docs/SCALE-OUT.md).
    top_k: strict_int(ge=-1, lt=1000) = Field(0, description="0 or -1 = off.")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=5.0)
    seed: Optional[Seed] = None
    stop: Optional[Stop] = None
    min_tokens: TokenCount = 0
    stop_token_ids: Optional[Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]] = Field(
        None, description=f"Token ids that end generation (at most {MAX_STOP_TOKEN_IDS}).")
    ignore_eos: bool = False
    logit_bias: Optional[LogitBias] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None

    @field_validator("input")
    @classmethod
    def _some_input(cls, v):
        if isinstance(v, list) and not v:
            raise ParamError("'input' must not be an empty list.")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, v: Optional[dict[str, str]]):
        if v is None:
            return v
        if len(v) > MAX_METADATA_PAIRS:
            raise ParamError(f"'metadata' holds at most {MAX_METADATA_PAIRS} pairs, got {len(v)}.")
        for key, value in v.items():
            if len(key) > MAX_METADATA_KEY:
                raise ParamError(f"metadata keys are at most {MAX_METADATA_KEY} characters.")
            if len(value) > MAX_METADATA_VALUE:
                raise ParamError(f"metadata values are at most {MAX_METADATA_VALUE} characters.", f"{key}")
        return v

    @field_validator("tools")
    @classmethod
    def _empty_tools_are_none(cls, v):
        return v or None

    @model_validator(mode="after")
    def _check(self):
        choice = self.tool_choice
        if isinstance(choice, FunctionToolChoice):
            if choice.name not in [t.name for t in self.tools or ()]:
                raise ParamError(f"tool_choice names function '{choice.name}', which is not in 'tools'.",
                                 "tool_choice.name")
        elif choice == "required" and not self.tools:
            raise ParamError("tool_choice 'required' needs at least one tool in 'tools'.", "tool_choice")
        if self.min_tokens and self.max_output_tokens is not None and self.min_tokens > self.max_output_tokens:
            raise ParamError(f"'min_tokens' ({self.min_tokens}) must not exceed 'max_output_tokens' "
                             f"({self.max_output_tokens}).", "min_tokens")
        if self.stream_options is not None and not self.stream:
            raise ParamError("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        # What the Response echoes and the store keeps must be writable (found by the OpenAPI fuzz
        # test: a 100-bit integer in an input item's `annotations` was a 500 when stored).
        for i, tool in enumerate(self.tools or ()):
            _check_ints(tool.parameters, f"tools[{i}].parameters")
        if self.text is not None and isinstance(self.text.format, TextFormatJsonSchema):
            _check_ints(self.text.format.schema_, "text.format.schema")
        if isinstance(self.input, list):
            for i, item in enumerate(self.input):
                _check_ints(declared(item), f"input[{i}]")
        return self

    @property
    def input_items(self) -> list:
        """The input as items: a string is one user message."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        return list(self.input)
