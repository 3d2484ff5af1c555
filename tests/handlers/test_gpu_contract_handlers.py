"""Issue 22's smaller mismatches, through the real app against a fake decoder that declares
TensorRT-LLM's tensor list: what the frontend sends it, and what usage it reports back."""
from __future__ import annotations

import pytest

from frontend.decoder.interface import DecoderCapabilities
from llama_triton.trtllm.tensor_contract import decoder_io
from tests.handlers.conftest import Harness

GPU_INPUTS, GPU_OUTPUTS = decoder_io("gpu")


@pytest.fixture
def gpu(harness: Harness) -> Harness:
    harness.decoder.caps = DecoderCapabilities(frozenset(t.name for t in GPU_INPUTS),
                                               frozenset(t.name for t in GPU_OUTPUTS), {"max_seq_len": "512"})
    return harness


def test_cached_tokens_never_exceed_the_prompt(gpu: Harness):
    """Finding: kv_cache_reused_blocks x tokens_per_block counts partially matched blocks, so a
    repeated 200-token prompt reported 224 cached tokens. Usage keeps within the prompt, less the
    last token that no decoder serves from its cache."""
    gpu.decoder.says("Hello world", reused=10_000)
    status, _, body = gpu.chat({})
    assert status == 200, body
    usage = body["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1


def test_perf_metrics_only_when_the_reply_reports_usage(gpu: Harness):
    """Finding: return_perf_metrics on every request adds ten tensors to every streamed token;
    only cached_tokens (usage) needs it."""
    gpu.decoder.says("Hello world")
    sent = []
    for body in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}},
                 {"stream": True, "stream_options": {"include_usage": False}},
                 {"stream": True, "stream_options": {"include_usage": False, "continuous_usage_stats": True}}):
        status, _, _ = gpu.chat(body)
        assert status == 200
        sent.append("return_perf_metrics" in gpu.decoder.requests[-1][1])
    assert sent == [True, True, True, False, True]


@pytest.mark.parametrize("extra", [{}, {"min_tokens": 5}])
def test_ignore_eos_sends_an_explicit_zero_min_tokens(gpu: Harness, extra):
    """Finding: end_id -1 with a minimum length makes TensorRT-LLM's penalty kernel write
    logits[-1]; once another request used min_tokens, every new request gets a minimum of 1. An
    explicit min_tokens 0 keeps the ignore_eos request's slot out of it."""
    gpu.decoder.says("Hello world")
    status, _, body = gpu.chat({"ignore_eos": True, "max_tokens": 8, **extra})
    assert status == 200, body
    arrays = gpu.decoder.requests[-1][1]
    assert int(arrays["end_id"].item()) == -1
    assert int(arrays["min_tokens"].item()) == 0
    status, _, _ = gpu.chat({"min_tokens": 3, "max_tokens": 4})
    assert int(gpu.decoder.requests[-1][1]["min_tokens"].item()) == 3      # without ignore_eos: as asked
