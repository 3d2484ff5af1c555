"""Completions logprobs (issue 24, finding 15): streamed text_offset runs on across chunks and
after an echoed prompt, as in the non-streamed response; return_tokens_as_token_ids names tokens
"token_id:N" in logprobs and top logprobs, for completions and chat, as vLLM does."""
from __future__ import annotations

import numpy as np
import orjson

from frontend.decoder.interface import DecoderResponse
from tests.handlers.conftest import Harness, sse_events

TEXT = " Hello world, again"
PROMPT = "Say it:"


def _script(harness: Harness):
    """One response per token, each with its log-prob and as many alternatives as the request asks
    for (num_top_log_probs: the token itself, then ids 100, 101, ...), as the decoder sends them."""
    ids = harness.tokenizer.encode(TEXT)

    def script(rid, arrays):
        top = int(arrays["num_top_log_probs"].item()) if "num_top_log_probs" in arrays else 0
        out = []
        for i, t in enumerate(ids):
            alts = np.array([[t] + list(range(100, 100 + top - 1))], np.int32) if top else None
            lps = np.array([[-0.25] + [-2.0] * (top - 1)], np.float32) if top else None
            out.append(DecoderResponse(0, [t], [-0.25], alts, lps, None, i == len(ids) - 1))
        return out
    harness.decoder.script = script
    return ids


def _complete(harness: Harness, **body):
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": PROMPT, **body})
    assert status == 200, raw
    return sse_events(raw) if body.get("stream") else orjson.loads(raw)


def test_streamed_text_offset_runs_on_across_chunks_and_after_the_echo(harness: Harness):
    ids = _script(harness)
    whole = _complete(harness, logprobs=1, echo=True, max_tokens=20)["choices"][0]
    offsets = whole["logprobs"]["text_offset"]
    pieces = [harness.tokenizer.token_bytes[t].decode() for t in ids]
    assert whole["text"] == PROMPT + TEXT
    assert offsets[0] == len(PROMPT)                     # after the echoed prompt
    streamed = []
    for ev in _complete(harness, logprobs=1, echo=True, max_tokens=20, stream=True)[:-1]:
        for c in ev["choices"]:
            if c["logprobs"]:
                streamed += c["logprobs"]["text_offset"]
    assert streamed == offsets                           # every chunk continues where the last ended
    assert streamed == sorted(streamed) and len(streamed) == len(ids)
    # Each offset is the previous one plus that token's text.
    assert [b - a for a, b in zip(offsets, offsets[1:])] == [len(p) for p in pieces[:-1]]
    # Without echo the first token is at 0.
    plain = _complete(harness, logprobs=1, max_tokens=20)["choices"][0]["logprobs"]["text_offset"]
    assert plain == [o - len(PROMPT) for o in offsets]


def test_return_tokens_as_token_ids_in_completions(harness: Harness):
    ids = _script(harness)
    lp = _complete(harness, logprobs=2, max_tokens=20, return_tokens_as_token_ids=True)["choices"][0]["logprobs"]
    assert lp["tokens"] == [f"token_id:{t}" for t in ids]
    assert all(set(top) == {f"token_id:{t}", "token_id:100"} for top, t in zip(lp["top_logprobs"], ids))
    streamed = [tok for ev in _complete(harness, logprobs=2, max_tokens=20, stream=True,
                                        return_tokens_as_token_ids=True)[:-1]
                for c in ev["choices"] if c["logprobs"] for tok in c["logprobs"]["tokens"]]
    assert streamed == lp["tokens"]


def test_return_tokens_as_token_ids_in_chat(harness: Harness):
    ids = _script(harness)
    status, _, body = harness.chat({"logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True})
    assert status == 200, body
    content = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == [f"token_id:{t}" for t in ids]
    assert [[a["token"] for a in e["top_logprobs"]] for e in content] == [[f"token_id:{t}", "token_id:100"] for t in ids]
    # bytes stay the token's own.
    assert [bytes(e["bytes"]) for e in content] == [harness.tokenizer.token_bytes[t] for t in ids]
    status, _, body = harness.chat({"logprobs": True})
    assert body["choices"][0]["logprobs"]["content"][1]["token"] == harness.tokenizer.token_bytes[ids[1]].decode()
