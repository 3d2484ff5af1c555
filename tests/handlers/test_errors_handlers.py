"""Errors through the real app against FakeDecoder: a 400 naming each bad field, the one envelope for
every status, the decoder's failures mapped to 429/503/400/500 before and after a stream started,
and fields a decoder cannot honour refused by name. Moved here from tests/integration/test_conformance.py
(where they ran once per decoder mode, though the decoder never sees them): bad bodies, the stop
count edge, the OpenAPI document, a prompt past the context; their features keep end-to-end tests in
tests/integration/test_bad_input.py (malformed bodies, the stop limits, context_length_exceeded)
and test_fuzz.py (the OpenAPI document drives it)."""
from __future__ import annotations

import orjson
import pytest

from frontend.decoder import DecoderBusy, DecoderCapabilities, DecoderError, DecoderUnavailable
from llama_triton.trtllm.tensor_contract import decoder_io
from tests.handlers.conftest import ANY_PARAM, Harness, error_of, sse_events, token_responses

USER = [{"role": "user", "content": "Hi"}]

# The frontend's ranges (request_models.py): each just past its edge, and the field it names.
PAST_THE_EDGE = [
    ({"n": 5}, "n"), ({"n": 0}, "n"), ({"max_tokens": 1_000_001}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 10 ** 12}, "max_completion_tokens"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": [f"s{i}" for i in range(17)]}, "stop"), ({"logit_bias": {"32000": 1}}, "logit_bias"),
    ({"seed": 2 ** 64}, "seed"), ({"temperature": -0.1}, "temperature"), ({"temperature": 2.001}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"min_p": 1.001}, "min_p"), ({"top_k": 1000}, "top_k"),
    ({"presence_penalty": 2.001}, "presence_penalty"), ({"repetition_penalty": 0.0099}, "repetition_penalty"),
    ({"messages": []}, "messages"), ({"stop_token_ids": [32000]}, "stop_token_ids[0]"),
    ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
]


@pytest.mark.parametrize("fields,param", PAST_THE_EDGE, ids=lambda v: ",".join(v) if isinstance(v, dict) else None)
def test_each_bad_field_is_a_400_naming_it(harness: Harness, fields, param):
    status, _, body = harness.chat(fields)
    err = error_of(status, body, 400, param)
    assert err["type"] == "invalid_request_error"
    assert harness.decoder.requests == []                   # refused before the decoder


@pytest.mark.parametrize("raw,param", [
    (b"{not json", ANY_PARAM),
    (b"[]", ANY_PARAM),
    (b'{"model": "llama2-tiny"}', "messages"),
    (b'{"model": "llama2-tiny", "messages": "hi"}', "messages"),
    (b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": [{"type": "image_url", '
     b'"image_url": {"url": "x"}}]}]}', "messages[0].content[0]"),
    (b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}',
     "functions"),
])
def test_bad_bodies_get_400_envelopes(harness: Harness, raw, param):
    """Moved: test_conformance.py::test_bad_bodies_get_400_envelopes."""
    status, _, body = harness.request("POST", "/v1/chat/completions", raw)
    error_of(status, orjson.loads(body), 400, param)


def test_stop_count_edges(harness: Harness):
    """Moved: test_conformance.py::test_stop_count_edges."""
    harness.decoder.says("Hi")
    status, _, body = harness.chat({"stop": [f"s{i}" for i in range(16)]})
    assert status == 200, body
    status, _, body = harness.chat({"stop": [f"s{i}" for i in range(17)]})
    error_of(status, body, 400, "stop")


def test_unknown_fields_are_ignored_not_422(harness: Harness):
    """As test_conformance.py's end-to-end test, and the field goes nowhere near the decoder."""
    harness.decoder.says("Hi")
    status, _, body = harness.chat({"store": False, "some_future_field": {"x": 1}, "metadata": {"a": "b"}})
    assert status == 200, body
    assert "some_future_field" not in harness.decoder.requests[0][1]


def test_unknown_route_is_a_404_envelope(harness: Harness):
    status, _, raw = harness.request("GET", "/v1/nothing")
    assert error_of(status, orjson.loads(raw), 404, None)["code"] == "not_found"


def test_openapi_document_lists_the_endpoints(harness: Harness):
    """Moved: test_conformance.py::test_openapi_document."""
    status, _, raw = harness.request("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(orjson.loads(raw)["paths"])


def test_a_prompt_past_the_context_is_a_400_naming_messages(harness: Harness):
    """Moved: test_conformance.py::test_prompt_longer_than_context_is_400 (the context is the
    decoder's max_seq_len, here the fake's 512)."""
    status, _, body = harness.chat({"messages": [{"role": "user", "content": "word " * 1200}]})
    assert error_of(status, body, 400, "messages")["code"] == "context_length_exceeded"
    assert harness.decoder.requests == []


def test_an_unknown_model_is_a_404_naming_model(harness: Harness):
    status, _, body = harness.chat({"model": "no-such-model"})
    assert error_of(status, body, 404, "model")["code"] == "model_not_found"


def test_completions_fields_name_themselves(harness: Harness):
    for fields, param in (({"prompt": []}, "prompt"), ({"prompt": "x", "best_of": 2}, "best_of"),
                          ({"prompt": "x", "logprobs": 6}, "logprobs"), ({"prompt": [10 ** 6]}, "prompt"),
                          ({"prompt": "x", "max_tokens": 0}, "max_tokens")):
        status, _, raw = harness.post("/v1/completions", {"model": harness.model, **fields})
        error_of(status, orjson.loads(raw), 400, param)
    assert harness.decoder.requests == []


def test_fields_the_decoder_cannot_honour_are_400s_naming_them(harness: Harness):
    """The capabilities decide: TensorRT-LLM's tensor list has no min_p, top-N log-probs, priority or
    cache salt; each is refused by name before the decoder, never dropped."""
    inputs, outputs = decoder_io("gpu")
    harness.decoder.caps = DecoderCapabilities(frozenset(t.name for t in inputs), frozenset(t.name for t in outputs),
                                               harness.decoder.caps.parameters)
    for fields, param in (({"min_p": 0.1}, "min_p"), ({"logprobs": True, "top_logprobs": 1}, "top_logprobs"),
                          ({"priority": 1}, "priority"), ({"cache_salt": "x"}, "cache_salt")):
        status, _, body = harness.chat(fields)
        assert error_of(status, body, 400, param)["code"] == "unsupported_parameter", fields
    assert harness.decoder.requests == []
    harness.decoder.says("Hi")
    status, _, body = harness.chat({"min_p": 0.0, "priority": 0})     # the defaults are no request
    assert status == 200, body
    assert not {"min_p", "priority", "cache_salt_id"} & set(harness.decoder.requests[0][1])


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_decoder_failures_before_the_first_token_keep_their_status(harness: Harness, path):
    body = {"model": harness.model, **({"messages": USER} if "chat" in path else {"prompt": "Hi"})}
    cases = [(DecoderBusy("queue full"), 429, "queue_full", "1"), (DecoderUnavailable("gone"), 503, "model_not_ready", "2"),
             (DecoderError("bad input", certain=True), 400, "decoder_error", None),
             (DecoderError("internal error: boom", internal=True), 500, "decoder_error", None)]
    for err, status_code, code, retry in cases:
        for stream in (False, True):
            harness.decoder.script = lambda rid, arrays, err=err: [err]
            status, headers, raw = harness.post(path, {**body, "stream": stream})
            assert error_of(status, orjson.loads(raw), status_code, None)["code"] == code, (err, stream)
            assert headers.get("retry-after") == retry


def test_failures_after_tokens_streamed_end_the_stream_with_an_error_event(harness: Harness):
    ids = harness.tokenizer.encode("Hello world")
    for err, code in ((DecoderBusy("queue full"), "queue_full"), (DecoderUnavailable("lost"), "model_not_ready"),
                      (DecoderError("internal error: boom", internal=True), "decoder_error")):
        harness.decoder.script = lambda rid, arrays, err=err: token_responses(ids, final=False) + [err]
        status, _, events = harness.chat({"stream": True})
        assert status == 200                                 # committed when the decoder answered
        assert events[-1] == "[DONE]" and set(events[-2]) == {"error"}
        assert events[-2]["error"]["code"] == code and set(events[-2]["error"]) == {"message", "type", "param", "code"}
        assert "Hello world".startswith("".join(c["choices"][0]["delta"].get("content") or ""
                                                for c in events[:-2] if c.get("choices")))


def test_a_busy_decoder_after_tokens_without_a_stream_is_429(harness: Harness):
    ids = harness.tokenizer.encode("Hello world")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, final=False) + [DecoderBusy("queue full")]
    status, headers, body = harness.chat({})
    assert error_of(status, body, 429, None)["code"] == "queue_full" and headers["retry-after"] == "1"


def test_legacy_completions_stream_error_event(harness: Harness):
    ids = harness.tokenizer.encode(" one two")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, final=False) + [DecoderUnavailable("lost")]
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Hi", "stream": True})
    events = sse_events(raw)
    assert status == 200 and events[-1] == "[DONE]" and events[-2]["error"]["code"] == "model_not_ready"
