"""The Responses API's answers as pydantic classes: the Response object, its output items and
usage, a deleted response, a page of input items.

They describe what output.py and api.py build as plain dicts (the hot path does not validate its
own answers; see response_models.py for the cost) and feed the OpenAPI document (openapi.py), so
the fuzz test checks every live answer against them (tests/integration/test_fuzz.py), and
tests/unit/test_openapi_responses.py checks the builders' output against them directly.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field

from frontend.openai.response_models import ResponseModel

Status = Literal["in_progress", "completed", "incomplete", "failed"]


class OutputTextPart(ResponseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class ReasoningTextPart(ResponseModel):
    type: Literal["reasoning_text"]
    text: str


class MessageOutput(ResponseModel):
    type: Literal["message"]
    id: str
    status: Status
    role: Literal["assistant"]
    content: list[OutputTextPart]


class ReasoningOutput(ResponseModel):
    type: Literal["reasoning"]
    id: str
    status: Status
    summary: list[Any] = Field(description="Always empty: this server writes no summaries.")
    content: list[ReasoningTextPart]


class FunctionCallOutput(ResponseModel):
    type: Literal["function_call"]
    id: str
    status: Status
    call_id: str
    name: str
    arguments: str = Field(description="The call's arguments, JSON text.")


OutputItem = Annotated[Union[MessageOutput, ReasoningOutput, FunctionCallOutput], Field(discriminator="type")]


class InputTokensDetails(ResponseModel):
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache (scoped per API key).")
    cache_write_tokens: int


class OutputTokensDetails(ResponseModel):
    reasoning_tokens: int


class ResponseUsage(ResponseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(ResponseModel):
    code: str
    message: str


class IncompleteDetails(ResponseModel):
    reason: Literal["max_output_tokens"]


class ReasoningEcho(ResponseModel):
    effort: Optional[str]
    summary: Optional[str]


class FormatText(ResponseModel):
    type: Literal["text"]


class FormatJsonObject(ResponseModel):
    type: Literal["json_object"]


class FormatJsonSchema(ResponseModel):
    _omit_if_none = frozenset({"description"})

    type: Literal["json_schema"]
    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool
    description: Optional[str] = None


class TextEcho(ResponseModel):
    format: Annotated[Union[FormatText, FormatJsonObject, FormatJsonSchema], Field(discriminator="type")]
    verbosity: Literal["medium"]


class FunctionToolEcho(ResponseModel):
    type: Literal["function"]
    name: str
    description: Optional[str]
    parameters: Optional[dict[str, Any]]
    strict: Optional[bool]


class NamedToolChoiceEcho(ResponseModel):
    type: Literal["function"]
    name: str


class ResponseObject(ResponseModel):
    """A Response: what POST /v1/responses answers (and, in a stream, each `response.*` event
    carries), and GET /v1/responses/{id} returns once stored."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Status
    background: Literal[False]
    completed_at: Optional[int]
    error: Optional[ResponseError]
    incomplete_details: Optional[IncompleteDetails]
    instructions: Optional[str]
    max_output_tokens: Optional[int]
    max_tool_calls: Optional[int]
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: Optional[str]
    prompt_cache_key: Optional[str]
    reasoning: ReasoningEcho
    safety_identifier: Optional[str]
    service_tier: Literal["default"]
    store: bool = Field(description="False when the response was not stored (store: false, or the store "
                                    "refused it).")
    temperature: float
    text: TextEcho
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoiceEcho]
    tools: list[FunctionToolEcho]
    top_logprobs: int
    top_p: float
    truncation: Literal["disabled"]
    usage: Optional[ResponseUsage]
    user: Optional[str]


class ResponseDeleted(ResponseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: Literal[True]


class InputItemRecord(ResponseModel):
    """One stored input item as OpenAI lists it (a message, function_call, function_call_output or
    reasoning item with its own fields besides these)."""

    id: str
    type: Literal["message", "function_call", "function_call_output", "reasoning"]
    status: str


class InputItemList(ResponseModel):
    object: Literal["list"]
    data: list[InputItemRecord]
    first_id: Optional[str]
    last_id: Optional[str]
    has_more: bool
