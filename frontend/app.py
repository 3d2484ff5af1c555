"""The aiohttp application: routes, auth, the error envelope and SSE writing.

Middlewares, outermost first:

* `context_middleware`: one `RequestContext` per request (logging_setup.py), the per-request
  timeout (`--request-timeout`: the handler task is cancelled, which cancels the Triton request and
  sends `stop=true`; the client gets a 504, or an error event and `data: [DONE]` on a stream),
  CORS for configured origins (`--cors-origin`), 503 while draining, the access log line, the
  per-request metrics that need the whole request (tokens, users, cancellations).
* `metrics_middleware`: requests by route and status, latency.
* `error_middleware`: every failure becomes the error envelope.
* `auth_middleware`: bearer keys; the request runs as its key's `Tenant` (frontend/tenants.py).
  `/metrics` takes a metrics key, never a client key (`--metrics-keys-file`), or is served without
  one on `--metrics-port`.

`X-Request-Id` on every response is the client's own `X-Request-Id` when it sent one (at most 128
safe characters, logged as `client_request_id`), else the service's completion id
(`chatcmpl-...`/`cmpl-...`/`resp-...`), which is also the request id sent to Triton; requests
refused before they get one carry `req-...`. A client's id never becomes the Triton or completion id.

SIGTERM: stop accepting, let in-flight requests finish for `--shutdown-grace` seconds, then cancel
the rest (streams get an error event and `data: [DONE]`), then exit.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import orjson
from aiohttp import web

from frontend import decoder_probes, errors, logging_setup, tracing, ttft_stamps
from frontend.admission import SharedAdmission
from frontend.fair_share import FairShareGate
from frontend.decoder_health import DecoderHealth
from frontend.logging_setup import RequestContext, client_request_id, current_request, hash_user
from frontend.metrics import FrontendMetrics
from frontend.vllm_metrics import refresh_kv_cache_usage
from frontend.openapi import build_openapi
from frontend import playground
from frontend.request_models import ChatCompletionRequest, CompletionRequest, parse_request
from frontend.response_models import ModelCard, ModelList, ModelMetadata
from frontend.service import CompletionService, LegacyCompletions
from frontend.settings import Settings, parse_args
from frontend.tenants import OPEN, ROUTER_KEY_ID
from frontend.sse import DECODER_ANSWERED, SSE_DONE, EventStream
from frontend.decoder import DecoderClient, DecoderFailure, http_error
from frontend.triton_client import TritonDecoder, startup_refusal
from llama_triton import failure_file
from llama_triton.text.tokenization import Tokenizer
from llama_triton.startup_heap import freeze_startup_heap

log = logging.getLogger("frontend")
access_log = logging.getLogger("frontend.access")
SERVICE = web.AppKey("service", CompletionService)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", FrontendMetrics)
OPENAPI = web.AppKey("openapi", bytes)
INFLIGHT = web.AppKey("inflight", set)
STATE = web.AppKey("state", dict)
CTX = "llama_triton.request_context"          # key of the RequestContext in the aiohttp request
OPEN_PATHS = frozenset({"/health", "/health/live", "/openapi.json"}) | playground.PUBLIC_PATHS  # the page needs no key
METRICS_PATH = "/metrics"     # its own credential: what it shows spans every tenant
LOAD_ONLY = "llama_triton.metrics_load_only"   # request key: /metrics for the router's key
QUIET_PATHS = frozenset({"/health", "/health/live", "/metrics"})   # logged at DEBUG when they succeed
FAST_WRITE_MAX = 16 * 1024   # an event this small, into an empty buffer, cannot pause the transport
CANCEL_OUTCOMES = frozenset({"timeout", "shutdown", "slow_client", "client_disconnect"})
EXPOSED_HEADERS = "X-Request-Id, Retry-After"
ERROR_EVENT_WRITE_TIMEOUT_S = 1.0


class SlowClient(Exception):
    """A streamed write waited longer than --write-timeout on a client that does not read."""


def json_response(body, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(err: errors.APIError) -> web.Response:
    return web.Response(body=err.to_json(), status=err.status, headers=err.headers, content_type="application/json")


def cancelled_error(reason: str, settings: Settings) -> errors.APIError:
    if reason == "timeout":
        return errors.APIError(504, f"The request did not finish within the server's time limit of "
                                    f"{settings.request_timeout:g} s and was cancelled.", errors.SERVER, None,
                               "request_timeout")
    return errors.APIError(503, "The server is shutting down; retry on another instance or later.", errors.SERVER,
                           None, "shutting_down", {"Retry-After": "5"})


def take_own_cancellation(ctx: Optional[RequestContext]) -> Optional[str]:
    """The reason when the frontend itself cancelled this task (timeout, shutdown) and nothing else
    did: the cancellation is then consumed and the handler answers. None: propagate it."""
    if ctx is None or ctx.cancel_reason is None:
        return None
    task = asyncio.current_task()
    if task is None or task.uncancel() > 0:
        return None        # cancelled by someone else too (the client went away)
    ctx.outcome = ctx.cancel_reason
    return ctx.cancel_reason


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except asyncio.CancelledError:
        reason = take_own_cancellation(request.get(CTX))
        if reason is None:
            raise
        return error_response(cancelled_error(reason, request.app[SETTINGS]))
    except errors.APIError as e:
        return error_response(e)
    except DecoderFailure as e:          # raised outside a stream (capabilities, context limit)
        return error_response(http_error(e))
    except web.HTTPRequestEntityTooLarge:
        # A body without Content-Length (chunked) that grew past the limit while being read.
        return error_response(errors.payload_too_large(request.app[SETTINGS].max_body_bytes))
    except web.HTTPNotFound:
        return error_response(errors.not_found(request.path))
    except web.HTTPMethodNotAllowed:
        return error_response(errors.method_not_allowed(request.method, request.path))
    except web.HTTPException as e:
        return error_response(errors.APIError(e.status, e.reason or "error", errors.INVALID_REQUEST))
    except ConnectionResetError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(errors.APIError(500, "Internal server error.", errors.SERVER, None, "internal_error"))


def cors_origin(request: web.Request) -> Optional[str]:
    """The Access-Control-Allow-Origin value for this request, or None (CORS off or origin not allowed)."""
    allowed = request.app[SETTINGS].cors_origins
    origin = request.headers.get("Origin")
    if not allowed or not origin:
        return None
    if "*" in allowed:
        return "*"
    return origin if origin in allowed else None


def cors_preflight(request: web.Request) -> web.Response:
    origin = cors_origin(request)
    if origin is None:
        return error_response(errors.APIError(403, "CORS: this origin is not allowed.", errors.INVALID_REQUEST,
                                              None, "cors_origin_not_allowed"))
    headers = {"Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS", "Access-Control-Max-Age": "600"}
    asked = request.headers.get("Access-Control-Request-Headers")
    headers["Access-Control-Allow-Headers"] = asked if asked else "Authorization, Content-Type"
    return web.Response(status=204, headers=headers)


async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    ctx = request.get(CTX)
    if ctx is not None:
        # The client's own id when it sent one (echoed, sanitised), else the service's.
        response.headers["X-Request-Id"] = ctx.client_request_id or ctx.id
    # JSON and SSE are never to be sniffed into something a browser would run.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    origin = cors_origin(request)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if origin != "*":
            response.headers.add("Vary", "Origin")


@web.middleware
async def context_middleware(request: web.Request, handler):
    app = request.app
    settings = app[SETTINGS]
    resource = request.match_info.route.resource
    ctx = RequestContext(request.method, request.path, route=resource.canonical if resource else "unmatched")
    ctx.client_request_id = client_request_id(request.headers.get("X-Request-Id"))
    ctx.task = asyncio.current_task()
    if ttft_stamps.ENABLED:
        ctx.stamps = {"first_byte": ttft_stamps.first_byte(request), "handler": ttft_stamps.now()}
    request[CTX] = ctx
    token = current_request.set(ctx)
    inflight = app[INFLIGHT]
    inflight.add(ctx)
    timer = asyncio.get_running_loop().call_later(settings.request_timeout, ctx.cancel, "timeout")
    try:
        if (request.method == "OPTIONS" and settings.cors_origins
                and "Access-Control-Request-Method" in request.headers):
            resp = cors_preflight(request)
        elif app[STATE]["draining"] and request.path not in QUIET_PATHS:
            resp = error_response(cancelled_error("shutdown", settings))
            resp.force_close()
        else:
            resp = await handler(request)
        ctx.status = resp.status
        if ctx.outcome == "ok" and resp.status >= 400:
            ctx.outcome = "error"
        return resp
    except asyncio.CancelledError:
        ctx.status = 499
        if ctx.outcome == "ok" or ctx.outcome == "error":
            ctx.outcome = "client_disconnect"
        raise
    finally:
        ctx.done = True
        timer.cancel()
        inflight.discard(ctx)
        current_request.reset(token)
        finish_request(app[METRICS], ctx, app[SERVICE].gate)
        if ttft_stamps.ENABLED:
            ttft_stamps.write_record(app[ttft_stamps.STAMP_LOG], ctx)


def finish_request(metrics: FrontendMetrics, ctx: RequestContext, gate: FairShareGate) -> None:
    """Everything that accounts a finished request: counters, the key's token rate, the access log."""
    if ctx.prompt_tokens:
        metrics.prompt_tokens.inc(ctx.prompt_tokens)
    if ctx.completion_tokens:
        metrics.completion_tokens.inc(ctx.completion_tokens)
    metrics.count_user(ctx.user_hash)
    if ctx.tenant is not None and ctx.route != "unmatched" and ctx.path != METRICS_PATH:
        metrics.count_key(ctx.tenant.key_id, ctx.prompt_tokens, ctx.completion_tokens)
    if ctx.tenant is not None and (ctx.prompt_tokens or ctx.completion_tokens):
        gate.charge(ctx.tenant.key_id, ctx.prompt_tokens + ctx.completion_tokens)
    if ctx.outcome in CANCEL_OUTCOMES:
        metrics.cancellations.labels(ctx.outcome).inc()
    metrics.vllm.finished(ctx, time.perf_counter() - ctx.started, ctx.outcome in CANCEL_OUTCOMES)
    quiet = ctx.path in QUIET_PATHS and ctx.status == 200
    access_log.log(logging.DEBUG if quiet else logging.INFO, "%s %s %s", ctx.method, ctx.path, ctx.status,
                   extra={"fields": ctx.access_fields(), "request_id": ctx.id})


@web.middleware
async def metrics_middleware(request: web.Request, handler):
    metrics = request.app[METRICS]
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    metrics.in_flight.inc()
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = 499   # the client went away
        raise
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)


def bearer_token(request: web.Request) -> Optional[bytes]:
    """The bearer token of the Authorization header, or None. Header bytes that are not UTF-8 (a
    `\xff`) reach us as surrogate escapes: they are some token, just never a configured one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip().encode("utf-8", "surrogateescape")


def metrics_key_ok(settings: Settings, token: Optional[bytes]) -> bool:
    ok = False
    for key in settings.metrics_keys:      # every key, so the time taken does not tell which matched
        ok |= token is not None and hmac.compare_digest(token, key.encode())
    return ok


@web.middleware
async def auth_middleware(request: web.Request, handler):
    settings = request.app[SETTINGS]
    keys = settings.api_keys
    ctx = request.get(CTX)
    if not keys:
        if ctx is not None:
            ctx.tenant = OPEN
    elif request.path == METRICS_PATH:
        token = bearer_token(request)
        if not metrics_key_ok(settings, token):
            tenant = None if token is None else keys.authenticate(token)
            if tenant is None:
                raise errors.unauthorized()
            if tenant.key_id == ROUTER_KEY_ID:
                request[LOAD_ONLY] = True       # the router's polling: the load gauges alone
                return await handler(request)
            raise errors.forbidden("Client API keys may not read /metrics: it spans every tenant. Use a "
                                   "metrics key (--metrics-keys-file) or the --metrics-port listener.",
                                   "metrics_forbidden")
    elif request.path not in OPEN_PATHS:
        token = bearer_token(request)
        tenant = None if token is None else keys.authenticate(token)
        if tenant is None:
            raise errors.unauthorized()
        if ctx is not None:
            ctx.tenant = tenant
    return await handler(request)


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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    with tracing.span("validate"):
        req = parse_request(ChatCompletionRequest, body)
    if ttft_stamps.ENABLED:
        ttft_stamps.stamp("validated")
    note_request(request, req)
    result = await service.chat(req)
    if isinstance(result, dict):
        return json_result(request, result)
    return await stream_sse(request, result)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    with tracing.span("validate"):
        req = parse_request(CompletionRequest, body)
    if ttft_stamps.ENABLED:
        ttft_stamps.stamp("validated")
    note_request(request, req)
    result = await LegacyCompletions(request.app[SERVICE]).complete(req)
    if isinstance(result, dict):
        return json_result(request, result)
    return await stream_sse(request, result)


async def stream_sse(request: web.Request, stream: EventStream) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    ctx: Optional[RequestContext] = request.get(CTX)
    metrics = request.app[METRICS]
    if ctx is not None:
        ctx.request_id = stream.id
    # Hold the status line back until the decoder has answered (the role-only chunks a chat stream
    # starts with come before it): errors found up to then (queue full, decoder down, a refused
    # request) still get their own status code, 429 with Retry-After included.
    iterator = stream.chunks.__aiter__()
    pending: list[bytes] = []
    try:
        while True:
            chunk = await iterator.__anext__()
            if chunk is DECODER_ANSWERED:
                break
            pending.append(chunk)
    except StopAsyncIteration:
        pending.append(SSE_DONE)
    except BaseException:
        # Cancelled (timeout, client gone) or failed before the decoder answered: the decoder
        # request is stopped here, before the error answer leaves.
        await iterator.aclose()
        raise
    first_content = time.perf_counter()
    if ctx is not None:
        ctx.stream = True
        ctx.ttft = first_content - ctx.started
        metrics.ttft.observe(ctx.ttft)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
    except BaseException:
        await iterator.aclose()
        raise
    metrics.active_streams.inc()
    write_timeout = settings.write_timeout
    transport, protocol = request.transport, request.protocol

    async def write(data: bytes) -> None:
        # aiohttp's write() waits in drain() only while the transport has paused writing (its
        # buffer went past the high-water mark, 64 KiB): a client that stops reading holds the
        # handler here, not more memory, and past --write-timeout it is given up on. With nothing
        # buffered, one event cannot reach that mark, so the write cannot wait and needs no timer
        # (arming one per token cost several percent of the frontend's CPU).
        if (transport is not None and len(data) <= FAST_WRITE_MAX and transport.get_write_buffer_size() == 0
                and not protocol.writing_paused):
            await resp.write(data)
            return
        try:
            async with asyncio.timeout(write_timeout):
                await resp.write(data)
        except TimeoutError:
            raise SlowClient() from None

    last = first_content
    try:
        await write(b"".join(pending))
        async for data in iterator:
            now = time.perf_counter()
            metrics.itl.observe(now - last)
            last = now
            await write(data)
            if ttft_stamps.ENABLED:
                ttft_stamps.stamp("first_write")
    except errors.APIError as e:
        if ctx is not None:
            ctx.outcome, ctx.error_code = "error", e.code
        await _write_error(resp, e, stream)
    except asyncio.CancelledError:
        await iterator.aclose()          # cancels the decoder request (stream cancel + stop=true)
        reason = take_own_cancellation(ctx)
        if reason is None:
            raise                        # the client went away
        err = cancelled_error(reason, settings)
        ctx.error_code = err.code
        await _write_error(resp, err, stream)
    except SlowClient:
        await iterator.aclose()
        if ctx is not None:
            ctx.outcome = "slow_client"
        log.warning("client stopped reading for %.0f s; cancelled the request and closed the connection",
                    write_timeout)
        if request.transport is not None:
            request.transport.abort()    # drop what is buffered for it
        return resp
    except ConnectionResetError:
        await iterator.aclose()
        raise
    except Exception:
        log.exception("stream failed")
        if ctx is not None:
            ctx.outcome, ctx.error_code = "error", "internal_error"
        await _write_error(resp, errors.internal(), stream)
    finally:
        metrics.active_streams.dec()
        await iterator.aclose()
    await resp.write_eof()
    return resp


async def _write_error(resp: web.StreamResponse, err: errors.APIError, stream: EventStream) -> None:
    """The error event and `data: [DONE]` (or the stream's own error events), given at most a
    second (the client may not be reading)."""
    data = stream.error_event(err) if stream.error_event is not None else \
        errors.sse_error_event(err) + b"data: [DONE]\n\n"
    try:
        async with asyncio.timeout(ERROR_EVENT_WRITE_TIMEOUT_S):
            await resp.write(data)
    except (TimeoutError, ConnectionError):
        pass


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


def decoder_health_for(decoder: TritonDecoder, report: Optional[Callable[[str], None]]) -> DecoderHealth:
    return DecoderHealth(lambda: decoder_probes.reach(decoder), lambda: decoder_probes.work(decoder), report)


def create_app(settings: Settings, tokenizer: Tokenizer | None = None,
               decoder: DecoderClient | None = None, tracer_provider=None,
               report_decoder_failure: Optional[Callable[[str], None]] = None) -> web.Application:
    """`decoder`: Triton's (the default) or any other DecoderClient (the handler tests' fake).
    `tracer_provider`: an OpenTelemetry TracerProvider (default: OTLP to --otlp-traces-endpoint, or none).
    `report_decoder_failure`: called with the reason when Triton's decoder is broken though Triton
    calls it ready (the launcher's callback, `serve` below; none: nobody is told)."""
    app = web.Application(middlewares=[context_middleware, tracing.tracing_middleware, metrics_middleware,
                                       error_middleware, auth_middleware],
                          client_max_size=settings.max_body_bytes)
    tracing.install(app, tracer_provider or tracing.provider_for(settings.otlp_traces_endpoint))
    tokenizer = tokenizer or Tokenizer.from_dir(settings.model_dir)
    metrics = FrontendMetrics(settings.served_model_name)
    if decoder is None:
        decoder = TritonDecoder(settings.triton_grpc, metrics=metrics)
        decoder.health = decoder_health_for(decoder, report_decoder_failure)
    # The 429 gate: this replica's decoder places (shared by its workers), shared fairly by keys
    admission = (SharedAdmission(settings.admission_file, settings.admission_slot)
                 if settings.admission_file else None)
    gate = FairShareGate(admission, wait_s=settings.fair_share_wait, key_caps=settings.key_max_concurrent,
                         key_rates=settings.key_max_tokens_per_s,
                         shared=admission is not None, metrics=metrics)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[INFLIGHT] = set()
    app[STATE] = {"draining": False}
    if ttft_stamps.ENABLED:
        app[ttft_stamps.STAMP_LOG] = ttft_stamps.StampLog("frontend")
    app.on_response_prepare.append(on_response_prepare)
    # Built once; stdlib json because the seed's uint64 bounds exceed what orjson encodes.
    app[OPENAPI] = json.dumps(build_openapi(auth=bool(settings.api_keys))).encode()
    app[SERVICE] = CompletionService(settings, tokenizer, decoder, gate)
    for prefix in ("/v1", "/v1/openai"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/health/live", liveness)
    app.router.add_get(METRICS_PATH, metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)
    playground.add_routes(app)
    from frontend import operator_api                           # these import this module
    from frontend.responses import routes as responses_routes
    operator_api.add_routes(app)
    responses_routes.add_routes(app)

    async def close_decoder(_app):
        if getattr(decoder, "health", None) is not None:
            await decoder.health.stop()
        await decoder.close()
    app.on_cleanup.append(close_decoder)
    return app


async def serve(settings: Settings) -> int:
    app = create_app(settings, report_decoder_failure=failure_file.reporter(settings.decoder_failure_file))
    refusal = await startup_refusal(app[SERVICE].decoder)
    if refusal:
        log.error("refusing to serve: %s", refusal)
        await app[SERVICE].decoder.close()
        return 2
    if not settings.api_keys:
        log.warning("NO API KEYS CONFIGURED: the API is open to anyone who can reach %s:%d "
                    "(set API_KEYS or --api-keys-file)", settings.host, settings.port)
    else:
        log.info("API key auth on (%d key(s), ids %s)%s", len(settings.api_keys), ", ".join(settings.api_keys.ids()),
                 "; keys reload when the keys file changes" if settings.api_keys.keys_file else "")
    if settings.cors_origins:
        log.info("CORS on for %s", ", ".join(settings.cors_origins))
    runner = ttft_stamps.app_runner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0,
                                    keepalive_timeout=settings.keepalive_timeout)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=settings.reuse_port or None)
    await site.start()
    metrics_runner = None
    if settings.metrics_port is not None:
        metrics_runner = web.AppRunner(metrics_app(app[METRICS]), access_log=None,
                                       keepalive_timeout=settings.keepalive_timeout)
        await metrics_runner.setup()
        await web.TCPSite(metrics_runner, settings.host, settings.metrics_port,
                          reuse_port=settings.reuse_port or None).start()
        log.info("metrics (no key) on http://%s:%d/metrics", settings.host, settings.metrics_port)
    log.info("frontend listening on http://%s:%d (Triton gRPC %s)%s", settings.host, settings.port,
             settings.triton_grpc, f", worker pid {os.getpid()}" if settings.reuse_port else "")
    freeze_startup_heap()
    if settings.ready_file:
        Path(settings.ready_file).write_text(f"{os.getpid()}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await drain(app, runner, settings.shutdown_grace)
    await runner.cleanup()
    if metrics_runner is not None:
        await metrics_runner.cleanup()
    log.info("frontend stopped")
    return 0


async def drain(app: web.Application, runner: web.AppRunner, grace: float) -> None:
    """Stop accepting, give in-flight requests `grace` seconds, then cancel the rest."""
    app[STATE]["draining"] = True
    for site in list(runner.sites):
        await site.stop()               # closes the listening socket: new connections are refused
    inflight: set = app[INFLIGHT]
    log.info("shutting down: %d request(s) in flight get up to %g s to finish", len(inflight), grace)
    deadline = time.monotonic() + grace
    while inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if inflight:
        log.warning("grace period over: cancelling %d request(s)", len(inflight))
        for ctx in list(inflight):
            ctx.cancel("shutdown")
        deadline = time.monotonic() + 5.0
        while inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


def main(argv=None) -> int:
    settings = parse_args(argv)
    # A callable: keys added by a reload are redacted too.
    logging_setup.configure(settings.log_format,
                            secrets=lambda: settings.api_keys.secrets() + tuple(settings.metrics_keys))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve(settings))
