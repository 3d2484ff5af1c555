"""The aiohttp application: its wiring (middlewares.py, routes.py, sse_writer.py, the operator and
Responses routes), start-up, and the drain on SIGTERM.

SIGTERM: stop accepting, let in-flight requests finish for `--shutdown-grace` seconds, then cancel
the rest (streams get an error event and `data: [DONE]`), then exit.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Callable, Optional

from aiohttp import web

from frontend.decoder import DecoderClient, DecoderHealth, TritonDecoder, probed_health, startup_refusal
from frontend.http import operator_api, playground, responses_routes, routes
from frontend.http.app_keys import INFLIGHT, METRICS, OPENAPI, SERVICE, SETTINGS, STATE
from frontend.http.middleware import (auth_middleware, context_middleware, error_middleware, metrics_middleware,
                                      on_response_prepare)
from frontend.http.openapi import build_openapi
from frontend.http.routes import metrics_app
from frontend.openai import CompletionService
from frontend.settings import Settings, parse_args
from frontend.telemetry import FrontendMetrics, configure_logging, tracing, ttft_stamps
from frontend.tenancy import FairShareGate, SharedAdmission
from llama_triton import failure_file
from llama_triton.startup_heap import freeze_startup_heap
from llama_triton.text.tokenization import Tokenizer

log = logging.getLogger("frontend")


def decoder_health_for(decoder: TritonDecoder, report: Optional[Callable[[str], None]]) -> DecoderHealth:
    return probed_health(decoder, report)


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
    routes.add_routes(app)
    playground.add_routes(app)
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
    configure_logging(settings.log_format,
                      secrets=lambda: settings.api_keys.secrets() + tuple(settings.metrics_keys))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(serve(settings))
