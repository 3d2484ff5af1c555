"""The OpenAPI 3.1 document of the frontend, generated from the pydantic models in `request_models` and `response_models`.

Request bodies use the validation schema of the request classes, responses the serialization
schema of the response classes; all definitions live in `components/schemas`. Every 4xx/5xx answer
is the error envelope. Streaming answers (`stream: true`) are `text/event-stream` whose events are
`ChatCompletionChunk` / `CompletionChunk` JSON (also in components), ended by `data: [DONE]`.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic.json_schema import models_json_schema

from frontend import request_models as req
from frontend import response_models as resp
from frontend.errors import ErrorResponse

_REF = "#/components/schemas/{model}"
_ERROR_STATUSES = {
    "400": "Invalid request (the `param` field names the offending request field)",
    "401": "Missing or invalid API key",
    "404": "Unknown model",
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
        (req.ChatCompletionRequest, "validation"), (req.CompletionRequest, "validation"),
        (resp.ChatCompletionResponse, "serialization"), (resp.ChatCompletionChunk, "serialization"),
        (resp.CompletionResponse, "serialization"), (resp.CompletionChunk, "serialization"),
        (resp.ModelList, "serialization"), (ErrorResponse, "serialization"),
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
                                      "content": {"application/json": {"schema": ref[resp.ModelList]}}},
                              **_error_responses(error, (["401"] if auth else []) + ["500"])}}

    paths: dict[str, Any] = {}
    for prefix, suffix in (("/v1", ""), ("/v1/openai", "_openai")):
        paths[f"{prefix}/chat/completions"] = {"post": {
            **generate("chat completion", req.ChatCompletionRequest, resp.ChatCompletionResponse, resp.ChatCompletionChunk),
            "operationId": f"create_chat_completion{suffix}"}}
        paths[f"{prefix}/completions"] = {"post": {
            **generate("completion", req.CompletionRequest, resp.CompletionResponse, resp.CompletionChunk),
            "operationId": f"create_completion{suffix}"}}
        paths[f"{prefix}/models"] = {"get": {**list_models(), "operationId": f"list_models{suffix}"}}
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
                 "description": "OpenAI-compatible chat and text completions served by Triton."},
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if auth:
        doc["components"]["securitySchemes"] = {"HTTPBearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"HTTPBearer": []}]
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc
