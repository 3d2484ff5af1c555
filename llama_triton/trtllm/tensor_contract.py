"""The decoder's tensor contract: TensorRT-LLM's `tensorrt_llm` model names, CPU and GPU lists.

One table drives three things: the `tensorrt_llm` config's input/output blocks, the ensemble's
wiring (a tensor the rendered decoder does not declare never appears in the ensemble), and the
frontend's check of which request fields a deployment can honour.

Names follow TensorRT-LLM v0.20+ (`seed`, `min_tokens`; `random_seed` / `min_length` before); the GPU
list is a subset of what the targeted release's backend declares, with the same types and dims
(llama_triton/trtllm/backend_contract.py, checked by tests/unit/test_backend_contract.py).
Dims exclude the batch dimension (the models have max_batch_size > 0, like TensorRT-LLM's).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from llama_triton.trtllm.backend_contract import TRTLLM_RELEASE  # noqa: F401 - re-exported


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str                      # Triton config dtype, e.g. TYPE_INT32
    dims: tuple[int, ...]
    optional: bool = True
    ensemble_name: Optional[str] = None   # name of the ensemble input/output that feeds it
    from_preprocessing: Optional[str] = None  # preprocessing output that feeds it instead
    reshape_scalar: bool = False          # dims [1] inputs that TensorRT-LLM reshapes to scalars
    to_postprocessing: Optional[str] = None   # decoder output that postprocessing also reads
    # Inputs whose length differs between requests: TensorRT-LLM's config marks them
    # allow_ragged_batch (tensorrtllm_backend c2e65b8 all_models/inflight_batcher_llm/tensorrt_llm/
    # config.pbtxt:46,136,143,150,452,459) so Triton may batch requests of different lengths.
    ragged: bool = False


def _scalar(name: str, dtype: str, ensemble_name: Optional[str] = None, **kw) -> Tensor:
    return Tensor(name, dtype, (1,), ensemble_name=ensemble_name, reshape_scalar=True, **kw)


# Inputs both decoders declare.
COMMON_INPUTS: tuple[Tensor, ...] = (
    # Optional as upstream declares it (config.pbtxt:43-48; encoder models send
    # encoder_input_features instead): a request without it gets the decoder's own error.
    Tensor("input_ids", "TYPE_INT32", (-1,), from_preprocessing="INPUT_ID", ragged=True),
    _scalar("input_lengths", "TYPE_INT32", optional=False, from_preprocessing="REQUEST_INPUT_LEN"),
    _scalar("request_output_len", "TYPE_INT32", optional=False, from_preprocessing="REQUEST_OUTPUT_LEN"),
    _scalar("num_return_sequences", "TYPE_INT32", "num_return_sequences"),
    _scalar("end_id", "TYPE_INT32", from_preprocessing="OUT_END_ID"),
    _scalar("pad_id", "TYPE_INT32", from_preprocessing="OUT_PAD_ID"),
    Tensor("stop_words_list", "TYPE_INT32", (2, -1), from_preprocessing="STOP_WORDS_IDS", ragged=True),
    Tensor("bad_words_list", "TYPE_INT32", (2, -1), from_preprocessing="BAD_WORDS_IDS", ragged=True),
    Tensor("embedding_bias", "TYPE_FP32", (-1,), from_preprocessing="EMBEDDING_BIAS", ragged=True),
    _scalar("beam_width", "TYPE_INT32", "beam_width"),
    _scalar("temperature", "TYPE_FP32", "temperature"),
    _scalar("runtime_top_k", "TYPE_INT32", "top_k"),
    _scalar("runtime_top_p", "TYPE_FP32", "top_p"),
    _scalar("repetition_penalty", "TYPE_FP32", "repetition_penalty"),
    _scalar("presence_penalty", "TYPE_FP32", "presence_penalty"),
    _scalar("frequency_penalty", "TYPE_FP32", "frequency_penalty"),
    _scalar("min_tokens", "TYPE_INT32", "min_tokens"),
    _scalar("seed", "TYPE_UINT64", "seed"),
    _scalar("return_log_probs", "TYPE_BOOL", "return_log_probs"),
    _scalar("exclude_input_in_output", "TYPE_BOOL", "exclude_input_in_output"),
    _scalar("stop", "TYPE_BOOL"),
    _scalar("streaming", "TYPE_BOOL", "stream"),
    Tensor("guided_decoding_guide_type", "TYPE_STRING", (1,), ensemble_name="guided_decoding_guide_type",
           ragged=True),
    Tensor("guided_decoding_guide", "TYPE_STRING", (1,), ensemble_name="guided_decoding_guide", ragged=True),
)

# Only the CPU reference decoder has these (TensorRT-LLM's C++ backend lacks min_p and top-N
# log-probs; see reference notes section 1.1).
CPU_ONLY_INPUTS: tuple[Tensor, ...] = (
    _scalar("min_p", "TYPE_FP32", "min_p"),
    _scalar("num_top_log_probs", "TYPE_INT32", "num_top_log_probs"),
    # The prefix-cache scope, a uint64 as TensorRT-LLM's executor `Request::setCacheSaltID` takes it:
    # prompt blocks are reused only between requests with the same salt (the frontend sends one per
    # API key). The C++ backend builds its executor Request without one and reads no such input
    # (docs/GPU.md, "Cache isolation"), so the GPU list lacks it and the frontend knows it cannot salt.
    # The LLM-API decoder declares this list and passes it on as the LLM's `cache_salt`.
    _scalar("cache_salt_id", "TYPE_UINT64"),
)

# The CPU decoder's waiting order (llama_triton/engine/scheduler.py): by `priority` (the request's
# field, as vLLM's: lower first), then `tenant_rank` (the frontend's fair share, frontend/tenancy/fair_share.py:
# how many requests the key already had open), then arrival. TensorRT-LLM's C++ backend reads no
# request-priority input (its input names: triton_backend/inflight_batcher_llm/src/utils.h
# InputFieldsNames@14c3afe, not the tag; tensorrtllm_backend inflight_batcher_llm/src/utils.h:60-130
# @c2e65b8 has only the KV-retention priorities), and the LLM API's generate_async takes none
# (tensorrt_llm/llmapi/llm.py@4c05a74: scheduling_params, cache_salt, no priority): neither GPU
# list declares these, so `priority` is refused there and the fair order holds in the frontend only.
PRIORITY = "priority"
TENANT_RANK = "tenant_rank"
SCHEDULING_INPUTS: tuple[Tensor, ...] = (
    _scalar(PRIORITY, "TYPE_INT32"),
    _scalar(TENANT_RANK, "TYPE_INT32"),
)

# Only the GPU backend has these (beam search, decaying top-p, perf metrics).
# Not declared although upstream's config has them (tensorrtllm_backend c2e65b8, issue 11):
# - runtime_top_p_min: the backend reads "runtime_top_k_min" instead
#   (inflight_batcher_llm/src/utils.h:86), so the declared name does nothing; we never send it.
# - lora_task_id/lora_weights/lora_config, return_context_logits/return_generation_logits: our
#   engine build enables neither LoRA nor gathered logits (build/engine.py), so they cannot work.
GPU_ONLY_INPUTS: tuple[Tensor, ...] = (
    _scalar("runtime_top_p_decay", "TYPE_FP32"),
    _scalar("runtime_top_p_reset_ids", "TYPE_INT32"),
    _scalar("len_penalty", "TYPE_FP32", "length_penalty"),
    _scalar("early_stopping", "TYPE_BOOL"),
    _scalar("beam_search_diversity_rate", "TYPE_FP32"),
    _scalar("return_perf_metrics", "TYPE_BOOL", "return_perf_metrics"),
)

COMMON_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("output_ids", "TYPE_INT32", (-1, -1), ensemble_name="output_ids", to_postprocessing="TOKENS_BATCH"),
    Tensor("sequence_length", "TYPE_INT32", (-1,), ensemble_name="sequence_length",
           to_postprocessing="SEQUENCE_LENGTH"),
    Tensor("cum_log_probs", "TYPE_FP32", (-1,), ensemble_name="cum_log_probs"),
    Tensor("output_log_probs", "TYPE_FP32", (-1, -1), ensemble_name="output_log_probs"),
    Tensor("batch_index", "TYPE_INT32", (1,), ensemble_name="batch_index"),
    Tensor("sequence_index", "TYPE_INT32", (1,), ensemble_name="sequence_index", to_postprocessing="SEQUENCE_INDEX"),
)

CPU_ONLY_OUTPUTS: tuple[Tensor, ...] = (
    # [beams, tokens, N] alternatives per generated token, best first.
    Tensor("top_log_probs", "TYPE_FP32", (-1, -1, -1), ensemble_name="top_log_probs"),
    Tensor("top_log_prob_ids", "TYPE_INT32", (-1, -1, -1), ensemble_name="top_log_prob_ids"),
    # Prompt tokens served from the prefix cache (sent with the first response of a sequence).
    Tensor("num_reused_tokens", "TYPE_INT32", (1,), ensemble_name="num_reused_tokens"),
    # True on a sequence's last response. TensorRT-LLM signals this only with the response's
    # FINAL flag, which an ensemble's postprocessing cannot see; with it, postprocessing flushes
    # a trailing incomplete UTF-8 sequence exactly as the non-streamed text shows it.
    Tensor("is_final", "TYPE_BOOL", (1,), to_postprocessing="IS_FINAL"),
)

# With return_perf_metrics the backend writes every one of these on every response, requested or
# not (model_instance_state.cc:1255-1306 at c2e65b8); one the config lacks fails the request
# ("Could not get response output for output tensor ...", utils.h:331).
PERF_METRIC_OUTPUTS: tuple[Tensor, ...] = (
    Tensor("kv_cache_alloc_new_blocks", "TYPE_INT32", (1,), ensemble_name="kv_cache_alloc_new_blocks"),
    Tensor("kv_cache_reused_blocks", "TYPE_INT32", (1,), ensemble_name="kv_cache_reused_blocks"),
    Tensor("kv_cache_alloc_total_blocks", "TYPE_INT32", (1,), ensemble_name="kv_cache_alloc_total_blocks"),
    Tensor("arrival_time_ns", "TYPE_INT64", (1,)),
    Tensor("first_scheduled_time_ns", "TYPE_INT64", (1,)),
    Tensor("first_token_time_ns", "TYPE_INT64", (1,)),
    Tensor("last_token_time_ns", "TYPE_INT64", (1,)),
    Tensor("acceptance_rate", "TYPE_FP32", (1,)),
    Tensor("total_accepted_draft_tokens", "TYPE_INT32", (1,)),
    Tensor("total_draft_tokens", "TYPE_INT32", (1,)),
)

GPU_ONLY_OUTPUTS: tuple[Tensor, ...] = PERF_METRIC_OUTPUTS + (
    # Written for disaggregated context-only requests; declared as upstream does (config.pbtxt:525).
    Tensor("context_phase_params", "TYPE_UINT8", (-1,)),
)

DECODER_IO = {
    # The CPU reference decoder with everything it can do.
    "cpu": (COMMON_INPUTS + CPU_ONLY_INPUTS + SCHEDULING_INPUTS, COMMON_OUTPUTS + CPU_ONLY_OUTPUTS),
    # The LLM-API decoder: the CPU list (min_p, top-N log-probs and the cache salt work through it)
    # without the scheduling inputs, which the LLM API has no argument for.
    "llmapi": (COMMON_INPUTS + CPU_ONLY_INPUTS, COMMON_OUTPUTS + CPU_ONLY_OUTPUTS),
    # What TensorRT-LLM's `tensorrtllm` backend declares. Rendering the CPU decoder with this list
    # gives a CPU stack that refuses exactly what a GPU deployment refuses.
    "gpu": (COMMON_INPUTS + GPU_ONLY_INPUTS, COMMON_OUTPUTS + GPU_ONLY_OUTPUTS),
}


def decoder_io(name: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    try:
        return DECODER_IO[name]
    except KeyError:
        raise ValueError(f"unknown decoder tensor list {name!r}; choose from {sorted(DECODER_IO)}") from None
