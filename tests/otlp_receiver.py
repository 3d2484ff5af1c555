"""A local OTLP/HTTP trace receiver for the tracing tests: it accepts what OpenTelemetry's
exporters POST to /v1/traces (protobuf, or OTLP/JSON) and keeps every span as a plain record."""
from __future__ import annotations

import asyncio
import base64
import json
import threading
from dataclasses import dataclass
from typing import Optional

from aiohttp import web

from llama_triton.serve.common import free_port


@dataclass(frozen=True)
class SpanRecord:
    service: str
    name: str
    trace_id: str           # 32 hex digits
    span_id: str            # 16 hex digits
    parent_id: str          # "" for a root span


def _hex(value: str) -> str:
    """OTLP/JSON ids are hex (the spec) or base64 (protobuf's JSON mapping); either -> hex."""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    return base64.b64decode(value).hex() if value else ""


def _from_protobuf(body: bytes) -> list[SpanRecord]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out = []
    for rs in req.resource_spans:
        service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(SpanRecord(service, s.name, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex()))
    return out


def _from_json(body: bytes) -> list[SpanRecord]:
    out = []
    for rs in json.loads(body).get("resourceSpans", []):
        attrs = rs.get("resource", {}).get("attributes", [])
        service = next((a["value"].get("stringValue", "") for a in attrs if a.get("key") == "service.name"), "")
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                out.append(SpanRecord(service, s["name"], _hex(s["traceId"]), _hex(s["spanId"]),
                                      _hex(s.get("parentSpanId", ""))))
    return out


class OTLPReceiver:
    def __init__(self):
        self.port = free_port()
        self.spans: list[SpanRecord] = []
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if "json" in request.headers.get("Content-Type", ""):
            spans = _from_json(body)
        else:
            spans = _from_protobuf(body)
        with self._lock:
            self.spans += spans
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def _run(self):
        self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self._handle)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def start(self) -> "OTLPReceiver":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def all_spans(self) -> list[SpanRecord]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[SpanRecord]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]
