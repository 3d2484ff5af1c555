"""Chat and legacy completions through the real app against FakeDecoder (tests/handlers/conftest.py)."""
from __future__ import annotations

import json

import orjson

from frontend.decoder.interface import DecoderBusy, DecoderError, DecoderUnavailable
from tests.handlers.conftest import Harness, token_responses


def test_plain_answer_and_usage(harness: Harness):
    harness.decoder.says("Hello world")
    status, headers, body = harness.chat({})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello world"}
    assert choice["finish_reason"] == "stop"            # the decoder ended before max_tokens
    rid, arrays = harness.decoder.requests[0]
    assert body["id"] == rid == headers["x-request-id"]
    assert body["usage"]["prompt_tokens"] == int(arrays["input_lengths"].sum())
    assert body["usage"]["completion_tokens"] == len(harness.tokenizer.encode("Hello world"))


def test_stop_string_cuts_the_text_and_cancels_the_decoder(harness: Harness):
    harness.decoder.says("Hello world. And more text")
    status, _, body = harness.chat({"stop": ["."]})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "Hello world"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert harness.decoder.closed_early == [harness.decoder.requests[0][0]]   # leaving the stream cancels


def test_max_tokens_is_length(harness: Harness):
    harness.decoder.says("one two three four five six")
    status, _, body = harness.chat({"max_tokens": 2})
    assert status == 200
    assert int(harness.decoder.requests[0][1]["request_output_len"].item()) == 2
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_n_choices_follow_their_sequence_index(harness: Harness):
    harness.decoder.says("first answer", "second answer")
    status, _, body = harness.chat({"n": 2, "temperature": 1.0})
    assert status == 200
    assert [c["message"]["content"] for c in body["choices"]] == ["first answer", "second answer"]
    assert int(harness.decoder.requests[0][1]["num_return_sequences"].item()) == 2


def test_stream_commits_after_the_decoder_and_ends_with_usage(harness: Harness):
    harness.decoder.says("Hello world", reused=3)
    status, headers, events = harness.chat({"stream": True})
    assert status == 200
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["id"] for c in chunks} == {headers["x-request-id"]}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello world"
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert usage and usage[-1]["prompt_tokens_details"]["cached_tokens"] == 3


def test_logprobs_are_the_decoders_and_never_made_up(harness: Harness):
    ids = harness.tokenizer.encode("Hello world")
    harness.decoder.says("Hello world", log_probs=[-0.5] * len(ids))
    status, _, body = harness.chat({"logprobs": True})
    assert status == 200
    assert [e["logprob"] for e in body["choices"][0]["logprobs"]["content"]] == [-0.5] * len(ids)
    # A decoder that sends no log-probs: no entries, never a made-up (certain) 0.0.
    harness.decoder.says("Hello world")
    status, _, body = harness.chat({"logprobs": True})
    assert status == 200
    assert body["choices"][0]["message"]["content"] == "Hello world"
    assert body["choices"][0]["logprobs"]["content"] == []


def test_tool_call_named(harness: Harness):
    harness.decoder.says('{"city": "Paris"}')
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    status, _, body = harness.chat({"tools": [tool], "tool_choice": {"type": "function",
                                                                    "function": {"name": "get_weather"}}})
    assert status == 200, body
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    arrays = harness.decoder.requests[0][1]
    assert "guided_decoding_guide_type" in arrays       # the decoder was constrained to the schema


def test_legacy_completion_echo_and_stop(harness: Harness):
    harness.decoder.says(" world! more")
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Hello", "echo": True,
                                                      "stop": ["!"]})
    body = json.loads(raw)
    assert status == 200
    assert body["choices"][0]["text"] == "Hello world"
    assert body["id"].startswith("cmpl-")


# ---- decoder failures: one mapping (frontend/decoder/interface.py http_error) -------------------------------

def _fails_with(harness: Harness, err: BaseException, stream: bool):
    harness.decoder.script = lambda rid, arrays: [err]
    return harness.chat({"stream": stream})


def test_decoder_failures_before_the_first_token_keep_their_status(harness: Harness):
    for stream in (False, True):
        status, headers, body = _fails_with(harness, DecoderBusy("queue full"), stream)
        assert (status, body["error"]["code"], headers["retry-after"]) == (429, "queue_full", "1")
        status, headers, body = _fails_with(harness, DecoderUnavailable("gone"), stream)
        assert (status, body["error"]["code"]) == (503, "model_not_ready")
        status, _, body = _fails_with(harness, DecoderError("bad stop word"), stream)
        assert (status, body["error"]["type"]) == (400, "invalid_request_error")
        status, _, body = _fails_with(harness, DecoderError("internal error: boom", internal=True), stream)
        assert (status, body["error"]["type"]) == (500, "server_error")


def test_stop_token_ids_outside_the_vocabulary_are_a_400_naming_the_entry(harness: Harness):
    # 2**40 once reached the int32 word-list tensor and came back as a 500 (found by the fuzz test).
    for bad in (harness.tokenizer.vocab_size, 2 ** 40):
        for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
                           ("/v1/completions", {"prompt": "Hi"})):
            status, _, raw = harness.post(path, {"model": harness.model, "stop_token_ids": [2, bad], **body})
            error = orjson.loads(raw)["error"]
            assert (status, error["param"]) == (400, "stop_token_ids[1]"), (path, bad, error)


def test_decoder_down_when_reading_capabilities_is_503(harness: Harness):
    harness.decoder.capabilities_error = DecoderUnavailable("no Triton")
    status, headers, body = harness.chat({})
    assert (status, body["error"]["code"], headers["retry-after"]) == (503, "model_not_ready", "2")


def test_failure_mid_stream_is_an_error_event_then_done(harness: Harness):
    ids = harness.tokenizer.encode("Hello world")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, final=False) + [DecoderUnavailable("lost")]
    status, _, events = harness.chat({"stream": True})
    assert status == 200                                   # committed when the decoder answered
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "model_not_ready"


def test_reasoning_model_splits_reasoning_from_the_answer(reasoning_model_dir, reasoning_tokenizer):
    h = Harness(reasoning_model_dir, reasoning_tokenizer)
    try:
        h.decoder.says("Let me think.</think>The answer is 4.")
        status, _, body = h.chat({})
        assert status == 200, body
        message = body["choices"][0]["message"]
        assert message["reasoning_content"].strip() == "Let me think."
        assert message["content"].strip() == "The answer is 4."
        h.decoder.says("Let me think.</think>The answer is 4.")
        status, _, events = h.chat({"stream": True})
        deltas = [c["choices"][0]["delta"] for c in events[:-1] if c["choices"]]
        assert "".join(d.get("reasoning_content") or "" for d in deltas).strip() == "Let me think."
        assert "".join(d.get("content") or "" for d in deltas).strip() == "The answer is 4."
    finally:
        h.close()
