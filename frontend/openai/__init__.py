"""OpenAI semantics over the decoder: request and response models, prompts, guides and tools,
reasoning, generation and the SSE chunk encoding, the chat and completions service, and the
Responses API (`responses/`).

Depends on decoder, telemetry, tenancy, settings and the error envelope; knows nothing of HTTP
(frontend/http/ does). Other groups import from this package only."""
from frontend.openai.legacy_completions import LegacyCompletions
from frontend.openai.request_base import RequestBase, parse_request
from frontend.openai.request_models import ChatCompletionRequest, CompletionRequest, TokenId
from frontend.openai.response_models import (ChatCompletionChunk, ChatCompletionResponse, CompletionChunk,
                                             CompletionResponse, ModelCard, ModelList, ModelMetadata, ResponseModel)
from frontend.openai.responses.api import MAX_INPUT_ITEMS_PAGE, ResponsesAPI
from frontend.openai.responses.objects import InputItemList, ResponseDeleted, ResponseObject
from frontend.openai.responses.request import ResponsesRequest
from frontend.openai.responses.store import StoreLimits, open_store, owner_of_key
from frontend.openai.service import CompletionService
from frontend.openai.sse import DECODER_ANSWERED, SSE_DONE, EventStream

__all__ = ["DECODER_ANSWERED", "MAX_INPUT_ITEMS_PAGE", "SSE_DONE", "ChatCompletionChunk", "ChatCompletionRequest",
           "ChatCompletionResponse", "CompletionChunk", "CompletionRequest", "CompletionResponse", "CompletionService",
           "EventStream", "InputItemList", "LegacyCompletions", "ModelCard", "ModelList", "ModelMetadata",
           "RequestBase", "ResponseDeleted", "ResponseModel", "ResponseObject", "ResponsesAPI", "ResponsesRequest",
           "StoreLimits", "TokenId", "open_store", "owner_of_key", "parse_request"]
