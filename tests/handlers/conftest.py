"""The handler layer: the real aiohttp app, service and generation logic against a scripted decoder.

No Triton, no engine: `FakeDecoder` implements frontend/decoder/interface.py's `DecoderClient` and answers
each request with what the test scripted, so these tests pin the OpenAI semantics (stop strings, n,
tools, reasoning, usage, logprobs, error statuses) in seconds. The end-to-end tests in
tests/integration/ keep checking the same paths against the real stack.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from frontend.http import SETTINGS, create_app
from frontend.decoder.interface import DecoderCapabilities, DecoderResponse
from frontend.telemetry.logging_setup import current_request
from frontend.settings import parse_args
from llama_triton.trtllm.tensor_contract import decoder_io

CPU_INPUTS, CPU_OUTPUTS = decoder_io("cpu")

# A script step: a response, an exception to raise, or HANG (the decoder goes silent).
Step = Union[DecoderResponse, BaseException]
HANG = object()


def token_responses(token_ids: list[int], index: int = 0, final: bool = True,
                    log_probs: Optional[list[float]] = None, reused: Optional[int] = None) -> list[DecoderResponse]:
    """One streamed response per token, as the decoder sends them; the last one final if `final`."""
    out = []
    for i, t in enumerate(token_ids):
        out.append(DecoderResponse(index, [t], None if log_probs is None else [log_probs[i]], None, None,
                                   reused if i == 0 else None, final and i == len(token_ids) - 1))
    return out


class FakeDecoder:
    """A `DecoderClient` that plays a script per request and records what it was sent."""

    def __init__(self, tokenizer, *, max_seq_len: int = 512):
        self.tokenizer = tokenizer
        self.caps = DecoderCapabilities(frozenset(t.name for t in CPU_INPUTS), frozenset(t.name for t in CPU_OUTPUTS),
                                        {"max_seq_len": str(max_seq_len)})
        self.script: Callable[[str, dict], Iterable[Step]] = lambda rid, arrays: []
        self.capabilities_error: Optional[BaseException] = None
        self.requests: list[tuple[str, dict]] = []
        self.closed_early: list[str] = []     # request ids whose stream the frontend left before the end
        # request id -> whether its stop went out while the request was still being handled
        self.stopped: dict[str, bool] = {}
        self.stop_seen = asyncio.Event()

    def says(self, *texts: str, **kw) -> None:
        """Every request is answered with these texts, one per choice (sequence index)."""
        def script(rid, arrays):
            steps = []
            for i, text in enumerate(texts):
                ids = self.tokenizer.encode(text)
                steps += token_responses(ids, i, final=False, **kw)
            steps[-1].is_final = True
            return steps
        self.script = script

    async def capabilities(self) -> DecoderCapabilities:
        if self.capabilities_error is not None:
            raise self.capabilities_error
        return self.caps

    async def generate(self, request_id: str, arrays: dict):
        self.requests.append((request_id, arrays))
        steps = list(self.script(request_id, arrays))
        done = False
        # The request context's bookkeeping, as TritonDecoder.generate keeps it (ids, token counts)
        ctx = current_request.get()
        if ctx is not None:
            ctx.triton_request_id = request_id
            ctx.prompt_tokens += int(arrays["input_lengths"].sum())
        try:
            for step in steps:
                if step is HANG:
                    await asyncio.Event().wait()
                if isinstance(step, BaseException):
                    raise step
                if ctx is not None:
                    ctx.completion_tokens += len(step.token_ids)
                yield step
                await asyncio.sleep(0)
            done = True
        finally:
            if not done:
                self.closed_early.append(request_id)
                # As TritonDecoder: a request left early is stopped by a round trip to the decoder
                # (stop=true), awaited here. Recorded: whether the request was still being handled
                # when it went out (the frontend's aclose() must wait for it).
                await asyncio.sleep(0)
                ctx = current_request.get()
                self.stopped[request_id] = ctx is not None and not ctx.done
                self.stop_seen.set()

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class Harness:
    def __init__(self, model_dir: Path, tokenizer, *args: str):
        self.decoder = FakeDecoder(tokenizer)
        self.app = create_app(parse_args(["--model-dir", str(model_dir), "--log-format", "text", *args]), tokenizer,
                              decoder=self.decoder)
        self.tokenizer = tokenizer
        self.loop = asyncio.new_event_loop()     # an aiohttp app lives on one loop
        self.client = TestClient(TestServer(self.app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request through the real aiohttp app."""
        async def go():
            resp = await self.client.post(path, data=orjson.dumps(body), headers={"Content-Type": "application/json"})
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
        return self.loop.run_until_complete(go())

    def chat(self, body: dict[str, Any]) -> tuple[int, dict, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], **body}
        status, headers, raw = self.post("/v1/chat/completions", body)
        return status, headers, (sse_events(raw) if body.get("stream") and status == 200 else orjson.loads(raw))

    @property
    def model(self) -> str:
        return self.app[SETTINGS].served_model_name


def sse_events(raw: bytes) -> list:
    """The `data:` payloads of an SSE body: dicts, and the string "[DONE]"."""
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            payload = block[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


@pytest.fixture
def harness(default_model_dir: Path, default_tokenizer):
    h = Harness(default_model_dir, default_tokenizer)
    yield h
    h.close()
