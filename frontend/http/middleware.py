"""The middlewares of the aiohttp application, outermost first (app.py installs them):

* `context_middleware`: one `RequestContext` per request (frontend/telemetry/logging_setup.py), the
  per-request timeout (`--request-timeout`: the handler task is cancelled, which cancels the Triton
  request and sends `stop=true`; the client gets a 504, or an error event and `data: [DONE]` on a
  stream), CORS for configured origins (`--cors-origin`), 503 while draining, the access log line, the
  per-request metrics that need the whole request (tokens, users, cancellations).
* `metrics_middleware`: requests by route and status, latency.
* `error_middleware`: every failure becomes the error envelope.
* `auth_middleware`: bearer keys; the request runs as its key's `Tenant` (frontend/tenancy/tenants.py).
  `/metrics` takes a metrics key, never a client key (`--metrics-keys-file`), or is served without
  one on `--metrics-port`.

`X-Request-Id` on every response is the client's own `X-Request-Id` when it sent one (at most 128
safe characters, logged as `client_request_id`), else the service's completion id
(`chatcmpl-...`/`cmpl-...`/`resp-...`), which is also the request id sent to Triton; requests
refused before they get one carry `req-...`. A client's id never becomes the Triton or completion id.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Optional

from aiohttp import web

from frontend import errors
from frontend.decoder import DecoderFailure, http_error
from frontend.http.app_keys import (CTX, INFLIGHT, LOAD_ONLY, METRICS, METRICS_PATH, OPEN_PATHS, QUIET_PATHS, SERVICE,
                                    SETTINGS, STATE)
from frontend.settings import Settings
from frontend.telemetry import FrontendMetrics, RequestContext, client_request_id, current_request, ttft_stamps
from frontend.tenancy import OPEN, ROUTER_KEY_ID, FairShareGate

log = logging.getLogger("frontend")
access_log = logging.getLogger("frontend.access")

CANCEL_OUTCOMES = frozenset({"timeout", "shutdown", "slow_client", "client_disconnect"})
EXPOSED_HEADERS = "X-Request-Id, Retry-After"


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
