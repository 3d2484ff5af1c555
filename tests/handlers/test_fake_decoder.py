"""FakeDecoder (tests/handlers/conftest.py) is as strict as TritonDecoder with Triton and the CPU
decoder behind it: each refusal and each rule of what the decoder sends (the T/D/R/C list in its
docstring), checked on the fake directly. A handler test whose request the real stack would refuse
fails the same way against the fake."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from frontend.decoder import DecoderError, DecoderResponse, DecoderUnavailable
from llama_triton.trtllm.request_encoding import DecodeSettings, decoder_arrays
from tests.handlers.conftest import HANG, FakeDecoder, ScriptError, token_responses


@pytest.fixture
def fake(default_tokenizer) -> FakeDecoder:
    return FakeDecoder(default_tokenizer)


def valid(fake: FakeDecoder, **settings) -> dict:
    """What the frontend sends for a plain request (the real encoder, the fake's capabilities)."""
    s = DecodeSettings(prompt_ids=[1, 15043, 3186], max_new_tokens=4, end_id=fake.tokenizer.eos_id)
    for k, v in settings.items():
        setattr(s, k, v)
    return decoder_arrays(s, fake.caps.inputs)


def play(fake: FakeDecoder, arrays: dict, rid: str = "chatcmpl-1") -> list[DecoderResponse]:
    async def go():
        return [r async for r in fake.generate(rid, arrays)]
    return asyncio.run(go())


def refused(fake: FakeDecoder, arrays: dict, rid: str = "chatcmpl-1") -> DecoderError:
    with pytest.raises(DecoderError) as info:
        play(fake, arrays, rid)
    return info.value


def test_a_valid_request_plays_its_script(fake):
    ids = fake.tokenizer.encode("Hello world")
    fake.says("Hello world")
    out = play(fake, valid(fake))
    assert [r.token_ids for r in out] == [[t] for t in ids]
    assert [r.is_final for r in out] == [False] * (len(ids) - 1) + [True]
    assert fake.requests[0][0] == "chatcmpl-1" and fake.live == set()


def test_an_input_the_decoder_does_not_declare_is_refused_as_triton_refuses_it(default_tokenizer):
    """T1: the GPU list has no min_p; Triton refuses the request before the model sees it."""
    gpu = FakeDecoder(default_tokenizer, decoder_io_name="gpu")
    arrays = {**valid(gpu), "min_p": np.asarray([[0.1]], np.float32)}
    err = refused(gpu, arrays)
    assert str(err) == "unexpected inference input 'min_p' for model 'tensorrt_llm'"
    assert not err.certain and not err.internal      # Triton's text has no code: TritonDecoder's 400


def test_a_missing_required_input_is_refused(fake):
    """T2: input_lengths and request_output_len are the config's required inputs."""
    arrays = valid(fake)
    del arrays["request_output_len"]
    err = refused(fake, arrays)
    assert "missing required input(s) ['request_output_len']" in str(err)
    assert str(err).startswith("[request id: chatcmpl-1] expected number of inputs between 2 and ")


def test_inputs_of_different_batch_sizes_are_refused(fake):
    """T3."""
    arrays = {**valid(fake), "temperature": np.asarray([[1.0], [1.0]], np.float32)}
    assert "'temperature' batch size does not match other inputs" in str(refused(fake, arrays))


def test_a_wrong_data_type_is_refused(fake):
    """T4: input_ids is INT32 in the config."""
    arrays = {**valid(fake), "input_ids": np.asarray([[1, 15043]], np.int64)}
    assert str(refused(fake, arrays)).endswith(
        "inference input 'input_ids' data-type is 'INT64', but model 'tensorrt_llm' expects 'INT32'")
    arrays = {**valid(fake), "streaming": np.asarray([[1]], np.int32)}
    assert "'streaming' data-type is 'INT32', but model 'tensorrt_llm' expects 'BOOL'" in str(refused(fake, arrays))


def test_a_wrong_shape_is_refused(fake):
    """T5: [batch] + the declared dims; -1 takes any size."""
    arrays = {**valid(fake), "input_ids": np.asarray([[[1, 15043]]], np.int32)}     # one dimension too many
    assert "unexpected shape for input 'input_ids' for model 'tensorrt_llm'. Expected [-1,-1], got [1,1,2]" \
        in str(refused(fake, arrays))
    arrays = {**valid(fake), "request_output_len": np.asarray([[4, 4]], np.int32)}  # dims [1]
    assert "Expected [-1,1], got [1,2]" in str(refused(fake, arrays))
    words = {**valid(fake), "stop_words_list": np.asarray([[[5, -1, -1]]], np.int32)}   # dims [2, -1]
    assert "unexpected shape for input 'stop_words_list'" in str(refused(fake, words))


def test_a_request_id_in_flight_is_refused_until_its_request_ends(fake):
    """D1: the CPU decoder's live table; an id is free again once its request ended."""
    fake.script = lambda rid, arrays: token_responses([15043], final=False) + [HANG]

    async def go():
        first = fake.generate("chatcmpl-x", valid(fake))
        await first.__anext__()
        with pytest.raises(DecoderError) as info:
            await fake.generate("chatcmpl-x", valid(fake)).__anext__()
        await first.aclose()
        fake.says("Hi")
        again = [r async for r in fake.generate("chatcmpl-x", valid(fake))]
        return info.value, again
    err, again = asyncio.run(go())
    assert str(err) == "request id 'chatcmpl-x' is already in flight" and err.certain
    assert again and again[-1].is_final
    assert fake.closed_early == ["chatcmpl-x"]


@pytest.mark.parametrize("change,message", [
    ({"input_lengths": np.asarray([[0]], np.int32)}, "input_lengths: 0 does not fit input_ids of length 3"),
    ({"input_lengths": np.asarray([[4]], np.int32)}, "input_lengths: 4 does not fit input_ids of length 3"),
    ({"request_output_len": np.asarray([[-1]], np.int32)}, "request_output_len: must be >= 0, got -1"),
    ({"beam_width": np.asarray([[2]], np.int32)}, "beam_width: the CPU decoder samples (beam_width 1), got 2"),
    ({"temperature": np.asarray([[np.nan]], np.float32)}, "temperature: must be a finite number, got nan"),
    ({"guided_decoding_guide_type": np.asarray([[b"yaml"]], object),
      "guided_decoding_guide": np.asarray([[b"x"]], object)}, "guided_decoding_guide_type: 'yaml' is not one of"),
    ({"guided_decoding_guide_type": np.asarray([[b"regex"]], object),
      "guided_decoding_guide": np.asarray([[b""]], object)}, "guided_decoding_guide: required for guide type regex"),
], ids=["lengths-0", "lengths-over", "output-len", "beam", "nan", "guide-type", "guide-missing"])
def test_the_decoders_own_refusals_are_typed_400s(fake, change, message):
    """D2-D4: parse_request's refusals, sent with the decoder's invalid_request code."""
    err = refused(fake, {**valid(fake), **change})
    assert str(err).startswith(message) and err.certain and not err.internal


def test_no_input_ids_is_the_decoders_refusal(fake):
    arrays = valid(fake)
    del arrays["input_ids"]
    err = refused(fake, arrays)
    assert str(err) == "input_ids: required" and err.certain


def test_the_script_is_played_as_the_decoder_generates(fake):
    """R1/R2/C2: the end token ends its sequence unreturned, request_output_len ends it too, the
    response that ends the last sequence is final; outputs the request did not ask for are absent."""
    hello = fake.tokenizer.encode("Hello world")
    fake.script = lambda rid, arrays: token_responses(hello + [fake.tokenizer.eos_id] + hello,
                                                      log_probs=[-1.0] * (2 * len(hello) + 1))
    out = play(fake, valid(fake, max_new_tokens=10))
    assert [t for r in out for t in r.token_ids] == hello          # stopped at the end token
    assert out[-1].is_final and out[-1].token_ids == []
    assert all(r.log_probs is None for r in out)                   # return_log_probs was not sent
    fake.says("one two three four five six")
    out = play(fake, valid(fake, max_new_tokens=2, logprobs=True), rid="chatcmpl-2")
    assert sum(len(r.token_ids) for r in out) == 2 and out[-1].is_final
    assert all(r.log_probs is None for r in out)                   # says() sent none: none arrive


def test_a_stream_that_ends_without_a_final_response_is_unavailable(fake):
    """C1: TritonDecoder's "the decoder stream ended early"."""
    fake.script = lambda rid, arrays: token_responses([15043], final=False)
    with pytest.raises(DecoderUnavailable, match="the decoder stream ended early"):
        play(fake, valid(fake))


@pytest.mark.parametrize("step,problem", [
    (DecoderResponse(0, [10 ** 6], None, None, None, None, True), "a token outside the vocabulary"),
    (DecoderResponse(1, [15043], None, None, None, None, True), "sequence index 1 of a request for 1"),
    (DecoderResponse(0, [15043, 3186], [-1.0], None, None, None, True), "1 log-probs for 2 tokens"),
], ids=["vocab", "index", "log-probs"])
def test_what_the_decoder_could_not_send_fails_the_test(fake, step, problem):
    """R1, R3, R4: a script error, also kept for the harness to report at its close."""
    fake.script = lambda rid, arrays: [step]
    with pytest.raises(ScriptError, match=problem):
        play(fake, valid(fake, logprobs=True))
    assert fake.script_errors and problem in fake.script_errors[0]


def test_responses_after_the_final_one_fail_the_test(fake):
    """R5."""
    fake.script = lambda rid, arrays: token_responses([15043]) + token_responses([3186])
    with pytest.raises(ScriptError, match="responses after the final one"):
        play(fake, valid(fake))


def test_top_log_probs_have_the_requested_width(fake):
    """C2/R4: [tokens, num_top_log_probs], as output_arrays shapes them."""
    top = np.asarray([[15043, 100, 101]], np.int32), np.asarray([[-0.1, -2.0, -3.0]], np.float32)
    fake.script = lambda rid, arrays: [DecoderResponse(0, [15043], [-0.1], *top, None, True)]
    out = play(fake, valid(fake, logprobs=True, top_logprobs=3))
    assert out[0].top_ids.shape == (1, 3) and out[0].log_probs == [-0.1]
    with pytest.raises(ScriptError, match=r"top_ids of shape \(1, 3\), not \(1, 2\)"):
        play(fake, valid(fake, logprobs=True, top_logprobs=2), rid="chatcmpl-2")
