"""One request lifecycle (issue 24, finding 8): closing a response's generator closes every
generator under it, so the decoder's stop request has gone out when aclose() returns, inside the
request, not later in a finaliser task after the request has ended."""
from __future__ import annotations

import asyncio
import re
import socket

import orjson

from frontend.http import SERVICE
from frontend.telemetry.logging_setup import RequestContext, current_request
from frontend.openai.request_models import ChatCompletionRequest, CompletionRequest
from frontend.openai.request_base import parse_request
from frontend.openai.legacy_completions import LegacyCompletions
from frontend.openai.sse import DECODER_ANSWERED
from tests.handlers.conftest import HANG, Harness, token_responses


def _first_chunks(harness: Harness, make_stream, *, after_answer: int) -> list:
    """Reads a stream up to `after_answer` chunks past the decoder's first answer, then closes it,
    all inside one request context (as app.py's handler does)."""
    async def go():
        current_request.set(RequestContext("POST", "/v1/test"))
        stream = await make_stream()
        it = stream.chunks
        seen = []
        async for chunk in it:
            seen.append(chunk)
            if chunk is DECODER_ANSWERED:
                break
        for _ in range(after_answer):
            seen.append(await it.__anext__())
        await it.aclose()
        # Nothing has run on the loop since aclose() returned: what the decoder recorded by now,
        # it recorded inside aclose().
        return stream.id, dict(harness.decoder.stopped)
    return harness.loop.run_until_complete(go())


def _script_long_then_hang(harness: Harness):
    ids = harness.tokenizer.encode("one two three four five six")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, final=False) + [HANG]


def test_closing_a_chat_stream_stops_the_decoder_before_aclose_returns(harness: Harness):
    _script_long_then_hang(harness)
    service = harness.app[SERVICE]
    req = parse_request(ChatCompletionRequest, {"model": harness.model, "stream": True,
                                                "messages": [{"role": "user", "content": "Hi"}]})
    rid, stopped = _first_chunks(harness, lambda: service.chat(req), after_answer=2)
    assert stopped == {rid: True}


def test_closing_a_completions_stream_stops_the_decoder_before_aclose_returns(harness: Harness):
    _script_long_then_hang(harness)
    req = parse_request(CompletionRequest, {"model": harness.model, "stream": True, "prompt": "Hi", "echo": True})
    rid, stopped = _first_chunks(harness, lambda: LegacyCompletions(harness.app[SERVICE]).complete(req),
                                 after_answer=2)
    assert stopped == {rid: True}


def test_a_client_that_stops_reading_is_given_up_and_its_decoder_request_stopped_within_the_request(
        default_model_dir, default_tokenizer):
    """Through HTTP: the stream's writes block on a client that reads nothing past the headers (its
    receive buffer shrunk to a few KiB, so that a few MB fill every buffer on the way); past
    --write-timeout the frontend gives up, closing the generators from outside, at a yield, and the
    decoder's stop goes out while the request is still being handled."""
    # Room for the whole script (4000 x 400 words of at most two tokens): the decoder would end the
    # request at request_output_len (FakeDecoder R2), and the stream must not end before it stalls.
    h = Harness(default_model_dir, default_tokenizer, "--write-timeout", "0.2", "--max-tokens-cap", "4000000")
    try:
        h.decoder.caps.parameters["max_seq_len"] = "8000000"       # room for ~10 MB of stream
        word = default_tokenizer.encode(" hello")
        h.decoder.script = lambda rid, arrays: [_many(word, 400) for _ in range(4000)] + [HANG]

        async def go():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", h.client.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            body = orjson.dumps({"model": h.model, "stream": True, "messages": [{"role": "user", "content": "Hi"}]})
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await reader.readuntil(b"\r\n\r\n")          # then never read again
            assert head.startswith(b"HTTP/1.1 200")
            rid = next(line.split(b": ", 1)[1].decode() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"x-request-id:"))
            while rid not in h.decoder.stopped:
                await h.decoder.stop_seen.wait()
                h.decoder.stop_seen.clear()
            writer.close()
            return rid
        rid = h.loop.run_until_complete(asyncio.wait_for(go(), 120))
        assert h.decoder.stopped[rid] is True
    finally:
        h.close()


def _many(ids, k):
    from frontend.decoder.interface import DecoderResponse
    return DecoderResponse(0, list(ids) * k, None, None, None, None, False)


def _counted(harness: Harness) -> tuple[float, float]:
    """(prompt, completion) tokens as /metrics counts them."""
    async def go():
        resp = await harness.client.get("/metrics")
        return await resp.text()
    text = harness.loop.run_until_complete(go())
    def value(name):
        m = re.search(rf"^{name}_total (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0
    return value("llama_triton_prompt_tokens"), value("llama_triton_completion_tokens")


def test_token_counts_in_metrics_are_the_usage_figures(harness: Harness):
    """Finding 12: the metrics and the access log counted tokens as the transport received them,
    `usage` as the choices took them. With n = 2 and a stop string that ends choice 0 early, the
    decoder keeps sending choice 0's tokens until the request ends: usage does not count them, and
    neither may the metrics."""
    first = harness.tokenizer.encode("Yes. And then a long tail that usage never sees")
    second = harness.tokenizer.encode("No")
    harness.decoder.script = lambda rid, arrays: (token_responses(first, 0, final=False)
                                                  + token_responses(second, 1, final=True))
    before = _counted(harness)
    status, _, body = harness.chat({"n": 2, "stop": ["."], "temperature": 1.0})
    assert status == 200, body
    after = _counted(harness)
    usage = body["usage"]
    assert (after[0] - before[0], after[1] - before[1]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert usage["completion_tokens"] < len(first) + len(second)
