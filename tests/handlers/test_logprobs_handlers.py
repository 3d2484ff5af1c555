"""Log-probs through the real app against FakeDecoder: what is asked of the decoder, the shape of chat
`logprobs.content` and its `top_logprobs`, the same streamed or not, bytes of partial UTF-8 tokens,
the -9999 floor, return_tokens_as_token_ids, and a decoder that cannot give alternatives."""
from __future__ import annotations

import math

import numpy as np
import orjson

from frontend.decoder import DecoderCapabilities, DecoderResponse
from llama_triton.trtllm.tensor_contract import decoder_io
from tests.handlers.conftest import Harness, error_of

ALTERNATIVES = (100, 101, 102, 103, 104)


def _script(h: Harness, text: str, log_prob: float = -0.5):
    """One response per token with its log-prob and, when asked, the token itself then ids 100, 101, ...
    as alternatives (log-probs falling by 1 each), as many as num_top_log_probs asks for."""
    ids = h.tokenizer.encode(text)

    def script(rid, arrays):
        top = int(arrays["num_top_log_probs"].item()) if "num_top_log_probs" in arrays else 0
        out = []
        for i, t in enumerate(ids):
            alts = np.asarray([[t, *ALTERNATIVES[: top - 1]]], np.int32) if top else None
            lps = np.asarray([[log_prob - k for k in range(top)]], np.float32) if top else None
            out.append(DecoderResponse(0, [t], [log_prob], alts, lps, None, i == len(ids) - 1))
        return out
    h.decoder.script = script
    return ids


def _streamed_entries(events: list) -> list[dict]:
    return [e for c in events[:-1] if c.get("choices") and c["choices"][0].get("logprobs")
            for e in c["choices"][0]["logprobs"]["content"]]


def test_what_is_asked_of_the_decoder(harness: Harness):
    for fields, tensors in (({}, {}), ({"logprobs": True}, {"return_log_probs": True}),
                            ({"logprobs": True, "top_logprobs": 3}, {"return_log_probs": True, "num_top_log_probs": 3})):
        harness.decoder.says("Hi")
        status, _, body = harness.chat(fields)
        assert status == 200, body
        arrays = harness.decoder.requests[-1][1]
        sent = {k: arrays[k].item() for k in ("return_log_probs", "num_top_log_probs") if k in arrays}
        assert sent == tensors, fields


def test_without_logprobs_the_choice_says_null(harness: Harness):
    harness.decoder.says("Hello world")
    status, _, body = harness.chat({})
    assert status == 200 and body["choices"][0]["logprobs"] is None


def test_top_logprobs_shape(harness: Harness):
    ids = _script(harness, "Hello world")
    status, _, body = harness.chat({"logprobs": True, "top_logprobs": 3})
    assert status == 200, body
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == len(ids)
    for entry, t in zip(content, ids):
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(harness.tokenizer.token_bytes[t]) and entry["logprob"] == -0.5
        assert len(entry["top_logprobs"]) == 3
        assert all(set(alt) == {"token", "logprob", "bytes"} for alt in entry["top_logprobs"])
        assert entry["top_logprobs"][0]["token"] == entry["token"]              # the decoder's order: best first
        assert [alt["logprob"] for alt in entry["top_logprobs"]] == [-0.5, -1.5, -2.5]
        assert entry["top_logprobs"][1]["bytes"] == list(harness.tokenizer.token_bytes[100])


def test_logprobs_without_top_have_empty_alternatives(harness: Harness):
    _script(harness, "Hello world")
    status, _, body = harness.chat({"logprobs": True})
    assert status == 200
    assert all(e["top_logprobs"] == [] for e in body["choices"][0]["logprobs"]["content"])


def test_streamed_logprobs_are_the_non_streamed_ones(harness: Harness):
    _script(harness, "Hello world, again")
    fields = {"logprobs": True, "top_logprobs": 2}
    status, _, full = harness.chat(fields)
    status, _, events = harness.chat({**fields, "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    assert _streamed_entries(events) == full["choices"][0]["logprobs"]["content"]


def test_a_partial_utf8_token_keeps_its_own_bytes(harness: Harness):
    """An emoji the vocabulary spells as four byte tokens: no entry's text can show it, its bytes can."""
    ids = _script(harness, "Hi 🙂")
    status, _, body = harness.chat({"logprobs": True})
    assert status == 200
    content = body["choices"][0]["logprobs"]["content"]
    assert body["choices"][0]["message"]["content"] == "Hi 🙂"
    assert len(content) == len(ids)
    assert b"".join(bytes(e["bytes"]) for e in content) == " Hi 🙂".encode()   # SentencePiece's leading space
    assert bytes(content[-1]["bytes"]) == b"\x82" and content[-1]["token"] == "\ufffd"


def test_minus_infinity_is_floored_not_sent(harness: Harness):
    _script(harness, "Hello world", log_prob=-math.inf)
    status, _, body = harness.chat({"logprobs": True, "top_logprobs": 2})
    assert status == 200, body
    for entry in body["choices"][0]["logprobs"]["content"]:
        assert entry["logprob"] == -9999.0
        assert [alt["logprob"] for alt in entry["top_logprobs"]] == [-9999.0, -9999.0]


def test_return_tokens_as_token_ids_in_a_chat_stream(harness: Harness):
    ids = _script(harness, "Hello world")
    status, _, events = harness.chat({"logprobs": True, "top_logprobs": 2, "return_tokens_as_token_ids": True,
                                      "stream": True})
    assert status == 200
    entries = _streamed_entries(events)
    assert [e["token"] for e in entries] == [f"token_id:{t}" for t in ids]
    assert [[a["token"] for a in e["top_logprobs"]] for e in entries] == [[f"token_id:{t}", "token_id:100"]
                                                                           for t in ids]
    assert [bytes(e["bytes"]) for e in entries] == [harness.tokenizer.token_bytes[t] for t in ids]


def test_top_logprobs_on_a_decoder_without_alternatives_is_a_400(harness: Harness):
    """TensorRT-LLM's C++ backend declares no num_top_log_probs: refused by name, never dropped."""
    inputs, outputs = decoder_io("gpu")
    harness.decoder.caps = DecoderCapabilities(frozenset(t.name for t in inputs), frozenset(t.name for t in outputs),
                                               harness.decoder.caps.parameters)
    status, _, body = harness.chat({"logprobs": True, "top_logprobs": 2})
    assert error_of(status, body, 400, "top_logprobs")["code"] == "unsupported_parameter"
    assert harness.decoder.requests == []
    harness.decoder.says("Hi")
    status, _, body = harness.chat({"logprobs": True})                   # plain log-probs it has
    assert status == 200 and "num_top_log_probs" not in harness.decoder.requests[0][1]


def test_legacy_completions_logprobs(harness: Harness):
    ids = _script(harness, " Hello world")
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Say:", "logprobs": 2})
    assert status == 200, raw
    lp = orjson.loads(raw)["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    assert lp["token_logprobs"] == [-0.5] * len(ids)
    assert all(len(top) == 2 and max(top.values()) == -0.5 for top in lp["top_logprobs"])
    assert int(harness.decoder.requests[0][1]["num_top_log_probs"].item()) == 2
