"""Decoder side of the wire: TensorRT-LLM's `tensorrt_llm` input tensors -> the engine's request,
the engine's outputs -> response tensors (the frontend's side is llama_triton/trtllm/request_encoding.py).

Kept out of the decoder model so it is tested without Triton: the model passes a getter for its
inputs and gets plain numpy arrays back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from llama_triton.backend import trtllm_emulation
from llama_triton.contract import GUIDE_TYPES, STOP_INPUT, RequestError
from llama_triton.engine.types import GenerationRequest, SamplingParams, SequenceOutput
from llama_triton.trtllm.word_lists import WordListError, from_word_list

Getter = Callable[[str], Optional[np.ndarray]]
UINT64 = 1 << 64


@dataclass
class StopRequest:
    request_id: str


def _scalar(get: Getter, name: str, kind: type, default):
    arr = get(name)
    if arr is None:
        return default
    arr = np.asarray(arr)
    if arr.size != 1:
        raise RequestError(f"{name}: expected one value per request, got shape {list(arr.shape)}")
    value = arr.reshape(-1)[0]
    if kind is float:
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            raise RequestError(f"{name}: must be a finite number, got {value}")
        return value
    if kind is bool:
        return bool(value)
    return int(value)


def _string(get: Getter, name: str) -> Optional[str]:
    arr = get(name)
    if arr is None:
        return None
    flat = np.asarray(arr, dtype=object).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name}: expected one string, got {flat.size}")
    v = flat[0]
    try:
        return v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
    except UnicodeDecodeError:
        raise RequestError(f"{name}: not valid UTF-8") from None


def _words(get: Getter, name: str, trtllm: bool = False) -> list[list[int]]:
    arr = get(name)
    if arr is None:
        return []
    if trtllm:      # checked by trtllm_emulation.enqueue_error already, upstream's way
        return [w for w in trtllm_emulation.convert_word_list(np.asarray(arr).reshape(-1).tolist()) if w]
    try:
        return from_word_list(arr)
    except WordListError as e:
        raise RequestError(f"{name}: {e}") from None


def parse_request(get: Getter, request_id: str, *, exclude_input_default: bool = True, trtllm: bool = False
                  ) -> tuple[GenerationRequest | StopRequest, bool]:
    """Returns the request and whether its output must exclude the prompt.

    `trtllm`: TensorRT-LLM's defaults and error texts (llama_triton/backend/trtllm_emulation.py).
    """
    if _scalar(get, STOP_INPUT, bool, False):
        return StopRequest(request_id), True
    if trtllm:
        # TensorRT-LLM's refusals first, in its words; the CPU engine's stricter checks follow.
        error = trtllm_emulation.enqueue_error(get)
        if error:
            raise RequestError(error)
    ids = get("input_ids")
    if ids is None:
        raise RequestError("input_ids: required")
    ids = np.asarray(ids).reshape(-1)
    # TensorRT-LLM reads input_lengths only to split a batched request; one request is all of input_ids.
    length = len(ids) if trtllm else _scalar(get, "input_lengths", int, len(ids))
    if length < 1 or length > len(ids):
        raise RequestError(f"input_lengths: {length} does not fit input_ids of length {len(ids)}")
    out_len = get("request_output_len")
    if out_len is None:
        raise RequestError(trtllm_emulation.MISSING_OUTPUT_LEN if trtllm else "request_output_len: required")
    max_new = _scalar(get, "request_output_len", int, 0)
    if max_new < 0:
        raise RequestError(f"request_output_len: must be >= 0, got {max_new}")
    beam_width = _scalar(get, "beam_width", int, 1)
    if beam_width != 1:
        raise RequestError(f"beam_width: the CPU decoder samples (beam_width 1), got {beam_width}")
    bias = get("embedding_bias")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        if bias.size == 0:
            bias = None
        elif not np.all(np.isfinite(bias)):
            raise RequestError("embedding_bias: must be finite")
    guide_type = _string(get, "guided_decoding_guide_type")
    guide = _string(get, "guided_decoding_guide")
    if guide_type == "":
        guide_type = None
    if trtllm and guide_type is not None and guide_type not in GUIDE_TYPES:
        # TensorRT-LLM maps only its four names and drops any other without a word, so the request
        # runs unguided (utils.cc getGuidedDecodingParamsFromTensors); the frontend never sends one.
        guide_type = guide = None
    if guide_type is not None and guide_type not in GUIDE_TYPES:
        raise RequestError(f"guided_decoding_guide_type: {guide_type!r} is not one of {', '.join(GUIDE_TYPES)}")
    if guide_type is not None and guide_type != "json" and not guide:
        raise RequestError(f"guided_decoding_guide: required for guide type {guide_type}")
    end_id = _scalar(get, "end_id", int, None)
    top_k = _scalar(get, "runtime_top_k", int, None)
    top_p = _scalar(get, "runtime_top_p", float, None)
    if trtllm:
        top_k, top_p = trtllm_emulation.sampling_top_k_top_p(top_k, top_p)
    params = SamplingParams(
        max_new_tokens=max_new,
        temperature=_scalar(get, "temperature", float, 1.0),
        top_k=0 if top_k is None else top_k,
        top_p=1.0 if top_p is None else top_p,
        min_p=_scalar(get, "min_p", float, 0.0),
        repetition_penalty=_scalar(get, "repetition_penalty", float, 1.0),
        presence_penalty=_scalar(get, "presence_penalty", float, 0.0),
        frequency_penalty=_scalar(get, "frequency_penalty", float, 0.0),
        # Absent: 0 in both modes, TensorRT-LLM's fixed default (trtllm_emulation.DEFAULT_SEED).
        seed=_scalar(get, "seed", int, trtllm_emulation.DEFAULT_SEED) % UINT64,
        end_id=end_id if end_id is not None and end_id >= 0 else None,
        stop_words=_words(get, "stop_words_list", trtllm),
        bad_words=_words(get, "bad_words_list", trtllm),
        min_tokens=_scalar(get, "min_tokens", int, 0),
        num_return_sequences=_scalar(get, "num_return_sequences", int, 1),
        return_log_probs=_scalar(get, "return_log_probs", bool, False),
        top_logprobs=_scalar(get, "num_top_log_probs", int, 0),
        embedding_bias=bias,
        guide_type=guide_type,
        guide=guide,
    )
    exclude = _scalar(get, "exclude_input_in_output", bool, exclude_input_default)
    streaming = _scalar(get, "streaming", bool, False)
    salt = _scalar(get, "cache_salt_id", int, None)
    return GenerationRequest(request_id, ids[:length].astype(np.int64).tolist(), params, streaming,
                             cache_salt=None if salt is None else salt % UINT64,
                             priority=_scalar(get, "priority", int, 0),
                             tenant_rank=_scalar(get, "tenant_rank", int, 0)), exclude


def output_arrays(out: SequenceOutput, *, prompt_ids: Optional[list[int]], with_log_probs: bool,
                  num_top: int, declared: frozenset[str], cum_log_prob: Optional[float] = None
                  ) -> dict[str, np.ndarray]:
    """One response's tensors, shaped as TensorRT-LLM sends them (batch 1, beam 1)."""
    tokens = list(out.token_ids)
    if prompt_ids:
        tokens = list(prompt_ids) + tokens
    # Only what the caller declared/requested is built: this runs once per streamed response.
    arrays: dict[str, np.ndarray] = {"output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1)}
    if "sequence_length" in declared:
        arrays["sequence_length"] = np.asarray([[len(tokens)]], dtype=np.int32)
    if "sequence_index" in declared:
        arrays["sequence_index"] = np.asarray([[out.sequence_index]], dtype=np.int32)
    if with_log_probs:
        lps = out.log_probs or []
        arrays["output_log_probs"] = np.asarray(lps, dtype=np.float32).reshape(1, 1, -1)
        total = float(sum(lps)) if cum_log_prob is None else cum_log_prob
        arrays["cum_log_probs"] = np.asarray([[total]], dtype=np.float32)
    if num_top > 0 and out.top_logprobs is not None:
        n = len(out.top_logprobs)
        ids = np.zeros((1, 1, n, num_top), dtype=np.int32)
        vals = np.full((1, 1, n, num_top), -np.inf, dtype=np.float32)
        for i, alts in enumerate(out.top_logprobs):
            for j, (tid, lp) in enumerate(alts[:num_top]):
                ids[0, 0, i, j] = tid
                vals[0, 0, i, j] = lp
        arrays["top_log_prob_ids"] = ids
        arrays["top_log_probs"] = vals
    if "num_reused_tokens" in declared:
        arrays["num_reused_tokens"] = np.asarray([[out.num_reused_tokens]], dtype=np.int32)
    if "is_final" in declared:
        arrays["is_final"] = np.asarray([[out.finished]], dtype=bool)
    return arrays if len(arrays) == len(declared) else {k: v for k, v in arrays.items() if k in declared}
