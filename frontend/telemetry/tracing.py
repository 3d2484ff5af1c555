"""OpenTelemetry traces of the frontend: one span per request, child spans for its phases.

Off unless `--otlp-traces-endpoint` is set (then spans go over OTLP/HTTP, batched) or a test hands
`create_app` a tracer provider (an in-memory exporter). When off, every helper here is a no-op
that costs a context-variable read.

Per request (`tracing_middleware`): a SERVER span named `<METHOD> <route>`, continuing the
client's `traceparent` when it sends one, with the request ids, token counts, cached tokens and
finish reasons as attributes. Children: `validate` (the body against the request model),
`template` (chat template and tokenization), `guide_compile` (an xgrammar guide for tools or
response_format), `decode` (the decoder request, from sending it to its last output; event
`first_token`), and under it `queue` (sent, no output yet).

Triton joins the trace: the `decode` span's context goes to Triton as the gRPC metadata
`traceparent` of the request's stream. Triton (OpenTelemetry trace mode, which the launcher turns
on with the same endpoint) reads it in its stream handler (`GrpcServerCarrier` over the call's
client metadata, src/grpc/infer_handler.h:1519 and stream_infer_handler.cc:328 at v2.51.0,
e0f0734), extracts it with the W3C propagator it installs (src/tracer.cc:459-462) and, since the
context is valid, samples the request whatever its rate (`force_sample`, src/tracer.cc:295-320):
its `InferRequest`, model and compute spans carry our trace id. Not always: Triton reads that
metadata value past its end (docs/OPERATIONS.md, "Tracing"), and a request whose context it
therefore refuses has no Triton spans.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Optional

from aiohttp import web

log = logging.getLogger("frontend.tracing")

TRACER = web.AppKey("tracer", object)
SERVICE_NAME = "llama-triton-frontend"


def provider_for(endpoint: Optional[str]):
    """A TracerProvider exporting to `endpoint` over OTLP/HTTP, or None (tracing off)."""
    if not endpoint:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def install(app: web.Application, provider) -> None:
    """Traces on for this app (the provider's owner), flushed and shut down with it."""
    if provider is None:
        return
    app[TRACER] = provider.get_tracer("llama-triton")

    async def shutdown(_app):
        provider.shutdown()
    app.on_cleanup.append(shutdown)


def _tracer():
    from frontend.telemetry.logging_setup import current_request
    ctx = current_request.get()
    return getattr(ctx, "tracer", None) if ctx is not None else None


def span(name: str, **attributes):
    """A child span of the current one while tracing is on, else a no-op context manager."""
    tracer = _tracer()
    if tracer is None:
        return contextlib.nullcontext()
    return tracer.start_as_current_span(name, attributes=attributes or None)


def start_span(name: str, parent=None):
    """A span the caller ends itself, child of `parent` (default: the current span), or None when
    tracing is off. Not made current: it may outlive the async generator step that started it."""
    tracer = _tracer()
    if tracer is None:
        return None
    if parent is None:
        return tracer.start_span(name)
    from opentelemetry import trace
    return tracer.start_span(name, context=trace.set_span_in_context(parent))


def event(name: str) -> None:
    if _tracer() is None:
        return
    from opentelemetry import trace
    trace.get_current_span().add_event(name)


def grpc_headers(parent=None) -> Optional[dict[str, str]]:
    """The W3C `traceparent` (and `tracestate`) of `parent` (default: the current span) for
    Triton, or None when tracing is off."""
    if _tracer() is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    carrier: dict[str, str] = {}
    context = trace.set_span_in_context(parent) if parent is not None else None
    TraceContextTextMapPropagator().inject(carrier, context=context)
    return carrier or None


@web.middleware
async def tracing_middleware(request: web.Request, handler):
    tracer = request.app.get(TRACER)
    if tracer is None:
        return await handler(request)
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    from frontend.telemetry.logging_setup import current_request
    ctx = current_request.get()
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    parent = TraceContextTextMapPropagator().extract({k.lower(): v for k, v in request.headers.items()})
    with tracer.start_as_current_span(f"{request.method} {route}", context=parent, kind=trace.SpanKind.SERVER,
                                      attributes={"http.request.method": request.method, "http.route": route},
                                      record_exception=False, set_status_on_exception=False) as root:
        if ctx is not None:
            ctx.tracer = tracer
            if ctx.client_request_id:
                root.set_attribute("llama_triton.client_request_id", ctx.client_request_id)
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except asyncio.CancelledError:
            status = 499        # the client went away
            raise
        finally:
            root.set_attribute("http.response.status_code", status)
            if ctx is not None:
                _finish(root, ctx)


def _finish(root, ctx) -> None:
    if ctx.request_id:
        root.set_attribute("llama_triton.request_id", ctx.request_id)
    if ctx.triton_request_id is None:
        return
    root.set_attribute("gen_ai.usage.input_tokens", ctx.prompt_tokens)
    root.set_attribute("gen_ai.usage.output_tokens", ctx.completion_tokens)
    root.set_attribute("llama_triton.cached_tokens", ctx.cached_tokens)
    if ctx.finish_reasons:
        root.set_attribute("gen_ai.response.finish_reasons", [str(r) for r in ctx.finish_reasons])
    root.set_attribute("llama_triton.outcome", ctx.outcome)
