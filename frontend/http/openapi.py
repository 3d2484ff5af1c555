"""The OpenAPI 3.1 document of the frontend, generated from the pydantic models the handlers use.

Request bodies use the validation schema of the request classes (`request_models`, the Responses
API's `responses.request`, the operator endpoints' `operator_models`), answers the serialization
schema of the response classes (`response_models`, `responses.objects`, `operator_models`); all
definitions live in `components/schemas`. Every 4xx/5xx answer is the error envelope. Streaming
chat and text completions (`stream: true`) are `text/event-stream` whose events are
`ChatCompletionChunk` / `CompletionChunk` JSON (also in components), ended by `data: [DONE]`; a
streamed Response is a sequence of typed events (`event: <type>`, `data: <event JSON>` with a
`sequence_number`), ended by `response.completed`, `response.incomplete` or `response.failed`.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic.json_schema import models_json_schema

from frontend.errors import ErrorResponse
from frontend.http import operator_models as ops
from frontend.openai import (MAX_INPUT_ITEMS_PAGE, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
                             CompletionChunk, CompletionRequest, CompletionResponse, InputItemList, ModelList,
                             ResponseDeleted, ResponseObject, ResponsesRequest)

_REF = "#/components/schemas/{model}"
_ERROR_STATUSES = {
    "400": "Invalid request (the `param` field names the offending request field)",
    "401": "Missing or invalid API key",
    "404": "Unknown model, or no stored response with this id for this key",
    "413": "Request body too large",
    "429": "Server at capacity; see Retry-After",
    "500": "Internal error",
    "503": "Not ready; see Retry-After",
}


def _error_responses(ref: dict, statuses: list[str]) -> dict[str, Any]:
    return {s: {"description": _ERROR_STATUSES[s], "content": {"application/json": {"schema": ref}}}
            for s in statuses}


def build_openapi(*, title: str = "llama-triton OpenAI-compatible API", version: str = "1",
                  auth: bool = True, server_url: Optional[str] = None) -> dict[str, Any]:
    """The whole document. `auth=False` drops the bearer security (server started without keys)."""
    models = [
        (ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
        (ChatCompletionResponse, "serialization"), (ChatCompletionChunk, "serialization"),
        (CompletionResponse, "serialization"), (CompletionChunk, "serialization"),
        (ModelList, "serialization"), (ErrorResponse, "serialization"),
        (ResponsesRequest, "validation"), (ResponseObject, "serialization"),
        (ResponseDeleted, "serialization"), (InputItemList, "serialization"),
        (ops.TokenizeChatRequest, "validation"), (ops.TokenizePromptRequest, "validation"),
        (ops.DetokenizeRequest, "validation"), (ops.TokenizeResponse, "serialization"),
        (ops.DetokenizeResponse, "serialization"), (ops.VersionResponse, "serialization"),
    ]
    refs, top = models_json_schema(models, ref_template=_REF)
    ref = {model: refs[(model, mode)] for model, mode in models}
    schemas = top.get("$defs", {})
    error = ref[ErrorResponse]
    sec = [{"HTTPBearer": []}] if auth else []
    client_errors = ["400"] + (["401"] if auth else []) + ["404", "413", "429", "500", "503"]

    def generate(kind: str, request: type, response: type, chunk: type) -> dict[str, Any]:
        return {
            "summary": f"Create a {kind}",
            "description": f"With `stream: true` the answer is `text/event-stream`: one `data: <{chunk.__name__}>` "
                           "event per step, then `data: [DONE]`. An error after the stream started is sent as "
                           "`data: <ErrorResponse>` followed by `data: [DONE]`.",
            "tags": ["inference"],
            "security": sec,
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref[request]}}},
            "responses": {
                "200": {"description": "The completion (JSON), or its stream (SSE)",
                        "content": {"application/json": {"schema": ref[response]},
                                    "text/event-stream": {"schema": {
                                        "type": "string",
                                        "description": f"SSE events carrying {chunk.__name__} JSON, "
                                                       "then `data: [DONE]`"}}}},
                **_error_responses(error, client_errors),
            },
        }

    def list_models() -> dict[str, Any]:
        return {"summary": "List the served models", "tags": ["models"], "security": sec,
                "responses": {"200": {"description": "The served models",
                                      "content": {"application/json": {"schema": ref[ModelList]}}},
                              **_error_responses(error, (["401"] if auth else []) + ["500"])}}

    def json_ok(description: str, model: type) -> dict[str, Any]:
        return {"200": {"description": description, "content": {"application/json": {"schema": ref[model]}}}}

    response_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "A response id from POST /v1/responses (`id`)."}

    def responses_paths(prefix: str, suffix: str) -> dict[str, Any]:
        """The Responses API (frontend/http/responses_routes.py)."""
        tags, stored_errors = ["responses"], (["401"] if auth else []) + ["404", "500", "503"]
        create = {
            "summary": "Create a model response", "operationId": f"create_response{suffix}", "tags": tags,
            "security": sec,
            "description": "With `stream: true` the answer is `text/event-stream`: typed events (`event: <type>` "
                           "then `data: <JSON>`, each with its `sequence_number`): `response.created`, "
                           "`response.in_progress`, output item, content part and delta events, and last "
                           "`response.completed`, `response.incomplete` (max_output_tokens) or, after an "
                           "`error` event, `response.failed`; each `response.*` event carries a "
                           "`ResponseObject`. No `data: [DONE]`.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": ref[ResponsesRequest]}}},
            "responses": {
                "200": {"description": "The Response (JSON), or its event stream (SSE)",
                        "content": {"application/json": {"schema": ref[ResponseObject]},
                                    "text/event-stream": {"schema": {
                                        "type": "string",
                                        "description": "SSE events of the Responses API (see above)"}}}},
                **_error_responses(error, client_errors),
            },
        }
        return {
            f"{prefix}/responses": {"post": create},
            f"{prefix}/responses/{{id}}": {
                "get": {"summary": "Retrieve a stored response (the key that created it only)",
                        "operationId": f"get_response{suffix}", "tags": tags, "security": sec,
                        "parameters": [response_id],
                        "responses": {**json_ok("The stored Response", ResponseObject),
                                      **_error_responses(error, stored_errors)}},
                "delete": {"summary": "Delete a stored response (the key that created it only)",
                           "operationId": f"delete_response{suffix}", "tags": tags, "security": sec,
                           "parameters": [response_id],
                           "responses": {**json_ok("Deleted", ResponseDeleted),
                                         **_error_responses(error, stored_errors)}}},
            f"{prefix}/responses/{{id}}/input_items": {"get": {
                "summary": "List a stored response's input items (this turn's, not earlier turns')",
                "operationId": f"list_input_items{suffix}", "tags": tags, "security": sec,
                "parameters": [
                    response_id,
                    {"name": "after", "in": "query", "required": False, "schema": {"type": "string"},
                     "description": "An item id of this list: the page starts after it."},
                    {"name": "limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INPUT_ITEMS_PAGE, "default": 20}},
                    {"name": "order", "in": "query", "required": False,
                     "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}}],
                "responses": {**json_ok("A page of input items", InputItemList),
                              **_error_responses(error, ["400"] + stored_errors)}}},
            f"{prefix}/responses/{{id}}/cancel": {"post": {
                "summary": "Cancel a background response: there is no background mode, so a stored "
                           "response answers 400 (`not_cancellable`)",
                "operationId": f"cancel_response{suffix}", "tags": tags, "security": sec,
                "parameters": [response_id],
                "responses": {"200": {"description": "Never: no response runs in the background",
                                      "content": {"application/json": {"schema": ref[ResponseObject]}}},
                              **_error_responses(error, ["400"] + stored_errors)}}},
        }

    def operator_paths() -> dict[str, Any]:
        """vLLM's operator endpoints (frontend/http/operator_api.py)."""
        tags = ["operations"]
        body_errors = ["400"] + (["401"] if auth else []) + ["404", "413", "500"]
        return {
            "/tokenize": {"post": {
                "summary": "Token ids of chat messages (rendered as a chat request is) or of a prompt",
                "operationId": "tokenize", "tags": tags, "security": sec,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "anyOf": [ref[ops.TokenizeChatRequest], ref[ops.TokenizePromptRequest]],
                    "description": "With `messages`: a chat request (TokenizeChatRequest); else a prompt."}}}},
                "responses": {**json_ok("The token ids", ops.TokenizeResponse),
                              **_error_responses(error, body_errors)}}},
            "/detokenize": {"post": {
                "summary": "The text of token ids", "operationId": "detokenize", "tags": tags, "security": sec,
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref[ops.DetokenizeRequest]}}},
                "responses": {**json_ok("The text", ops.DetokenizeResponse),
                              **_error_responses(error, body_errors)}}},
            "/version": {"get": {
                "summary": "The server's version", "operationId": "version", "tags": tags, "security": sec,
                "responses": {**json_ok("The version", ops.VersionResponse),
                              **_error_responses(error, (["401"] if auth else []) + ["500"])}}},
        }

    paths: dict[str, Any] = {}
    for prefix, suffix in (("/v1", ""), ("/v1/openai", "_openai")):
        paths[f"{prefix}/chat/completions"] = {"post": {
            **generate("chat completion", ChatCompletionRequest, ChatCompletionResponse, ChatCompletionChunk),
            "operationId": f"create_chat_completion{suffix}"}}
        paths[f"{prefix}/completions"] = {"post": {
            **generate("completion", CompletionRequest, CompletionResponse, CompletionChunk),
            "operationId": f"create_completion{suffix}"}}
        paths[f"{prefix}/models"] = {"get": {**list_models(), "operationId": f"list_models{suffix}"}}
        paths.update(responses_paths(prefix, suffix))
    paths.update(operator_paths())
    paths["/health"] = {"get": {
        "summary": "Readiness: 200 once Triton and the model are ready", "operationId": "health",
        "tags": ["operations"], "security": [],
        "responses": {"200": {"description": "Ready"}, **_error_responses(error, ["503"])}}}
    paths["/health/live"] = {"get": {
        "summary": "Liveness: 200 while the replica can still heal itself (docs/OPERATIONS.md)",
        "operationId": "liveness", "tags": ["operations"], "security": [],
        "responses": {"200": {"description": "Alive"}, "503": {"description": "Decoder down too long"}}}}
    paths["/metrics"] = {"get": {
        "summary": "Prometheus metrics (text exposition format)", "operationId": "metrics",
        "tags": ["operations"], "security": [],
        "responses": {"200": {"description": "Metrics",
                              "content": {"text/plain": {"schema": {"type": "string"}}}}}}}

    paths["/openapi.json"] = {"get": {
        "summary": "This document", "operationId": "openapi", "tags": ["operations"], "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1 document",
                              "content": {"application/json": {"schema": {"type": "object"}}}}}}}

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version,
                 "description": "OpenAI-compatible chat and text completions and the Responses API, "
                                "served by Triton."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"HTTPBearer": []}]
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
