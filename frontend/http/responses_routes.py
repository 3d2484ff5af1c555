"""HTTP routes of the Responses API (under /v1 and /v1/openai), on the chat routes' machinery
(routes.py, sse_writer.py): the same auth and body caps, request context, error envelope and SSE writer as chat completions.

The owner of a stored response is the SHA-256 of the Bearer key that created it (store.py); with
no keys configured every client is the same owner.
"""
from __future__ import annotations

from aiohttp import web

from frontend import errors
from frontend.http.app_keys import SERVICE, SETTINGS
from frontend.http.routes import json_response, json_result, note_request, read_body
from frontend.http.sse_writer import stream_sse
from frontend.openai import (MAX_INPUT_ITEMS_PAGE, ResponsesAPI, ResponsesRequest, StoreLimits, open_store,
                             owner_of_key, parse_request)
from frontend.telemetry import tracing

API = web.AppKey("responses_api", ResponsesAPI)


def owner(request: web.Request) -> str:
    if not request.app[SETTINGS].api_keys:
        return ""
    # auth_middleware has checked this header already
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return owner_of_key(token.strip())


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    with tracing.span("validate"):
        req = parse_request(ResponsesRequest, body)
    note_request(request, req)
    result = await request.app[API].create(req, owner(request))
    if isinstance(result, dict):
        return json_result(request, result)
    return await stream_sse(request, result)


def _no_query(request: web.Request, *allowed: str) -> None:
    for key, value in request.query.items():
        if key not in allowed:
            raise errors.bad_request(f"query parameter '{key}' is not supported here.", key, "unsupported_parameter")


async def retrieve(request: web.Request) -> web.Response:
    _no_query(request)
    return json_response(await request.app[API].retrieve(request.match_info["id"], owner(request)))


async def input_items(request: web.Request) -> web.Response:
    _no_query(request, "after", "limit", "order")
    q = request.query
    limit_text = q.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_INPUT_ITEMS_PAGE:
        raise errors.bad_request(f"'limit' must be an integer from 1 to {MAX_INPUT_ITEMS_PAGE}.", "limit")
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise errors.bad_request("'order' must be 'asc' or 'desc'.", "order")
    return json_response(await request.app[API].input_items(
        request.match_info["id"], owner(request), after=q.get("after"), limit=int(limit_text), order=order))


async def delete(request: web.Request) -> web.Response:
    _no_query(request)
    return json_response(await request.app[API].delete(request.match_info["id"], owner(request)))


async def cancel(request: web.Request) -> web.Response:
    return json_response(await request.app[API].cancel(request.match_info["id"], owner(request)))


def add_routes(app: web.Application) -> None:
    settings = app[SETTINGS]
    store = open_store(settings.responses_store, StoreLimits(
        ttl=settings.responses_ttl, max_record_bytes=settings.responses_max_bytes,
        max_per_owner=settings.responses_max_per_key))
    app[API] = ResponsesAPI(app[SERVICE], store)
    for prefix in ("/v1", "/v1/openai"):
        app.router.add_post(f"{prefix}/responses", create)
        app.router.add_get(f"{prefix}/responses/{{id}}", retrieve)
        app.router.add_delete(f"{prefix}/responses/{{id}}", delete)
        app.router.add_get(f"{prefix}/responses/{{id}}/input_items", input_items)
        app.router.add_post(f"{prefix}/responses/{{id}}/cancel", cancel)

    async def close_store(_app):
        await store.close()
    app.on_cleanup.append(close_store)
