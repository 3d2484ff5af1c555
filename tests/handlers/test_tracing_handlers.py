"""OpenTelemetry spans of a request, with an in-memory exporter, through the real app against
FakeDecoder: one SERVER span per request continuing the client's traceparent, its phases as
children, and the decode span's context handed to the decoder (Triton's metadata)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from frontend.http import create_app
from frontend.telemetry.logging_setup import current_request
from frontend.settings import parse_args
from tests.handlers.conftest import FakeDecoder, Harness, token_responses

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class TracedHarness(Harness):
    def __init__(self, model_dir: Path, tokenizer):
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.decoder = FakeDecoder(tokenizer)
        self.app = create_app(parse_args(["--model-dir", str(model_dir), "--log-format", "text"]), tokenizer,
                              decoder=self.decoder, tracer_provider=provider)
        self.tokenizer = tokenizer
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(self.app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def post_traced(self, path: str, body: dict):
        async def go():
            resp = await self.client.post(path, data=orjson.dumps({"model": self.model, **body}),
                                          headers={"Content-Type": "application/json", "traceparent": TRACEPARENT,
                                                   "X-Request-Id": "client-7"})
            return resp.status, await resp.read()
        return self.loop.run_until_complete(go())


@pytest.fixture
def traced(default_model_dir, default_tokenizer):
    h = TracedHarness(default_model_dir, default_tokenizer)
    yield h
    h.close()


def spans_by_name(h: TracedHarness) -> dict:
    return {s.name: s for s in h.exporter.get_finished_spans()}


@pytest.mark.parametrize("stream", [False, True])
def test_request_span_continues_traceparent_with_its_phases(traced: TracedHarness, stream):
    seen = []
    ids = traced.tokenizer.encode("Hello world")

    def script(rid, arrays):
        seen.append(current_request.get().trace_headers)
        return token_responses(ids)
    traced.decoder.script = script
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    status, raw = traced.post_traced("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Hi"}], "stream": stream,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert status == 200, raw
    spans = spans_by_name(traced)
    root = spans["POST /v1/chat/completions"]
    assert format(root.context.trace_id, "032x") == TRACE_ID               # the client's trace continues
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    for name in ("validate", "template", "guide_compile", "decode"):
        assert spans[name].parent.span_id == root.context.span_id, name
        assert spans[name].context.trace_id == root.context.trace_id
    assert spans["queue"].parent.span_id == spans["decode"].context.span_id
    assert [e.name for e in spans["decode"].events] == ["first_token"]
    attrs = root.attributes
    assert attrs["gen_ai.usage.output_tokens"] == len(ids) and attrs["gen_ai.usage.input_tokens"] > 0
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["llama_triton.client_request_id"] == "client-7"
    assert attrs["llama_triton.request_id"] == traced.decoder.requests[0][0]
    # the decoder request carries the decode span's context: Triton's spans become its children
    decode = spans["decode"].context
    assert seen == [{"traceparent": f"00-{TRACE_ID}-{decode.span_id:016x}-01"}]


def test_responses_and_tokenize_are_traced(traced: TracedHarness):
    traced.decoder.says("Hi there")
    assert traced.post_traced("/v1/responses", {"input": "Hi"})[0] == 200
    assert traced.post_traced("/tokenize", {"prompt": "Hi"})[0] == 200
    names = [s.name for s in traced.exporter.get_finished_spans()]
    assert "POST /v1/responses" in names and "POST /tokenize" in names and "decode" in names


def test_no_provider_no_spans_and_no_headers(harness: Harness):
    seen = []
    ids = harness.tokenizer.encode("Hello")

    def script(rid, arrays):
        seen.append(current_request.get().trace_headers)
        return token_responses(ids)
    harness.decoder.script = script
    assert harness.chat({})[0] == 200
    assert seen == [None]
