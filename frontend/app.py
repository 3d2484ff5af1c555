"""The aiohttp application: routes, auth, the error envelope and SSE writing."""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import sys
import time

import orjson
from aiohttp import web

from frontend import errors
from frontend.metrics import FrontendMetrics
from frontend.openapi import build_openapi
from frontend.protocol import ChatCompletionRequest, CompletionRequest, parse_request
from frontend.service import CompletionService, LegacyCompletions
from frontend.settings import Settings, parse_args
from frontend.triton_client import DecoderBusy, DecoderUnavailable, TritonDecoder
from llama_triton.tokenization import Tokenizer

log = logging.getLogger("frontend")
SERVICE = web.AppKey("service", CompletionService)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", FrontendMetrics)
OPENAPI = web.AppKey("openapi", bytes)
OPEN_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})


def json_response(body, status: int = 200, headers=None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


def error_response(err: errors.APIError) -> web.Response:
    return web.Response(body=err.to_json(), status=err.status, headers=err.headers, content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except errors.APIError as e:
        return error_response(e)
    except DecoderUnavailable as e:
        return error_response(errors.APIError(503, f"The model is not available right now: {e}", errors.SERVER,
                                              None, "model_not_ready", {"Retry-After": "2"}))
    except DecoderBusy as e:
        return error_response(errors.APIError(429, f"The server is busy: {e}", errors.RATE_LIMIT, None,
                                              "queue_full", {"Retry-After": "1"}))
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(errors.APIError(413, f"Request body too large (limit {e.max_size} bytes).",
                                              errors.INVALID_REQUEST, None, "payload_too_large"))
    except web.HTTPNotFound:
        return error_response(errors.not_found(request.path))
    except web.HTTPMethodNotAllowed:
        return error_response(errors.method_not_allowed(request.method, request.path))
    except web.HTTPException as e:
        return error_response(errors.APIError(e.status, e.reason or "error", errors.INVALID_REQUEST))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(errors.APIError(500, "Internal server error.", errors.SERVER, None, "internal_error"))


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
        metrics.cancellations.labels("client_disconnect").inc()
        raise
    finally:
        metrics.in_flight.dec()
        metrics.requests.labels(route, str(status)).inc()
        metrics.request_seconds.labels(route).observe(time.perf_counter() - t0)


@web.middleware
async def auth_middleware(request: web.Request, handler):
    keys = request.app[SETTINGS].api_keys
    if keys and request.path not in OPEN_PATHS:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip().encode()
        # Compare against every key so the time taken does not reveal which one matched.
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(token, key.encode())
        if scheme.lower() != "bearer" or not ok:
            raise errors.unauthorized()
    return await handler(request)


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        # Refuse before reading: the body may be huge.
        raise errors.APIError(413, f"Request body too large: {length} bytes (limit {limit}).",
                              errors.INVALID_REQUEST, None, "payload_too_large")
    body = await request.read()
    if not body:
        raise errors.bad_request("The request body is empty; send a JSON object.")
    return body


async def chat_completions(request: web.Request) -> web.StreamResponse:
    service = request.app[SERVICE]
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    req = parse_request(ChatCompletionRequest, body)
    result = await service.chat(req)
    if isinstance(result, dict):
        return json_response(result)
    return await stream_sse(request, result)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    req = parse_request(CompletionRequest, body)
    result = await LegacyCompletions(request.app[SERVICE]).complete(req)
    if isinstance(result, dict):
        return json_response(result)
    return await stream_sse(request, result)


async def stream_sse(request: web.Request, chunks) -> web.StreamResponse:
    # Pull the first chunk before committing to a 200: errors found up to then (queue full,
    # decoder down) still get their own status code.
    iterator = chunks.__aiter__()
    try:
        first = await iterator.__anext__()
    except StopAsyncIteration:
        first = b"data: [DONE]\n\n"
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    metrics = request.app[METRICS]
    metrics.active_streams.inc()
    t0 = time.perf_counter()
    last = None
    try:
        await resp.write(first)
        async for data in iterator:
            now = time.perf_counter()
            if last is None:
                metrics.ttft.observe(now - t0)   # the first chunk after the role-only one
            else:
                metrics.itl.observe(now - last)
            last = now
            await resp.write(data)
    except errors.APIError as e:
        await resp.write(errors.sse_error_event(e))
        await resp.write(b"data: [DONE]\n\n")
    except (asyncio.CancelledError, ConnectionResetError):
        await iterator.aclose()
        raise
    except Exception:
        log.exception("stream failed")
        await resp.write(errors.sse_error_event(errors.APIError(500, "Internal server error.", errors.SERVER,
                                                                None, "internal_error")))
        await resp.write(b"data: [DONE]\n\n")
    finally:
        metrics.active_streams.dec()
        await iterator.aclose()
    await resp.write_eof()
    return resp


async def list_models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return json_response({"object": "list", "data": [
        {"id": service.settings.served_model_name, "object": "model", "created": service.created,
         "owned_by": "llama-triton", "context_length": await _context_or_none(service)}]})


async def _context_or_none(service: CompletionService):
    try:
        return await service.context_limit()
    except Exception:
        return None


async def health(request: web.Request) -> web.Response:
    ready = await request.app[SERVICE].decoder.is_ready()
    if ready:
        return json_response({"status": "ok"})
    return json_response({"status": "not ready"}, status=503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    return web.Response(body=m.render(), headers={"Content-Type": m.content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


def create_app(settings: Settings, tokenizer: Tokenizer | None = None) -> web.Application:
    app = web.Application(middlewares=[metrics_middleware, error_middleware, auth_middleware],
                          client_max_size=settings.max_body_bytes)
    tokenizer = tokenizer or Tokenizer.from_dir(settings.model_dir)
    decoder = TritonDecoder(settings.triton_grpc)
    app[SETTINGS] = settings
    app[METRICS] = FrontendMetrics()
    # Built once; stdlib json because the seed's uint64 bounds exceed what orjson encodes.
    app[OPENAPI] = json.dumps(build_openapi(auth=bool(settings.api_keys))).encode()
    app[SERVICE] = CompletionService(settings, tokenizer, decoder)
    for prefix in ("/v1", "/v1/openai"):
        app.router.add_post(f"{prefix}/chat/completions", chat_completions)
        app.router.add_post(f"{prefix}/completions", completions)
        app.router.add_get(f"{prefix}/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.json", openapi)

    async def close_decoder(_app):
        await decoder.close()
    app.on_cleanup.append(close_decoder)
    return app


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    if not settings.api_keys:
        log.warning("NO API KEYS CONFIGURED: the API is open to anyone who can reach %s:%d "
                    "(set API_KEYS or --api-keys-file)", settings.host, settings.port)
    else:
        log.info("API key auth on (%d key(s))", len(settings.api_keys))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, shutdown_timeout=settings.shutdown_grace)
    await site.start()
    log.info("frontend listening on http://%s:%d (Triton gRPC %s)", settings.host, settings.port, settings.triton_grpc)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining in-flight requests (up to %.0f s)", settings.shutdown_grace)
    await runner.cleanup()


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(settings))
    return 0
