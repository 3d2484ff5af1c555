"""The handlers of the OpenAI routes (chat, completions, models) and of health, metrics and the
OpenAPI document, with the body reading and JSON answers the other route modules share."""
from __future__ import annotations

import orjson
from aiohttp import web

from frontend import errors
from frontend.http.app_keys import CTX, LOAD_ONLY, METRICS, METRICS_PATH, OPENAPI, SERVICE, SETTINGS, STATE
from frontend.http.sse_writer import stream_sse
from frontend.openai import (ChatCompletionRequest, CompletionRequest, CompletionService, LegacyCompletions, ModelCard,
                             ModelList, ModelMetadata, parse_request)
from frontend.telemetry import FrontendMetrics, hash_user, refresh_kv_cache_usage, tracing, ttft_stamps


def json_response(body, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        # Refuse before reading: the body may be huge.
        raise errors.APIError(413, f"Request body too large: {length} bytes (limit {limit}).",
                              errors.INVALID_REQUEST, None, "payload_too_large")
    body = await request.read()
    if ttft_stamps.ENABLED:
        ttft_stamps.body_read(request)
    if not body:
        raise errors.bad_request("The request body is empty; send a JSON object.")
    return body


def note_request(request: web.Request, req) -> None:
    ctx = request.get(CTX)
    if ctx is not None:
        ctx.user_hash = hash_user(getattr(req, "user", None), request.app[SETTINGS].hash_secret)
        ctx.stream = bool(getattr(req, "stream", False))


def json_result(request: web.Request, result: dict) -> web.Response:
    ctx = request.get(CTX)
    if ctx is not None and isinstance(result.get("id"), str):
        ctx.request_id = result["id"]
    return json_response(result)


async def _validated(request: web.Request, model):
    """The body read and parsed into `model` (the `validate` span, the TTFT stamp, the request's note)."""
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    with tracing.span("validate"):
        req = parse_request(model, body)
    if ttft_stamps.ENABLED:
        ttft_stamps.stamp("validated")
    note_request(request, req)
    return req


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await _validated(request, ChatCompletionRequest)
    result = await request.app[SERVICE].chat(req)
    if isinstance(result, dict):
        return json_result(request, result)
    return await stream_sse(request, result)


async def completions(request: web.Request) -> web.StreamResponse:
    req = await _validated(request, CompletionRequest)
    result = await LegacyCompletions(request.app[SERVICE]).complete(req)
    if isinstance(result, dict):
        return json_result(request, result)
    return await stream_sse(request, result)


async def list_models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    name = service.settings.served_model_name
    context = await _context_or_none(service)
    metadata = None if context is None else ModelMetadata(
        context_length=context, max_tokens=min(context, service.settings.max_tokens_cap))
    card = ModelCard(id=name, created=service.created, owned_by="llama-triton", root=name, max_model_len=context,
                     metadata=metadata)
    return json_response(ModelList(data=[card]).model_dump(mode="json"))


async def _context_or_none(service: CompletionService):
    try:
        return await service.context_limit()
    except Exception:
        return None


async def health(request: web.Request) -> web.Response:
    if request.app[STATE]["draining"]:
        return json_response({"status": "shutting down"}, status=503)
    ready = await request.app[SERVICE].decoder.is_ready()
    if ready:
        return json_response({"status": "ok"})
    return json_response({"status": "not ready"}, status=503)


async def liveness(request: web.Request) -> web.Response:
    """Liveness (docs/OPERATIONS.md): 200 while this replica can still heal itself. The event loop
    answers, and the decoder is up, or down for less than --liveness-timeout (the launcher is
    restarting it). Draining is alive too: a restart must not cut the grace period short."""
    health = getattr(request.app[SERVICE].decoder, "health", None)   # None: no tracking (e.g. a fake)
    down = health.down_for() if health is not None else 0.0
    limit = request.app[SETTINGS].liveness_timeout
    if down > limit:
        return json_response({"status": "dead", "decoder_down_s": round(down, 1),
                              "reason": health.down_reason}, status=503)
    return json_response({"status": "alive", "decoder_down_s": round(down, 1)})


async def metrics_endpoint(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    await refresh_kv_cache_usage(m, request.app[SETTINGS].triton_metrics, request.app[SERVICE].decoder)
    body = m.render_load() if request.get(LOAD_ONLY) else m.render()
    return web.Response(body=body, headers={"Content-Type": m.content_type})


def metrics_app(metrics: FrontendMetrics) -> web.Application:
    """The --metrics-port listener: /metrics and nothing else, without a key (firewall the port)."""
    async def endpoint(_request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type,
                                                            "X-Content-Type-Options": "nosniff"})
    app = web.Application()
    app.router.add_get(METRICS_PATH, endpoint)
    return app


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def add_routes(app: web.Application) -> None:
    for prefix in ("/v1", "/v1/openai"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", liveness)
    app.router.add_get(METRICS_PATH, metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
