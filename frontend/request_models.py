"""OpenAI wire format, requests: the request models with their validation, and `parse_request`.

`ChatCompletionRequest` and `CompletionRequest` follow the seed contract
(`OpenAIChatCompletionsIn`, `OpenAICompletionsIn`): same fields, defaults and ranges, plus a few
marked extensions. Policy:
  * a top-level `null` means "not given" (OpenAI's own spec marks these fields nullable);
  * unknown fields are accepted and ignored; non-null ones are listed in `request.ignored_fields`
    and logged once per request;
  * known fields we do not implement and that would change the output if ignored are a 400 naming
    the field (`_REJECTED_COMMON`, `_REJECTED_CHAT`, `_REJECTED_COMPLETIONS`);
  * every validation failure maps to one error envelope whose `param` is the path of the offending
    field (`temperature`, `messages[2].content`, `stop[3]`): `parse_request` raises
    `errors.APIError`, `errors.validation_error_to_envelope` does the mapping.
Message order rules are not checked here (the templating step owns them).

Responses are in response_models.py (the OpenAPI document's shapes), the streaming encoders in sse.py.
"""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any, ClassVar, Literal, Optional, TypeVar, Union

import orjson

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, PrivateAttr, Strict, Tag,
                      ValidationError, WithJsonSchema, field_validator, model_validator)

from frontend.errors import APIError, ParamError, bad_request, bounded, validation_error_to_api_error

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 16
MAX_TOKENS_LIMIT = 1_000_000
# Caps on what a request may list (docs/API.md, "Limits"), each a 400 naming its field. They bound
# the work one request can ask of the event loop before anything else is known about it: validating
# 120,000 short messages (a 4.6 MB body, under the 8 MiB body limit) held the loop for 3-4 s.
MAX_MESSAGES = 4096
MAX_CONTENT_PARTS = 4096            # text parts of all messages together
MAX_STOP_TOKEN_IDS = 256
UNSUPPORTED_PART_TYPES = ("image_url", "input_audio")


# ----------------------------------------------------------------------------------------------------
# Base classes

def _integral_float(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _int(**bounds: int) -> Any:
    """A strict integer that also takes 2.0 (JSON Schema's "integer" does); bounds inside, so that
    they reach the JSON schema."""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral_float)]


class OpenAIBaseModel(BaseModel):
    """Request-side model: unknown fields are kept (`model_extra`) and reported, never a 422.

    Strict types, as the schema says: `true` is not a number, `"1"` not a number, `1` not a boolean.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    def _ignored(self, prefix: str, out: list[str]) -> None:
        for key, value in (self.model_extra or {}).items():
            if value is not None:
                out.append(f"{prefix}.{key}" if prefix else key)
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            key = field.alias or name
            path = f"{prefix}.{key}" if prefix else key
            if isinstance(value, OpenAIBaseModel):
                value._ignored(path, out)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, OpenAIBaseModel):
                        item._ignored(f"{path}[{i}]", out)


def _request_schema(schema: dict[str, Any], cls: type) -> None:
    """OpenAPI of a request: top-level fields with a non-null default also accept null (see
    `_screen_fields`), and the cross-field rules of `cls._schema_rules` are added as `allOf`."""
    for name, prop in schema.get("properties", {}).items():
        field = cls.model_fields.get(name)
        if field is None or field.is_required() or field.default is None:
            continue
        if "anyOf" not in prop or {"type": "null"} not in prop["anyOf"]:
            inner = {k: v for k, v in prop.items() if k not in ("title", "description", "default")}
            schema["properties"][name] = {
                **{k: v for k, v in prop.items() if k in ("title", "description", "default")},
                "anyOf": [inner, {"type": "null"}]}
    if cls._schema_rules:
        schema["allOf"] = list(cls._schema_rules)


def _when_set(field: str, then: dict[str, Any]) -> dict[str, Any]:
    """JSON-schema rule: when `field` is present and not null, the request must also match `then`."""
    return {"if": {"required": [field], "properties": {field: {"not": {"type": "null"}}}}, "then": then}


def _must_be_true(field: str) -> dict[str, Any]:
    return {"required": [field], "properties": {field: {"const": True}}}


# Known fields that we do not implement and that would change the output if we ignored them: present
# with any value other than the listed no-op values -> 400 naming the field. Everything else that is
# unknown is ignored with a warning. `store`/`metadata` are deliberately absent: they ask OpenAI to keep
# the completion for later retrieval, which does not change this answer (and we have no retrieval
# endpoints, so nothing is promised); `user`-like fields (`safety_identifier`) are likewise ignored.
_REJECTED_COMMON: dict[str, tuple[tuple[Any, ...], str]] = {
    # vLLM / TGI guided-decoding extensions: use response_format instead
    "guided_json": ((), "'guided_json' is not supported; use response_format {type: json_schema}."),
    "guided_regex": ((), "'guided_regex' is not supported; use response_format {type: regex}."),
    "guided_choice": ((), "'guided_choice' is not supported; use response_format."),
    "guided_grammar": ((), "'guided_grammar' is not supported; use response_format."),
    "structured_outputs": ((), "'structured_outputs' is not supported; use response_format."),
    # vLLM sampling extensions whose non-default values change the output
    "use_beam_search": ((False,), "beam search is not supported."),
    "include_stop_str_in_output": ((False,), "'include_stop_str_in_output' is not supported."),
    "skip_special_tokens": ((True,), "'skip_special_tokens: false' is not supported."),
    "bad_words": (([],), "'bad_words' is not supported."),
    "allowed_token_ids": (([],), "'allowed_token_ids' is not supported."),
    "truncate_prompt_tokens": ((), "'truncate_prompt_tokens' is not supported."),
    "prompt_logprobs": ((0,), "'prompt_logprobs' is not supported."),
    "guided_decoding_backend": ((), "'guided_decoding_backend' is not supported."),
}
_REJECTED_CHAT: dict[str, tuple[tuple[Any, ...], str]] = {
    **_REJECTED_COMMON,
    "functions": (([],), "legacy 'functions' are not supported; use 'tools'."),
    "function_call": (("none",), "legacy 'function_call' is not supported; use 'tool_choice'."),
    "audio": ((), "audio output is not supported."),
    "modalities": ((["text"],), "only the 'text' modality is supported."),
    "prediction": ((), "predicted outputs ('prediction') are not supported."),
    "web_search_options": ((), "web search is not supported."),
    "service_tier": (("auto", "default"), "only service_tier 'auto' or 'default' is supported."),
    "verbosity": (("medium",), "only verbosity 'medium' is supported."),
    "echo": ((False,), "'echo' is not supported on chat completions."),
    "chat_template": ((), "a per-request 'chat_template' is not supported."),
    "add_generation_prompt": ((True,), "'add_generation_prompt: false' is not supported."),
    "continue_final_message": ((False,), "'continue_final_message' is not supported."),
}
_REJECTED_COMPLETIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    **_REJECTED_COMMON,
    "suffix": (("",), "'suffix' (insertion) is not supported."),
}


class _RequestBase(OpenAIBaseModel):
    """Top-level request: null == absent, rejected fields -> 400, ignored fields logged."""

    model_config = ConfigDict(json_schema_extra=_request_schema)
    _rejected: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = _REJECTED_COMMON
    _schema_rules: ClassVar[tuple[dict[str, Any], ...]] = ()  # cross-field checks, for the OpenAPI document
    _ignored_fields: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _screen_fields(cls, data: Any, handler):
        if isinstance(data, dict):
            rejected = cls._rejected
            for key, value in data.items():
                spec = rejected.get(key)
                if spec is not None and value is not None and value not in spec[0]:
                    raise ParamError(spec[1], key, "unsupported_parameter")
            # null == absent; a rejected field with its no-op value is known, so not reported as ignored
            data = {k: v for k, v in data.items() if v is not None and k not in rejected}
        result = handler(data)
        ignored: list[str] = []
        result._ignored("", ignored)
        if ignored:
            result._ignored_fields = ignored
            # repr of the list: client-chosen names cannot forge log lines; each cut short, 20 at most
            logger.warning("%s: ignored %d unknown field(s): %r", cls.__name__, len(ignored),
                           [bounded(name) for name in ignored[:20]])
        return result

    @classmethod
    def screen_lists(cls, data: Any) -> None:
        """The list caps of this request, checked on the decoded body before validation; raises
        `APIError` (400 naming the field)."""
        screen_sizes(data)

    @property
    def ignored_fields(self) -> list[str]:
        """Paths of the non-null fields we did not recognise and ignored (e.g. `messages[0].foo`)."""
        return self._ignored_fields


# ----------------------------------------------------------------------------------------------------
# Union helpers. Every union is tagged by a callable so that pydantic puts a tag starting with "<" in
# error locations, which `_param_path` drops; the custom message names what was expected.

def _tagged(choices: dict[str, Any], tag_of, error_type: str, message: str):
    members = tuple(Annotated[t, Tag(tag)] for tag, t in choices.items())
    return Annotated[Union[members], Discriminator(tag_of, custom_error_type=error_type,
                                                   custom_error_message=message)]


def _by_key(key: str, mapping: dict[str, str]):
    def tag_of(v: Any) -> Optional[str]:
        value = v.get(key) if isinstance(v, dict) else getattr(v, key, None)
        return mapping.get(value) if isinstance(value, str) else None
    return tag_of


def _str_or_list(v: Any) -> Optional[str]:
    if isinstance(v, str):
        return "<string>"
    if isinstance(v, (list, tuple)):
        return "<array>"
    return None


# ----------------------------------------------------------------------------------------------------
# Messages

class ContentPartText(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ImageURL(OpenAIBaseModel):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ContentPartImage(OpenAIBaseModel):
    """Parsed so the error can name it; this deployment rejects it (text-only model)."""
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(OpenAIBaseModel):
    data: str
    format: Literal["wav", "mp3"] = "wav"


class ContentPartAudio(OpenAIBaseModel):
    """Parsed so the error can name it; this deployment rejects it (text-only model)."""
    type: Literal["input_audio"]
    input_audio: InputAudio


_PART_TAGS = {"text": "<text>", "image_url": "<image_url>", "input_audio": "<input_audio>"}
UserContentPart = _tagged(
    {"<text>": ContentPartText, "<image_url>": ContentPartImage, "<input_audio>": ContentPartAudio},
    _by_key("type", _PART_TAGS), "invalid_part_type",
    "content part 'type' must be one of 'text', 'image_url', 'input_audio'")
TextContentPart = _tagged({"<text>": ContentPartText}, _by_key("type", {"text": "<text>"}), "invalid_part_type",
                          "content part 'type' must be 'text' in this message")

_CONTENT_MSG = "content must be a string or an array of content parts"
UserContent = _tagged({"<string>": str, "<array>": list[UserContentPart]}, _str_or_list, "invalid_content",
                      _CONTENT_MSG)
TextContent = _tagged({"<string>": str, "<array>": list[TextContentPart]}, _str_or_list, "invalid_content",
                      _CONTENT_MSG)


def _text_of(content: Union[str, list, None]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, ContentPartText))


class _MessageBase(OpenAIBaseModel):
    cache_control: Optional[dict[str, Any]] = Field(None, description="Prompt-caching hint; accepted and ignored.")

    def text(self) -> str:
        """The message's text: the string content, or its text parts joined."""
        return _text_of(self.content)


class SystemMessage(_MessageBase):
    role: Literal["system", "developer"] = Field(description="'developer' is read as 'system'.")
    content: TextContent
    name: Optional[str] = None

    @field_validator("role", mode="before")
    @classmethod
    def _developer_is_system(cls, v: Any) -> Any:
        return "system" if v == "developer" else v


class UserMessage(_MessageBase):
    role: Literal["user"]
    content: UserContent
    name: Optional[str] = None


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: Annotated[str, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "object"}]})] = Field(
        description="JSON text of the arguments (an object is accepted and re-encoded).")

    @field_validator("arguments", mode="before")
    @classmethod
    def _object_arguments(cls, v: Any) -> Any:
        # stdlib json: orjson refuses integers beyond 64 bits, which a client may well send
        return json.dumps(v, ensure_ascii=False, separators=(",", ":")) if isinstance(v, dict) else v


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(_MessageBase):
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["content"], "properties": {"content": {"not": {"type": "null"}}}},
        {"required": ["tool_calls"], "properties": {"tool_calls": {"type": "array", "minItems": 1}}}]})

    role: Literal["assistant"]
    content: Optional[TextContent] = None
    reasoning_content: Optional[str] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self):
        if self.content is None and not self.tool_calls:
            raise ParamError("an assistant message needs 'content' unless it has 'tool_calls'.", "content",
                             "missing_required_parameter")
        return self


class ToolMessage(_MessageBase):
    role: Literal["tool"]
    content: TextContent
    tool_call_id: str


_ROLE_TAGS = {"system": "<system>", "developer": "<system>", "user": "<user>", "assistant": "<assistant>",
              "tool": "<tool>"}
ChatMessage = _tagged(
    {"<system>": SystemMessage, "<user>": UserMessage, "<assistant>": AssistantMessage, "<tool>": ToolMessage},
    _by_key("role", _ROLE_TAGS), "invalid_role",
    "message 'role' must be one of 'system', 'developer', 'user', 'assistant', 'tool'")


# ----------------------------------------------------------------------------------------------------
# Tools, response formats, options

class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="JSON schema of the arguments.")
    strict: Optional[bool] = None


class ChatTool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition
    cache_control: Optional[dict[str, Any]] = None


class ToolChoiceFunction(OpenAIBaseModel):
    name: str
    # The seed also allows the full tool definition here; the definition in `tools` is the one used.
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction
    cache_control: Optional[dict[str, Any]] = None


ToolChoice = _tagged(
    {"<mode>": Literal["none", "auto", "required"], "<function>": NamedToolChoice},
    lambda v: "<mode>" if isinstance(v, str) else "<function>" if isinstance(v, (dict, NamedToolChoice)) else None,
    "invalid_tool_choice", "tool_choice must be 'none', 'auto', 'required' or {type: 'function', function: {name}}")


class TextResponseFormat(OpenAIBaseModel):
    type: Literal["text"]


class JsonObjectResponseFormat(OpenAIBaseModel):
    type: Literal["json_object"]


class JsonSchemaSpec(OpenAIBaseModel):
    name: str
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the output must match.")
    strict: Optional[bool] = None
    description: Optional[str] = None


class JsonSchemaResponseFormat(OpenAIBaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


class RegexResponseFormat(OpenAIBaseModel):
    type: Literal["regex"]
    regex: str = Field(description="Regular expression the whole output must match.")


_FORMAT_TAGS = {"text": "<text>", "json_object": "<json_object>", "json_schema": "<json_schema>", "regex": "<regex>"}
ResponseFormat = _tagged(
    {"<text>": TextResponseFormat, "<json_object>": JsonObjectResponseFormat,
     "<json_schema>": JsonSchemaResponseFormat, "<regex>": RegexResponseFormat},
    _by_key("type", _FORMAT_TAGS), "invalid_response_format",
    "response_format 'type' must be one of 'text', 'json_object', 'json_schema', 'regex'")


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = Field(True, description="Send a final chunk with usage and `choices: []`.")
    continuous_usage_stats: bool = Field(False, description="Also put usage on every chunk.")


class ReasoningSettings(OpenAIBaseModel):
    effort: Optional[Literal["low", "medium", "high"]] = None
    enabled: Optional[bool] = None


class CompletionMultiModalData(OpenAIBaseModel):
    image: list[str] = Field(default_factory=list, max_length=0, description="Not supported: text-only model.")

    @field_validator("image", mode="before")
    @classmethod
    def _no_images(cls, v: Any) -> Any:
        if isinstance(v, list) and v:
            raise ParamError("images are not supported: this model reads text only.", code="unsupported_value")
        return v


StopItem = Annotated[str, Field(min_length=1)]
Stop = _tagged({"<string>": StopItem, "<array>": Annotated[list[StopItem], Field(max_length=MAX_STOP_SEQUENCES)]},
               _str_or_list, "invalid_stop", "stop must be a string or an array of strings")
TokenId = _int(ge=0)
TokenCount = _int(ge=0, le=MAX_TOKENS_LIMIT)
Seed = _int(ge=-(2 ** 63), lt=2 ** 64)
_TOKEN_IDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
Prompt = Annotated[
    _tagged({"<string>": str, "<array>": Annotated[list[TokenId], Field(min_length=1)]}, _str_or_list,
            "invalid_prompt", "prompt must be a string or an array of token ids"),
    WithJsonSchema({"oneOf": [  # what `_one_prompt` accepts: one prompt, possibly wrapped in a one-item array
        {"type": "string"}, _TOKEN_IDS_SCHEMA,
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
        {"type": "array", "items": _TOKEN_IDS_SCHEMA, "minItems": 1, "maxItems": 1}]})]
LogitBias = dict[Annotated[int, Strict(False), Field(ge=0)],  # JSON keys are strings: "50256"
                 Annotated[float, Field(ge=-100.0, le=100.0)]]


# ----------------------------------------------------------------------------------------------------
# Requests

class _SamplingRequest(_RequestBase):
    """Fields shared by both endpoints, in the seed's order; extensions at the end."""

    model: str = Field(description="Model name as listed by GET /v1/models.")
    stream: bool = False
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    top_k: _int(ge=0, lt=1000) = Field(0, description="0 = off.")
    n: _int(ge=1, le=4) = 1
    stop: Optional[Stop] = Field(None, description=f"Up to {MAX_STOP_SEQUENCES} non-empty stop strings.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=5.0)
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None
    seed: Optional[Seed] = None
    stream_options: Optional[StreamOptions] = Field(None, description="Only with stream=true.")
    prompt_cache_key: Optional[str] = Field(None, description=(
        "Scopes prompt caching: only requests with the same key (and the same API key) share cached prefixes."))
    logit_bias: Optional[LogitBias] = Field(
        None, description="Token id (as a string) -> bias in [-100, 100].",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    # extensions
    cache_salt: Optional[str] = Field(None, min_length=1, description=(
        "Extension (vLLM): only requests with the same salt (and the same API key) share cached prompt "
        "prefixes. Refused where the decoder cannot scope its cache."))
    min_tokens: TokenCount = Field(0, description="Extension: generate at least this many.")
    stop_token_ids: Optional[Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]] = Field(
        None, description=f"Token ids that end generation (at most {MAX_STOP_TOKEN_IDS}).")
    priority: _int(ge=-(2 ** 31), lt=2 ** 31) = Field(0, description=(
        "Extension (vLLM, SGLang): the request's place in the decoder's waiting queue, lower first; "
        "among equal priorities, fair share between API keys, then arrival. Any value but 0 is refused "
        "(400) where the decoder schedules first come, first served (TensorRT-LLM's)."))
    ignore_eos: bool = Field(False, description=(
        "Extension (vLLM, SGLang, trtllm-serve): do not stop at the model's end-of-sequence token(s); "
        "generation runs to max_tokens, a stop string or stop_token_ids. An end token sampled on the way "
        "counts in usage and adds no text."))

    @model_validator(mode="after")
    def _check_stream_options(self):
        if self.stream_options is not None and not self.stream:
            raise ParamError("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        if self.min_tokens and self.max_new_tokens is not None and self.min_tokens > self.max_new_tokens:
            raise ParamError(f"'min_tokens' ({self.min_tokens}) must not exceed the maximum number of tokens "
                             f"({self.max_new_tokens}).", "min_tokens")
        return self

    @property
    def max_new_tokens(self) -> Optional[int]:
        """The requested generation cap; None = the server decides (context left, server cap)."""
        return self.max_tokens

    @property
    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingRequest):
    """`POST /v1/chat/completions` (seed: `OpenAIChatCompletionsIn`)."""

    _rejected = _REJECTED_CHAT
    _schema_rules = (
        _when_set("stream_options", _must_be_true("stream")),
        _when_set("top_logprobs", _must_be_true("logprobs")),
        {"if": {"required": ["tool_choice"],
                "properties": {"tool_choice": {"anyOf": [{"const": "required"}, {"type": "object"}]}}},
         "then": {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}},
    )

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES, description=(
        f"The conversation: 1 to {MAX_MESSAGES} messages, with at most {MAX_CONTENT_PARTS} content parts "
        f"in all."))
    max_tokens: Optional[TokenCount] = Field(None, description="null = the server decides.")
    max_completion_tokens: Optional[TokenCount] = Field(None, description="Wins over max_tokens.")
    tools: Optional[list[ChatTool]] = None
    tool_choice: Optional[ToolChoice] = Field(None, description="Default: 'auto' with tools, else 'none'.")
    parallel_tool_calls: bool = True
    logprobs: Optional[bool] = None
    top_logprobs: Optional[_int(ge=0, le=20)] = Field(None, description="Needs logprobs=true.")
    reasoning_effort: Optional[Literal["low", "medium", "high", "none"]] = None
    reasoning: Optional[ReasoningSettings] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None
    return_tokens_as_token_ids: Optional[bool] = Field(None, description=(
        "Extension (vLLM): logprobs name each token (and each top alternative) as 'token_id:N'."))

    @field_validator("tools")
    @classmethod
    def _empty_tools_are_none(cls, v: Optional[list[ChatTool]]) -> Optional[list[ChatTool]]:
        return v or None

    @model_validator(mode="after")
    def _check_chat(self):
        for i, message in enumerate(self.messages):
            if isinstance(message.content, list):
                for j, part in enumerate(message.content):
                    if part.type in UNSUPPORTED_PART_TYPES:
                        raise ParamError(f"content parts of type '{part.type}' are not supported: this model "
                                         f"reads text only.", f"messages[{i}].content[{j}]", "unsupported_value")
        if self.top_logprobs is not None and not self.logprobs:
            raise ParamError("'top_logprobs' requires 'logprobs' to be true.", "top_logprobs")
        choice = self.tool_choice
        if isinstance(choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or ()]
            if choice.function.name not in names:
                raise ParamError(f"tool_choice names function '{choice.function.name}', which is not in "
                                 f"'tools'.", "tool_choice.function.name")
        elif choice == "required" and not self.tools:
            raise ParamError("tool_choice 'required' needs at least one tool in 'tools'.", "tool_choice")
        return self

    @property
    def max_new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def tool_choice_mode(self) -> Literal["none", "auto", "required", "named"]:
        if self.tool_choice is None:
            return "auto" if self.tools else "none"
        return "named" if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice

    @property
    def named_tool(self) -> Optional[ChatTool]:
        if not isinstance(self.tool_choice, NamedToolChoice):
            return None
        return next(t for t in self.tools or () if t.function.name == self.tool_choice.function.name)


class CompletionRequest(_SamplingRequest):
    """`POST /v1/completions` (seed: `OpenAICompletionsIn`): one prompt per request."""

    _rejected = _REJECTED_COMPLETIONS
    _schema_rules = (_when_set("stream_options", _must_be_true("stream")),)

    prompt: Prompt = Field(
        description="One prompt: a string or token ids (a one-string array is read as that string).")
    max_tokens: Optional[_int(gt=0, le=MAX_TOKENS_LIMIT)] = Field(None, description="null = the server decides.")
    logprobs: Optional[_int(ge=0, le=5)] = Field(None, description="Number of top tokens per position.")
    echo: Optional[bool] = None
    best_of: Optional[_int(ge=1, le=1)] = Field(None, description="Only 1 is supported.")
    return_tokens_as_token_ids: Optional[bool] = Field(None, description=(
        "Extension (vLLM): logprobs name each token (and each top_logprobs key) as 'token_id:N'."))
    data: Optional[CompletionMultiModalData] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ParamError("'prompt' must not be an empty array.")
            if all(isinstance(x, (str, list)) for x in v):  # a batch: strings or token-id arrays
                if len(v) > 1:
                    raise ParamError("only one prompt per request is supported; send one request per prompt.",
                                     code="unsupported_value")
                return v[0]
        return v

    @field_validator("best_of", mode="before")
    @classmethod
    def _best_of_one(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool) and v > 1:
            raise ParamError("only best_of=1 is supported.", code="unsupported_value")
        return v


RequestT = TypeVar("RequestT", bound=_RequestBase)


def too_long(param: str, cap: int, got: int) -> APIError:
    return bad_request(f"Invalid '{param}': array too long. Expected an array with maximum length {cap}, but got "
                       f"an array with length {got} instead.", param, "array_above_max_length")


def screen_items(items: Any, field: str, part_keys: tuple[str, ...], holder: str) -> None:
    """A list of items (chat messages, Responses input items) within MAX_MESSAGES, and their
    content parts (the lists under `part_keys` of every item, counted together) within
    MAX_CONTENT_PARTS: a 400 naming the item where the count passes the cap."""
    if not isinstance(items, list):
        return
    if len(items) > MAX_MESSAGES:
        raise too_long(field, MAX_MESSAGES, len(items))
    parts = 0
    for i, item in enumerate(items):
        for key in part_keys:
            value = item.get(key) if isinstance(item, dict) else None
            if isinstance(value, list):
                parts += len(value)
                if parts > MAX_CONTENT_PARTS:
                    raise bad_request(f"Invalid '{field}[{i}].{key}': {holder} hold more than "
                                      f"{MAX_CONTENT_PARTS} content parts in all.", f"{field}[{i}].{key}",
                                      "array_above_max_length")


def screen_sizes(data: Any) -> None:
    """The list caps, checked on the decoded body before validation: a refusal costs a length
    check, not the validation of every item (about 30 us per message)."""
    if not isinstance(data, dict):
        return
    screen_items(data.get("messages"), "messages", ("content",), "the messages")
    stop_ids = data.get("stop_token_ids")
    if isinstance(stop_ids, list) and len(stop_ids) > MAX_STOP_TOKEN_IDS:
        raise too_long("stop_token_ids", MAX_STOP_TOKEN_IDS, len(stop_ids))


def parse_request(cls: type[RequestT], body: Union[bytes, str, dict]) -> RequestT:
    """Validate a request body (raw JSON or an already-decoded object); raises `APIError` (400).

    Raw bytes go through pydantic's own JSON parser, which keeps integers exact (orjson turns
    integers beyond 64 bits into floats, which would let `seed: -2**63-1` through). orjson's
    decoding, about 25 ms per MB, only screens the list caps first; a body it cannot decode
    (such an integer) is screened by the stdlib parser, and invalid JSON is left to pydantic.
    """
    if isinstance(body, dict):
        cls.screen_lists(body)
    else:
        try:
            cls.screen_lists(orjson.loads(body))
        except orjson.JSONDecodeError:
            try:
                cls.screen_lists(json.loads(body))
            except (ValueError, RecursionError):
                pass
    try:
        if isinstance(body, dict):
            return cls.model_validate(body)
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error_to_api_error(exc) from None
