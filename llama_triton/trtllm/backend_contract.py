"""TensorRT-LLM 1.2.1's C++ `tensorrtllm` backend, as a contract: what a served `tensorrt_llm`
config must declare, and what every request to it must carry.

The frontend checks the served config against it at start-up and refuses to serve on a mismatch
(`config_problems`); every request asks for `REQUIRED_OUTPUTS`; the wire test
(tests/integration/test_wire_contract.py) checks each recorded request with `request_problems`.

Upstream, read for this module (docs/GPU.md section 5.2 has the full evidence). The v1.2.1 tag is
NVIDIA/TensorRT-LLM commit 376f7e1; the index read here stores these files at neighbouring
commits only, named in each citation, whose tensor lists are identical to each other:
  - triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt @0c8de69 and @2a9abd9:
    every input and output below, with its data type and dims;
  - triton_backend/inflight_batcher_llm/src/model_instance_state.cc @c8c6df0, fillTritonResponse:
    `TLLM_THROW("%s tensor must be present in list of output tensors", ...)` for output_ids, then
    sequence_length, when the request's output list (utils.cc getRequestOutputNames: exactly the
    outputs the client asked for) lacks them (tensorrtllm_backend c2e65b8 has the same code at
    inflight_batcher_llm/src/model_instance_state.cc:1079-1103);
  - triton_backend/inflight_batcher_llm/src/utils.cc @c8c6df0, getGuidedDecodingParamsFromTensors:
    a guide type outside json/json_schema/regex/ebnf_grammar is dropped without an error, i.e. the
    request runs unguided;
  - utils.cc createRequestsFromInputTensors: streaming needs a decoupled model ("Streaming is only
    supported if model is deployed using decoupled mode.");
  - executor/executorImpl.cpp @b35ac1b fetchNewRequests: a guided request on an executor without
    a GuidedDecodingConfig fails ("GuidedDecoder is not setup"); the backend builds that config
    only when `guided_decoding_backend` and `xgrammar_tokenizer_info_path` are set
    (model_instance_state.cc @c8c6df0 getGuidedDecodingConfigFromParams).
"""
from __future__ import annotations

from typing import Iterable, Optional

from llama_triton.contract import GUIDE_TYPES, STOP_INPUT

# The release this repository targets, and the NGC Triton image that carries it (NGC 26.04-26.07
# ship TensorRT-LLM 1.2.1: triton-inference-server/server docs/introduction/compatibility.md).
TRTLLM_RELEASE = "v1.2.1"               # the tag is commit 376f7e1 (what the citations name)
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
# The xgrammar TensorRT-LLM v1.2.1 pins (requirements.txt at the tag): the engine compiles guides with it.
ENGINE_XGRAMMAR = "0.1.32"

# Every request must ask for both, whatever else it reads: the backend throws at the first
# response otherwise, and that response is the request's last.
REQUIRED_OUTPUTS = ("output_ids", "sequence_length")
# The backend maps only GUIDE_TYPES (utils.cc getGuidedDecodingParamsFromTensors); any other is ignored.

ANY = None      # a data type the upstream template leaves to a ${placeholder}
_S, _V, _M = (1,), (-1,), (-1, -1)

# name -> (data type, dims) of every input the 1.2.1 `tensorrt_llm` config declares (config.pbtxt
# @0c8de69 and @2a9abd9). input_lengths and request_output_len are the only non-optional ones.
UPSTREAM_INPUTS: dict[str, tuple[Optional[str], tuple[int, ...]]] = {
    "input_ids": ("TYPE_INT32", _V), "encoder_input_features": (ANY, _M),
    "encoder_output_lengths": ("TYPE_INT32", _S), "input_lengths": ("TYPE_INT32", _S),
    "request_output_len": ("TYPE_INT32", _S), "num_return_sequences": ("TYPE_INT32", _S),
    "draft_input_ids": ("TYPE_INT32", _V), "decoder_input_ids": ("TYPE_INT32", _V),
    "decoder_input_lengths": ("TYPE_INT32", _S), "draft_logits": (ANY, _M),
    "draft_acceptance_threshold": ("TYPE_FP32", _S), "end_id": ("TYPE_INT32", _S), "pad_id": ("TYPE_INT32", _S),
    "stop_words_list": ("TYPE_INT32", (2, -1)), "bad_words_list": ("TYPE_INT32", (2, -1)),
    "embedding_bias": ("TYPE_FP32", _V), "beam_width": ("TYPE_INT32", _S), "temperature": ("TYPE_FP32", _S),
    "runtime_top_k": ("TYPE_INT32", _S), "runtime_top_p": ("TYPE_FP32", _S),
    "runtime_top_p_min": ("TYPE_FP32", _S), "runtime_top_p_decay": ("TYPE_FP32", _S),
    "runtime_top_p_reset_ids": ("TYPE_INT32", _S), "len_penalty": ("TYPE_FP32", _S),
    "early_stopping": ("TYPE_BOOL", _S), "repetition_penalty": ("TYPE_FP32", _S),
    "min_tokens": ("TYPE_INT32", _S), "beam_search_diversity_rate": ("TYPE_FP32", _S),
    "presence_penalty": ("TYPE_FP32", _S), "frequency_penalty": ("TYPE_FP32", _S), "seed": ("TYPE_UINT64", _S),
    "return_log_probs": ("TYPE_BOOL", _S), "return_context_logits": ("TYPE_BOOL", _S),
    "return_generation_logits": ("TYPE_BOOL", _S), "return_perf_metrics": ("TYPE_BOOL", _S),
    "return_num_input_tokens": ("TYPE_BOOL", _S), "return_num_output_tokens": ("TYPE_BOOL", _S),
    "exclude_input_in_output": ("TYPE_BOOL", _S), "stop": ("TYPE_BOOL", _S), "streaming": ("TYPE_BOOL", _S),
    "prompt_embedding_table": (ANY, _M), "prompt_table_extra_ids": ("TYPE_UINT64", _V),
    "prompt_vocab_size": ("TYPE_INT32", _S), "cross_attention_mask": ("TYPE_BOOL", _M),
    "mrope_rotary_cos_sin": ("TYPE_FP32", _V), "mrope_position_deltas": ("TYPE_INT64", _S),
    "lora_task_id": ("TYPE_UINT64", _S), "lora_weights": ("TYPE_FP16", _M), "lora_config": ("TYPE_INT32", (-1, 3)),
    "context_phase_params": ("TYPE_UINT8", _V), "skip_cross_attn_blocks": ("TYPE_BOOL", _S),
    "retention_token_range_starts": ("TYPE_INT32", _V), "retention_token_range_ends": ("TYPE_INT32", _V),
    "retention_token_range_priorities": ("TYPE_INT32", _V),
    "retention_token_range_durations_ms": ("TYPE_INT32", _V),
    "retention_decode_priority": ("TYPE_INT32", _S), "retention_decode_duration_ms": ("TYPE_INT32", _S),
    "guided_decoding_guide_type": ("TYPE_STRING", _S), "guided_decoding_guide": ("TYPE_STRING", _S),
    "lookahead_window_size": ("TYPE_INT32", _S), "lookahead_ngram_size": ("TYPE_INT32", _S),
    "lookahead_verification_set_size": ("TYPE_INT32", _S),
}

REQUIRED_INPUTS = ("input_lengths", "request_output_len")

UPSTREAM_OUTPUTS: dict[str, tuple[Optional[str], tuple[int, ...]]] = {
    "output_ids": ("TYPE_INT32", _M), "sequence_length": ("TYPE_INT32", _V), "cum_log_probs": ("TYPE_FP32", _V),
    "output_log_probs": ("TYPE_FP32", _M), "context_logits": (ANY, _M), "generation_logits": (ANY, (-1, -1, -1)),
    "batch_index": ("TYPE_INT32", _S), "sequence_index": ("TYPE_INT32", _S), "context_phase_params": ("TYPE_UINT8", _V),
    "kv_cache_alloc_new_blocks": ("TYPE_INT32", _S), "kv_cache_reused_blocks": ("TYPE_INT32", _S),
    "kv_cache_alloc_total_blocks": ("TYPE_INT32", _S), "arrival_time_ns": ("TYPE_INT64", _S),
    "first_scheduled_time_ns": ("TYPE_INT64", _S), "first_token_time_ns": ("TYPE_INT64", _S),
    "last_token_time_ns": ("TYPE_INT64", _S), "acceptance_rate": ("TYPE_FP32", _S),
    "total_accepted_draft_tokens": ("TYPE_INT32", _S), "total_draft_tokens": ("TYPE_INT32", _S),
    "num_input_tokens": ("TYPE_INT32", _S), "num_output_tokens": ("TYPE_INT32", _S),
}

# With return_perf_metrics the backend writes these on every response, asked for or not
# (fillTritonResponse, processStats); one the config lacks fails the request.
PERF_METRIC_OUTPUTS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                       "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                       "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens")

# What the frontend sends on every generation request (llama_triton/trtllm/request_encoding.py).
ALWAYS_SENT_INPUTS = ("input_ids", "input_lengths", "request_output_len", "streaming", "exclude_input_in_output",
                      "seed", "temperature", "runtime_top_k")

# Triton's wire names of the config's data types (ModelInferRequest.InferInputTensor.datatype).
WIRE_DATATYPE = {"TYPE_BOOL": "BOOL", "TYPE_UINT8": "UINT8", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64",
                 "TYPE_UINT64": "UINT64", "TYPE_FP16": "FP16", "TYPE_FP32": "FP32", "TYPE_STRING": "BYTES"}


def follows_trtllm(cfg: dict) -> bool:
    """A served `tensorrt_llm` config behind which TensorRT-LLM's backend answers: the backend
    itself, or the CPU decoder in GPU mode (parameter emulate_tensorrt_llm)."""
    params = _parameters(cfg)
    return cfg.get("backend") == "tensorrtllm" or params.get("emulate_tensorrt_llm") == "true"


def required_outputs(cfg: dict) -> tuple[str, ...]:
    """The outputs every request to this decoder must ask for, whatever it reads."""
    return REQUIRED_OUTPUTS if follows_trtllm(cfg) else ("output_ids",)


def pipeline_parallel_size(cfg: dict) -> int:
    """Our own config parameter (the backend ignores keys it does not read), rendered from the
    engine's layout: with PP stages the executor keeps PP x max_batch_size requests in flight
    (batch_manager/trtGptModel.h @c8c6df0: `mMaxNumSequences = mMaxBatchSize *
    worldConfig.getPipelineParallelism()`, the capacity scheduler's limit)."""
    value = _parameters(cfg).get("pipeline_parallel_size") or ""
    return int(value) if value.isdigit() and int(value) > 0 else 1


def config_problems(cfg: dict) -> list[str]:
    """Every way the served config (Triton's model config as JSON) breaks the 1.2.1 contract, each
    naming the tensor or parameter; empty when it holds or when the decoder is not TensorRT-LLM's."""
    if not follows_trtllm(cfg):
        return []
    problems: list[str] = []
    inputs = {i["name"]: i for i in cfg.get("input", [])}
    outputs = {o["name"]: o for o in cfg.get("output", [])}
    for name, spec in inputs.items():
        problems += _tensor_problems("input", name, spec, UPSTREAM_INPUTS)
    for name, spec in outputs.items():
        problems += _tensor_problems("output", name, spec, UPSTREAM_OUTPUTS)
    for name in ALWAYS_SENT_INPUTS:
        if name not in inputs:
            problems.append(f"input '{name}' is not declared: every request carries it")
    for name in REQUIRED_OUTPUTS:
        if name not in outputs:
            problems.append(f"output '{name}' is not declared: the backend fails every request that does not "
                            "ask for it")
    if "return_perf_metrics" in inputs:
        for name in PERF_METRIC_OUTPUTS:
            if name not in outputs:
                problems.append(f"output '{name}' is not declared: with return_perf_metrics the backend writes "
                                "it on every response and fails the request")
    if not cfg.get("model_transaction_policy", {}).get("decoupled", False):
        problems.append("model_transaction_policy.decoupled is not true: the backend refuses streaming requests")
    if cfg.get("backend") == "tensorrtllm" and "guided_decoding_guide_type" in inputs:
        params = _parameters(cfg)
        for key, want in (("guided_decoding_backend", "xgrammar"), ("xgrammar_tokenizer_info_path", None)):
            value = params.get(key) or ""
            if not value or value.startswith("${") or (want is not None and value != want):
                problems.append(f"parameter '{key}' is {value!r}: without it the executor has no guided "
                                "decoder and fails every guided request")
    return problems


def request_problems(inputs: Iterable[tuple[str, str, tuple[int, ...]]], outputs: Optional[Iterable[str]],
                     guide_type: Optional[str] = None) -> list[str]:
    """What is wrong with one request to the backend: `inputs` as (name, wire datatype, shape),
    `outputs` the requested output names (None: the client asked for none, so Triton sends all).
    A stop request (stop=true) is answered before its outputs are looked at."""
    problems: list[str] = []
    names = set()
    for name, datatype, shape in inputs:
        names.add(name)
        if name not in UPSTREAM_INPUTS:
            problems.append(f"input '{name}' is not one the backend declares")
            continue
        want = UPSTREAM_INPUTS[name][0]
        if want is not None and WIRE_DATATYPE[want] != datatype:
            problems.append(f"input '{name}' is {datatype}, the backend declares {WIRE_DATATYPE[want]}")
    stop = STOP_INPUT in names
    if outputs is not None and not stop:
        asked = set(outputs)
        for name in REQUIRED_OUTPUTS:
            if name not in asked:
                problems.append(f"output '{name}' is not asked for")
        for name in asked - set(UPSTREAM_OUTPUTS):
            problems.append(f"output '{name}' is not one the backend declares")
    if guide_type is not None and guide_type not in GUIDE_TYPES:
        problems.append(f"guide type {guide_type!r} is not one the backend reads (it would run unguided)")
    for name in REQUIRED_INPUTS:
        if name not in names:
            problems.append(f"input '{name}' is required and missing (Triton refuses the request)")
    return problems


def _parameters(cfg: dict) -> dict[str, str]:
    params = cfg.get("parameters", {}) or {}
    return {k: (v.get("string_value") if isinstance(v, dict) else v) or "" for k, v in params.items()}


def _tensor_problems(kind: str, name: str, spec: dict, upstream: dict) -> list[str]:
    if name not in upstream:
        why = ("requests would lose what it carries without an error" if kind == "input"
               else "requests would ask for an output the backend never writes")
        return [f"{kind} '{name}' is not one the {TRTLLM_RELEASE} backend declares: {why}"]
    dtype, dims = upstream[name]
    problems = []
    if dtype is not None and spec.get("data_type") != dtype:
        problems.append(f"{kind} '{name}' is {spec.get('data_type')}, the backend declares {dtype}")
    got = tuple(int(d) for d in spec.get("dims", []))
    if got != dims:
        problems.append(f"{kind} '{name}' has dims {list(got)}, the backend declares {list(dims)}")
    return problems
