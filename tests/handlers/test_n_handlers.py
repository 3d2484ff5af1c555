"""n choices through the real app against FakeDecoder: one decoder request with num_return_sequences,
choices by sequence index (whatever order the responses arrive in), each choice its own role chunk,
content and finish_reason, usage over all of them."""
from __future__ import annotations

import orjson

from frontend.decoder import DecoderResponse
from tests.handlers.conftest import Harness, content_of, finish_reasons, sse_events, token_responses


def test_n_is_sent_as_num_return_sequences_only_above_one(harness: Harness):
    harness.decoder.says("Hi")
    harness.chat({})
    assert "num_return_sequences" not in harness.decoder.requests[0][1]
    harness.decoder.says("a", "b", "c")
    status, _, body = harness.chat({"n": 3, "temperature": 1.0})
    assert status == 200, body
    assert int(harness.decoder.requests[1][1]["num_return_sequences"].item()) == 3
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert len(harness.decoder.requests) == 2                 # one decoder request for all choices


def test_choices_follow_the_sequence_index_not_the_arrival_order(harness: Harness):
    tok = harness.tokenizer
    first, second = tok.encode("first answer"), tok.encode("second answer")
    # Interleaved, choice 1 first, as a batching decoder may send them.
    steps = []
    for a, b in zip(first, second):
        steps += [DecoderResponse(1, [b], None, None, None, None, False), DecoderResponse(0, [a], None, None, None, None,
                                                                                         False)]
    steps[-1].is_final = True
    harness.decoder.script = lambda rid, arrays: steps
    status, _, body = harness.chat({"n": 2, "temperature": 1.0})
    assert status == 200, body
    assert [(c["index"], c["message"]["content"]) for c in body["choices"]] == [(0, "first answer"),
                                                                              (1, "second answer")]


def test_each_streamed_choice_gets_its_role_chunk_content_and_one_finish(harness: Harness):
    harness.decoder.says("first answer", "second answer")
    status, _, events = harness.chat({"n": 2, "temperature": 1.0, "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    chunks = events[:-1]
    roles = [c["choices"][0]["index"] for c in chunks if c.get("choices") and "role" in c["choices"][0]["delta"]]
    assert roles == [0, 1] and all("role" in c["choices"][0]["delta"] for c in chunks[:2])   # before any content
    assert (content_of(chunks, 0), content_of(chunks, 1)) == ("first answer", "second answer")
    assert finish_reasons(chunks) == {0: ["stop"], 1: ["stop"]}
    assert all(len(c["choices"]) == 1 for c in chunks if c.get("choices"))   # one choice per chunk


def test_each_choice_finishes_for_its_own_reason(harness: Harness):
    """Choice 0 hits the stop string, choice 1 runs into max_tokens."""
    for stream in (False, True):
        harness.decoder.says("Yes. more", "No more words here")
        status, _, body = harness.chat({"n": 2, "temperature": 1.0, "stop": ["."], "max_tokens": 3, "stream": stream})
        assert status == 200, body
        if stream:
            assert finish_reasons(body) == {0: ["stop"], 1: ["length"]}
            assert (content_of(body, 0), content_of(body, 1)) == ("Yes", "No more words")
        else:
            assert [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
                ("Yes", "stop"), ("No more words", "length")]


def test_one_choice_stopping_early_keeps_the_request_for_the_others(harness: Harness):
    harness.decoder.says("Yes. more", "No more")
    status, _, body = harness.chat({"n": 2, "temperature": 1.0, "stop": ["."]})
    assert status == 200, body
    assert [c["message"]["content"] for c in body["choices"]] == ["Yes", "No more"]
    assert harness.decoder.closed_early == []               # choice 1 was still running: not cancelled


def test_usage_counts_the_tokens_of_every_choice(harness: Harness):
    tok = harness.tokenizer
    harness.decoder.says("first answer", "the second answer")
    status, _, body = harness.chat({"n": 2, "temperature": 1.0})
    assert status == 200
    expected = len(tok.encode("first answer")) + len(tok.encode("the second answer"))
    assert body["usage"]["completion_tokens"] == expected
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + expected


def test_legacy_completions_n_streamed_and_not(harness: Harness):
    for stream in (False, True):
        ids = harness.tokenizer.encode(" one"), harness.tokenizer.encode(" two")
        harness.decoder.script = lambda rid, arrays: token_responses(ids[0], 0, final=False) + token_responses(ids[1], 1)
        status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Count:", "n": 2,
                                                          "temperature": 1.0, "stream": stream})
        assert status == 200, raw
        if stream:
            events = sse_events(raw)[:-1]
            texts = {i: "".join(c["choices"][0]["text"] for c in events if c.get("choices")
                                and c["choices"][0]["index"] == i) for i in (0, 1)}
        else:
            texts = {c["index"]: c["text"] for c in orjson.loads(raw)["choices"]}
        assert texts == {0: " one", 1: " two"}, stream
