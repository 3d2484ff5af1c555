"""OpenAI sampling fields -> TensorRT-LLM decoder tensors, with the deployment's capability check.

The frontend never drops a field that would change the output: a field whose tensor the
deployed decoder does not declare, set to a non-default value, is refused with the field's name.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from llama_triton.trtllm.word_lists import to_word_list

UINT64 = 1 << 64


class UnsupportedField(ValueError):
    def __init__(self, field_name: str, tensor: str):
        super().__init__(f"{field_name} is not supported by this deployment "
                         f"(its decoder declares no '{tensor}' input)")
        self.field = field_name


@dataclass
class DecodeSettings:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    n: int = 1
    end_id: Optional[int] = None
    ignore_eos: bool = False        # send end_id -1 (no end token); pad_id stays end_id
    stop_token_ids: list[int] = field(default_factory=list)
    min_tokens: int = 0
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: Optional[dict[int, float]] = None
    vocab_size: int = 0
    guide_type: Optional[str] = None
    guide: Optional[str] = None
    # The reply reports usage (cached prompt tokens): TensorRT-LLM tells those only with
    # return_perf_metrics, which adds ten tensors to every response, so it is asked for only then.
    report_cached_tokens: bool = True
    cache_salt: Optional[int] = None    # uint64 prefix-cache scope (frontend/tenancy/tenants.py: cache_salt)
    cache_salt_asked: bool = False      # the client sent `cache_salt`: a decoder that cannot salt refuses it
    priority: int = 0                   # waiting order, lower first (vLLM's `priority`); 0: the default


def normalize_seed(seed: Optional[int]) -> int:
    """No seed: a fresh random one. Negative seeds wrap into the decoder's UINT64 range."""
    if seed is None:
        return random.SystemRandom().getrandbits(64)
    return seed % UINT64


def _scalar(value, dtype) -> np.ndarray:
    return np.asarray([[value]], dtype=dtype)


def decoder_arrays(s: DecodeSettings, declared: frozenset[str]) -> dict[str, np.ndarray]:
    def need(field_name: str, tensor: str, is_default: bool) -> bool:
        if tensor in declared:
            return True
        if is_default:
            return False
        raise UnsupportedField(field_name, tensor)

    a: dict[str, np.ndarray] = {
        "input_ids": np.asarray([s.prompt_ids], dtype=np.int32),
        "input_lengths": _scalar(len(s.prompt_ids), np.int32),
        "request_output_len": _scalar(s.max_new_tokens, np.int32),
        "streaming": _scalar(True, bool),
        "exclude_input_in_output": _scalar(True, bool),
        # Always a seed: TensorRT-LLM's default is a fixed 0 (defaultDecodingParams.h getSeed), so
        # unseeded requests would all sample alike.
        "seed": _scalar(normalize_seed(s.seed), np.uint64),
    }
    if s.temperature == 0:
        # Greedy as TensorRT-LLM spells it (top_k 1), which the CPU decoder reads the same way.
        a["runtime_top_k"] = _scalar(1, np.int32)
        a["temperature"] = _scalar(1.0, np.float32)
    else:
        a["temperature"] = _scalar(s.temperature, np.float32)
        # Always both: TensorRT-LLM reads an absent top_k as 0 and an absent top_p as 0.0, and its
        # top-k layer turns k == 0 && p == 0 into k = 1, i.e. greedy (tensorrtllm_backend
        # inflight_batcher_llm/src/utils.cc:555-563; TensorRT-LLM defaultDecodingParams.h and the
        # top-k setup kernel). top_k 0 with top_p 1.0 is plain sampling over the whole vocabulary.
        a["runtime_top_k"] = _scalar(s.top_k, np.int32)
        a["runtime_top_p"] = _scalar(s.top_p, np.float32)
        if need("min_p", "min_p", s.min_p == 0.0):
            a["min_p"] = _scalar(s.min_p, np.float32)
    if s.repetition_penalty != 1.0:
        a["repetition_penalty"] = _scalar(s.repetition_penalty, np.float32)
    if s.presence_penalty:
        a["presence_penalty"] = _scalar(s.presence_penalty, np.float32)
    if s.frequency_penalty:
        a["frequency_penalty"] = _scalar(s.frequency_penalty, np.float32)
    if s.n != 1 and need("n", "num_return_sequences", False):
        a["num_return_sequences"] = _scalar(s.n, np.int32)
    if s.end_id is not None:
        # ignore_eos: end_id -1, "no end token", as trtllm-serve does it (TensorRT-LLM
        # tensorrt_llm/executor/base_worker.py:451-452@7b437aa, `end_id=-1 if
        # request.sampling_params.ignore_eos else request.sampling_params.end_id`, pad_id unchanged).
        # The backend passes end_id through (tensorrtllm_backend inflight_batcher_llm/src/utils.cc:952-953
        # at c2e65b8), the executor accepts [-1, vocab) (batch_manager/llmRequest.cpp:249@119c6e6) and
        # the sampling kernels end a sequence only on `id == endIds[slot]` (kernels/samplingTopKKernels.cu
        # :264-274@0396172), which no token is. The CPU decoder reads -1 the same way.
        a["end_id"] = _scalar(-1 if s.ignore_eos else s.end_id, np.int32)
        a["pad_id"] = _scalar(s.end_id, np.int32)
    if s.stop_token_ids:
        a["stop_words_list"] = to_word_list([[t] for t in s.stop_token_ids])[None]
    if s.ignore_eos and s.end_id is not None:
        # An explicit 0. TensorRT-LLM's min-length mask writes logits[endIds[slot]] while fewer than
        # min_tokens tokens are out (kernels/penaltyKernels.cu:200-205@249d93d); with end_id -1 that
        # is logits[-1], outside the row. A request's own min_tokens 0 keeps its slot clear of it (the
        # same kernel: `hasMinLength |= (minLength > 0)`). Leaving min_tokens out is not enough: once
        # any request in the executor used a minimum length, the penalty layer applies one to every
        # new request (layers/penaltyLayer.cpp@2a9abd9 PenaltyLayer::setup, `mUseMinLength |=
        # useMinLength`, then fillBuffers with DefaultDecodingParams::getMinLength(), which is 1:
        # layers/defaultDecodingParams.h@1020a8d).
        # With no end token there is nothing for min_tokens to hold back; so in both modes such a
        # request's stop_token_ids are not held back either (the CPU engine's min_tokens masks them).
        if "min_tokens" in declared:
            a["min_tokens"] = _scalar(0, np.int32)
    elif s.min_tokens and need("min_tokens", "min_tokens", False):
        a["min_tokens"] = _scalar(s.min_tokens, np.int32)
    if s.logprobs:
        a["return_log_probs"] = _scalar(True, bool)
    if s.report_cached_tokens and "return_perf_metrics" in declared:
        # TensorRT-LLM reports prompt-cache hits only as perf metrics (kv_cache_reused_blocks).
        a["return_perf_metrics"] = _scalar(True, bool)
    if s.top_logprobs and need("top_logprobs", "num_top_log_probs", False):
        a["num_top_log_probs"] = _scalar(s.top_logprobs, np.int32)
    if s.logit_bias and need("logit_bias", "embedding_bias", False):
        bias = np.zeros((1, s.vocab_size), dtype=np.float32)
        for tid, value in s.logit_bias.items():
            bias[0, tid] = value
        a["embedding_bias"] = bias
    # The scope is sent wherever the decoder can take it. One it cannot take is refused only when the
    # client asked for it by name (`cache_salt`); the per-key scope a decoder without the input
    # cannot honour is the operator's to know about (the frontend logs it, docs/GPU.md).
    if s.cache_salt is not None and need("cache_salt", "cache_salt_id", not s.cache_salt_asked):
        a["cache_salt_id"] = _scalar(s.cache_salt % UINT64, np.uint64)
    # A decoder without the input schedules first come, first served: only the default is honoured there.
    if need("priority", "priority", s.priority == 0):
        a["priority"] = _scalar(s.priority, np.int32)
    if s.guide_type is not None and need("response_format", "guided_decoding_guide_type", False):
        a["guided_decoding_guide_type"] = np.asarray([[s.guide_type.encode()]], dtype=object)
        a["guided_decoding_guide"] = np.asarray([[(s.guide or "").encode()]], dtype=object)
    return a
