"""Usage through the real app against FakeDecoder: the figures (prompt, completion, total, cached) and
where a stream carries them (stream_options.include_usage, continuous_usage_stats). The stream usage
options moved here from tests/integration/test_conformance.py (run there once per decoder mode);
end-to-end streams keep include_usage checks in test_wire_contract.py, test_vllm_metrics.py and
test_prompt_cache.py."""
from __future__ import annotations

import orjson

from tests.handlers.conftest import Harness, error_of, sse_events, token_responses


def _stream(h: Harness, stream_options=None, path: str = "/v1/chat/completions", **fields) -> list:
    h.decoder.says("one two three")
    body = {"model": h.model, "stream": True, **fields}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": "Hi"}]
    else:
        body["prompt"] = "Hi"
    if stream_options is not None:
        body["stream_options"] = stream_options
    status, _, raw = h.post(path, body)
    assert status == 200, raw
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    return events[:-1]


def test_usage_adds_up(harness: Harness):
    harness.decoder.says("one two three")
    status, _, body = harness.chat({})
    assert status == 200
    prompt = len(harness.decoder.requests[0][1]["input_ids"][0])
    assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": 3, "total_tokens": prompt + 3,
                             "prompt_tokens_details": {"cached_tokens": 0}}


def test_cached_tokens_are_the_decoders_and_never_the_whole_prompt(harness: Harness):
    ids = harness.tokenizer.encode("one two three")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, reused=3)
    status, _, body = harness.chat({})
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    # A decoder counting whole KV blocks may claim more than the prompt: at most all but its last token.
    harness.decoder.script = lambda rid, arrays: token_responses(ids, reused=10_000)
    status, _, body = harness.chat({})
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == body["usage"]["prompt_tokens"] - 1


def test_a_default_stream_has_usage_only_on_its_last_chunk(harness: Harness):
    """Moved: test_conformance.py::test_stream_usage_options (no stream_options)."""
    events = _stream(harness)
    assert [("usage" in e) for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    assert events[-1]["usage"]["completion_tokens"] == 3


def test_include_usage_adds_a_usage_chunk_without_choices(harness: Harness):
    """Moved: test_conformance.py::test_stream_usage_options (include_usage true)."""
    events = _stream(harness, {"include_usage": True})
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert "usage" in events[-2] and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in e for e in events[:-2])


def test_include_usage_false_sends_no_usage_and_continuous_sends_it_on_every_chunk(harness: Harness):
    """Moved: test_conformance.py::test_stream_usage_options (include_usage false, continuous)."""
    assert not any("usage" in e for e in _stream(harness, {"include_usage": False}))
    continuous = _stream(harness, {"include_usage": False, "continuous_usage_stats": True})
    assert all("usage" in e for e in continuous)
    counts = [e["usage"]["completion_tokens"] for e in continuous]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == 3    # running figures
    prompt = continuous[0]["usage"]["prompt_tokens"]
    assert all(e["usage"]["total_tokens"] == prompt + e["usage"]["completion_tokens"] for e in continuous)


def test_legacy_completions_stream_usage(harness: Harness):
    events = _stream(harness, {"include_usage": True}, path="/v1/completions")
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert not any("usage" in e for e in _stream(harness, {"include_usage": False}, path="/v1/completions"))


def test_stream_options_without_stream_is_a_400(harness: Harness):
    status, _, body = harness.chat({"stream_options": {"include_usage": True}})
    error_of(status, body, 400, "stream_options")
    assert harness.decoder.requests == []


def test_max_tokens_zero_is_an_empty_completion_with_usage(harness: Harness):
    """The decoder is not asked at all (test_conformance.py keeps the end-to-end check)."""
    status, _, body = harness.chat({"max_tokens": 0})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["content"] == "" and choice["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 0 and body["usage"]["prompt_tokens"] > 0
    assert harness.decoder.requests == []


def test_max_completion_tokens_wins_over_max_tokens(harness: Harness):
    harness.decoder.says("one two three four five six")
    status, _, body = harness.chat({"max_tokens": 5, "max_completion_tokens": 2})
    assert status == 200
    assert int(harness.decoder.requests[0][1]["request_output_len"].item()) == 2
    assert body["usage"]["completion_tokens"] == 2 and body["choices"][0]["finish_reason"] == "length"


def test_null_max_tokens_is_the_room_left_in_the_context(harness: Harness):
    harness.decoder.says("Hi")
    status, _, raw = harness.post("/v1/chat/completions", {"model": harness.model, "max_tokens": None,
                                                           "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200, raw
    arrays = harness.decoder.requests[0][1]
    room = 512 - len(arrays["input_ids"][0])              # FakeDecoder's max_seq_len, below the 16384 cap
    assert int(arrays["request_output_len"].item()) == room
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 1
