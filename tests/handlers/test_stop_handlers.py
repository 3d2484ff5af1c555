"""Stop strings through the real app against FakeDecoder: matched on the text across token boundaries,
held back while a match is possible, never emitted, the same streamed or not; a match ends the
decoder request. (Default tokenizer: "Hello world" is the tokens "▁Hello", "▁world".)"""
from __future__ import annotations

import orjson

from llama_triton.trtllm.word_lists import from_word_list
from tests.handlers.conftest import Harness, content_of, finish_reasons, sse_events


def _contents(events: list, index: int = 0) -> list[str]:
    """The content pieces of one choice's stream, in order, without the role chunk's ""."""
    return [c["choices"][0]["delta"]["content"] for c in events if isinstance(c, dict) and c.get("choices")
            and c["choices"][0]["index"] == index and c["choices"][0]["delta"].get("content")]


def _both(h: Harness, text: str, body: dict) -> tuple[dict, list]:
    """The non-streamed response and the stream's events for the same scripted answer."""
    h.decoder.says(text)
    status, _, full = h.chat(body)
    assert status == 200, full
    h.decoder.says(text)
    status, _, events = h.chat({**body, "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    return full, events


def test_a_stop_string_across_two_tokens_is_cut_streamed_and_not(harness: Harness):
    full, events = _both(harness, "Hello world", {"stop": ["lo wo"]})
    assert full["choices"][0]["message"]["content"] == "Hel"
    assert full["choices"][0]["finish_reason"] == "stop"
    assert _contents(events) == ["Hel"]                  # "lo" was held back, then dropped with the match
    assert finish_reasons(events) == {0: ["stop"]}


def test_a_possible_match_is_held_back_then_released(harness: Harness):
    full, events = _both(harness, "Hello world", {"stop": ["lo wx"]})
    assert full["choices"][0]["message"]["content"] == "Hello world"
    assert _contents(events) == ["Hel", "lo world"]      # "lo" waited for the next token
    assert finish_reasons(events) == {0: ["stop"]}       # the decoder ended: stop, not a match


def test_a_stop_string_inside_one_token(harness: Harness):
    full, events = _both(harness, "Hello world", {"stop": ["ell"]})
    assert full["choices"][0]["message"]["content"] == content_of(events) == "H"


def test_a_stop_string_at_the_start_gives_empty_content(harness: Harness):
    full, events = _both(harness, "Hello world", {"stop": ["Hel"]})
    assert full["choices"][0]["message"]["content"] == content_of(events) == ""
    assert full["choices"][0]["finish_reason"] == "stop"


def test_the_stop_string_that_completes_first_wins(harness: Harness):
    # "two three" completes before "four" starts; "six" would complete last.
    full, events = _both(harness, "one two three four five six", {"stop": ["four", "two three", "six"]})
    assert full["choices"][0]["message"]["content"] == content_of(events) == "one "


def test_stop_as_a_single_string(harness: Harness):
    full, events = _both(harness, "Hello world. And more text", {"stop": "."})
    assert full["choices"][0]["message"]["content"] == content_of(events) == "Hello world"
    assert not any("." in piece for piece in _contents(events))


def test_a_match_in_a_stream_ends_the_decoder_request(harness: Harness):
    harness.decoder.says("Hello world. And more text")
    status, headers, events = harness.chat({"stop": ["."], "stream": True})
    assert status == 200
    assert harness.decoder.closed_early == [headers["x-request-id"]]
    assert harness.decoder.stopped == {headers["x-request-id"]: True}   # stopped while still handled


def test_no_match_lets_the_decoder_finish(harness: Harness):
    harness.decoder.says("Hello world")
    status, _, body = harness.chat({"stop": ["xyz"]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "Hello world"
    assert harness.decoder.closed_early == []


def test_stop_in_legacy_completions_streamed_and_not(harness: Harness):
    for stream in (False, True):
        harness.decoder.says(" world! more")
        status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Hello",
                                                          "stop": ["d! m"], "stream": stream})
        assert status == 200, raw
        if stream:
            events = sse_events(raw)
            text = "".join(c["choices"][0]["text"] for c in events[:-1] if c.get("choices"))
            reasons = [c["choices"][0]["finish_reason"] for c in events[:-1]
                       if c.get("choices") and c["choices"][0]["finish_reason"]]
        else:
            choice = orjson.loads(raw)["choices"][0]
            text, reasons = choice["text"], [choice["finish_reason"]]
        assert (text, reasons) == (" worl", ["stop"]), stream


def test_stop_token_ids_reach_the_decoder_as_a_word_list(harness: Harness):
    harness.decoder.says("Hi")
    status, _, _ = harness.chat({"stop_token_ids": [29889, 13]})
    assert status == 200
    assert from_word_list(harness.decoder.requests[0][1]["stop_words_list"]) == [[13], [29889]]
    harness.decoder.says("Hi")
    harness.chat({})
    assert "stop_words_list" not in harness.decoder.requests[1][1]   # Llama-2 has one end token: end_id
