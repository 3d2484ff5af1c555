"""OpenAI wire format, requests: `ChatCompletionRequest` and `CompletionRequest` with their validation.

They follow the seed contract (`OpenAIChatCompletionsIn`, `OpenAICompletionsIn`): same fields,
defaults and ranges, plus a few marked extensions. The policy for null, unknown and rejected fields
is request_base.py's; the chat request's parts are in message_models.py. Responses are in
response_models.py (the OpenAPI document's shapes), the streaming encoders in sse.py.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import Field, Strict, WithJsonSchema, field_validator, model_validator

from frontend.errors import ParamError
from frontend.openai.message_models import ChatMessage, ChatTool, NamedToolChoice, ResponseFormat, ToolChoice
from frontend.openai.request_base import (MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_STOP_SEQUENCES, MAX_STOP_TOKEN_IDS,
                                          MAX_TOKENS_LIMIT, REJECTED_CHAT, REJECTED_COMPLETIONS,
                                          UNSUPPORTED_PART_TYPES, OpenAIBaseModel, RequestBase, must_be_true,
                                          str_or_list, strict_int, tagged, when_set)


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
Stop = tagged({"<string>": StopItem, "<array>": Annotated[list[StopItem], Field(max_length=MAX_STOP_SEQUENCES)]},
              str_or_list, "invalid_stop", "stop must be a string or an array of strings")
TokenId = strict_int(ge=0)
TokenCount = strict_int(ge=0, le=MAX_TOKENS_LIMIT)
Seed = strict_int(ge=-(2 ** 63), lt=2 ** 64)
_TOKEN_IDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
Prompt = Annotated[
    tagged({"<string>": str, "<array>": Annotated[list[TokenId], Field(min_length=1)]}, str_or_list,
           "invalid_prompt", "prompt must be a string or an array of token ids"),
    WithJsonSchema({"oneOf": [  # what `_one_prompt` accepts: one prompt, possibly wrapped in a one-item array
        {"type": "string"}, _TOKEN_IDS_SCHEMA,
        {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
        {"type": "array", "items": _TOKEN_IDS_SCHEMA, "minItems": 1, "maxItems": 1}]})]
LogitBias = dict[Annotated[int, Strict(False), Field(ge=0)],  # JSON keys are strings: "50256"
                 Annotated[float, Field(ge=-100.0, le=100.0)]]


class _SamplingRequest(RequestBase):
    """Fields shared by both endpoints, in the seed's order; extensions at the end."""

    model: str = Field(description="Model name as listed by GET /v1/models.")
    stream: bool = False
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    top_k: strict_int(ge=0, lt=1000) = Field(0, description="0 = off.")
    n: strict_int(ge=1, le=4) = 1
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
    priority: strict_int(ge=-(2 ** 31), lt=2 ** 31) = Field(0, description=(
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

    _rejected = REJECTED_CHAT
    _schema_rules = (
        when_set("stream_options", must_be_true("stream")),
        when_set("top_logprobs", must_be_true("logprobs")),
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
    top_logprobs: Optional[strict_int(ge=0, le=20)] = Field(None, description="Needs logprobs=true.")
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

    _rejected = REJECTED_COMPLETIONS
    _schema_rules = (when_set("stream_options", must_be_true("stream")),)

    prompt: Prompt = Field(
        description="One prompt: a string or token ids (a one-string array is read as that string).")
    max_tokens: Optional[strict_int(gt=0, le=MAX_TOKENS_LIMIT)] = Field(None, description="null = the server decides.")
    logprobs: Optional[strict_int(ge=0, le=5)] = Field(None, description="Number of top tokens per position.")
    echo: Optional[bool] = None
    best_of: Optional[strict_int(ge=1, le=1)] = Field(None, description="Only 1 is supported.")
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
