"""How the frontend reads a decoder's failure (llama_triton/trtllm/decoder_errors.py, frontend/decoder/triton_client.py):
typed codes from our decoders, one cited table for TensorRT-LLM's and Triton's texts, nothing found
by searching free text (finding 11 of issue 24: a request-derived message was misclassified)."""
from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from frontend.decoder.interface import DecoderBusy, DecoderError, DecoderUnavailable
from frontend.decoder.triton_client import classify_error
from llama_triton.backend import trtllm_emulation as trtllm
from llama_triton.trtllm import decoder_errors as codes

# TensorRT-LLM's exceptions carry " (file:line)" and a stack trace after the text (tllmException.cpp).
TRACE = " (/src/tensorrt_llm/executor/executorImpl.cpp:941)\n1   0x7f00 tensorrt_llm::common::TllmException"


def stream_error(message: str) -> InferenceServerException:
    """A decoder's error as tritonclient hands it over on a stream: the text, no status."""
    return InferenceServerException(msg=message)


@pytest.mark.parametrize("quoted", ["connection refused", "unknown model", "is not found", "not ready",
                                    "queue full", "Maximum queue size of 8 has been reached, please try again later",
                                    "[llama-triton:queue_full] x"])
def test_a_typed_refusal_stays_the_requests_fault_whatever_it_quotes(quoted):
    """The guide's text (a regex, a schema) may say anything: the code in front decides."""
    err = classify_error(stream_error(codes.typed_message(codes.INVALID_REQUEST, f"the guide cannot compile: {quoted}")))
    assert type(err) is DecoderError and err.certain and not err.internal
    assert str(err) == f"the guide cannot compile: {quoted}"      # the client sees no code


@pytest.mark.parametrize("code, kind", [(codes.QUEUE_FULL, DecoderBusy), (codes.SHUTTING_DOWN, DecoderUnavailable)])
def test_typed_codes_of_our_decoders(code, kind):
    assert type(classify_error(stream_error(codes.typed_message(code, "whatever the text")))) is kind


def test_an_internal_error_is_the_servers_and_is_probed():
    err = classify_error(stream_error(codes.typed_message(codes.INTERNAL_ERROR, "internal error: not ready")))
    assert type(err) is DecoderError and err.internal and not err.certain


@pytest.mark.parametrize("message", [
    "Executor failed process requestId 7 due to the following error: queue full, connection refused",
    "something the table does not know: unknown model, socket closed, unavailable",
])
def test_an_untyped_text_is_never_classified_by_words_inside_it(message):
    """Words in the middle of an unknown text say nothing: the probes decide (decoder_health.py)."""
    err = classify_error(stream_error(message))
    assert type(err) is DecoderError and not err.certain and not err.internal


def test_the_cpp_backends_texts_as_gpu_mode_sends_them_and_as_tensorrt_llm_throws_them():
    """Each emulated text (llama_triton/backend/trtllm_emulation.py) meets its row of the table,
    bare as the emulation sends it and with TensorRT-LLM's " (file:line)" and trace after it."""
    cases = [(trtllm.queue_full_text(64), DecoderBusy), (trtllm.SHUTDOWN_TEXT, DecoderUnavailable),
             (trtllm.missing_output_text("cum_log_probs"), DecoderError),
             (trtllm.STOP_WITHOUT_ID, DecoderError)]
    for text, kind in cases:
        for message in (text, text + TRACE):
            assert type(classify_error(stream_error(message))) is kind, message
    assert classify_error(stream_error(trtllm.missing_output_text("x"))).internal
    executor = classify_error(stream_error(trtllm.executor_error_text("the prompt is longer than max_seq_len")))
    assert type(executor) is DecoderError and not executor.certain      # probed: request or engine?


def test_every_row_of_the_table_is_cited_and_anchored():
    for row in codes.FOREIGN_MESSAGES:
        assert "@" in row.source or "r24.10" in row.source, row
        assert row.kind in (codes.BUSY, codes.UNAVAILABLE, codes.INVALID, codes.INTERNAL, codes.UNKNOWN)
        # Anchored: the text quoted after something else does not match.
        assert not row.pattern.match("prefix " + row.pattern.pattern.replace("\\", ""))


@pytest.mark.parametrize("message, kind", [
    ("Stub process 'tensorrt_llm_0_0' is not healthy.", DecoderUnavailable),
    ("Request for unknown model: 'tensorrt_llm' is not found", DecoderUnavailable),
])
def test_tritons_own_texts(message, kind):
    assert type(classify_error(stream_error(message))) is kind


def test_transport_errors_by_their_status_not_their_text():
    assert type(classify_error(InferenceServerException(msg="queue full", status="StatusCode.UNAVAILABLE"))) \
        is DecoderUnavailable
    err = classify_error(InferenceServerException(msg="connection refused", status="StatusCode.INVALID_ARGUMENT"))
    assert type(err) is DecoderError and err.internal


def test_unknown_codes_are_not_codes():
    assert codes.typed_code("[llama-triton:made_up] x") is None
    with pytest.raises(ValueError):
        codes.typed_message("made_up", "x")
