"""The CPU decoder's GPU mode: what a client of TensorRT-LLM's C++ `tensorrtllm` backend observes.

When the repository renders the CPU decoder with TensorRT-LLM's tensor list (`--decoder-io gpu`,
parameter `emulate_tensorrt_llm`), llama_triton/backend/decoder_model.py routes requests and
responses through this module, so the suite's GPU-mode runs fail where a GPU deployment would,
with the backend's words. docs/GPU.md section 5.3 lists every error path of the backend's request
handling at the targeted release (v1.2.1) and which of them this module emulates.

Citations (docs/GPU.md 5.2 has the commits in full):

  TB = NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/ (the C++ backend since v0.20),
       read at c8c6df0 (utils.cc, model_instance_state.cc) and 89fd9b7 (utils.h): the index stores
       no copy at the v1.2.1 tag 376f7e1. Function names are given; line numbers are those of the
       same code in tensorrtllm_backend c2e65b8 (BE), read whole from its repository.
  TL = NVIDIA/TensorRT-LLM cpp/tensorrt_llm/ (executor, batch manager, sampling layers), at the
       stored commits named in each citation.

What TensorRT-LLM appends to its exception texts (" (<source file>:<line>)" and a stack trace,
TL common/tllmException.cpp@015884d TllmException) is build-specific and not emulated: the texts
here are the messages those begin with.
"""
from __future__ import annotations

import itertools
import time
from typing import Optional

import numpy as np

from llama_triton.engine.types import SequenceOutput
from llama_triton.trtllm.tensor_contract import PERF_METRIC_OUTPUTS

PERF_METRIC_NAMES = tuple(t.name for t in PERF_METRIC_OUTPUTS)
_executor_ids = itertools.count(1)


def sampling_top_k_top_p(top_k: Optional[int], top_p: Optional[float]) -> tuple[int, float]:
    """TensorRT-LLM's effective (top_k, top_p) for the inputs given (None: absent).

    BE utils.cc:555-563: both optional, a top_p <= 0 is dropped. TL
    layers/defaultDecodingParams.h:63-71@1020a8d and layers/topKSamplingLayer.cpp:73-74,100@0396172:
    absent means top_k 0 and top_p 0.0. TL kernels/samplingTopKKernels.cu:376-391@0396172
    (setupTopKRuntimeArgs): `k == 0 && p == 0` becomes k = 1 (greedy) and `k > 0 && p == 0`
    becomes p = 1.0. The CPU engine reads top_p 1.0 as off.
    """
    p = top_p if top_p is not None and top_p > 0 else 0.0
    k = top_k if top_k is not None and top_k > 0 else 0
    if k == 0 and p == 0.0:
        k = 1
    if k > 0 and p == 0.0:
        p = 1.0
    return k, p


# TL layers/defaultDecodingParams.h:58-61@1020a8d getSeed(): an absent seed is 0, the same for every
# request (TL batch_manager/llmRequest.cpp:334-341@119c6e6 createChildRequest: children of an
# unseeded request get 0 + sequence index).
DEFAULT_SEED = 0

# ---- enqueue time: TB model_instance_state.cc enqueue catches what building the executor requests
# throws and answers the request with it (BE model_instance_state.cc:1003-1006: a final response,
# TRITONSERVER_ERROR_INTERNAL, e.what()).

# TB utils.cc splitBatchInputsTensors, TLLM_THROW (BE utils.cc:178): runs before
# createRequestsFromInputTensors, whose own "input_ids or encoder_input_features is not present in
# the request." (BE utils.cc:942) is therefore never reached for a request without input_ids.
MISSING_INPUT_IDS = "inputTokens or encoderInputFeatures tensor not provided"
# Not reachable through Triton: request_output_len is not optional in the config, so Triton itself
# refuses a request without it (BE utils.cc:949 is behind that).
MISSING_OUTPUT_LEN = "request_output_len is not present in the request"
# TB model_instance_state.cc handleStopRequest (BE :885): a stop request needs the id to stop.
STOP_WITHOUT_ID = "Trying to stop a request but request ID is not provided"
# TL executor/executorImpl.cpp:887@b35ac1b, the first statement of Executor::Impl::enqueueRequests:
# TLLM_CHECK_WITH_INFO(!mShutdownCalled, ...), whose text carries the assertion prefix
# (cpp/include/tensorrt_llm/common/tllmException.h:78-81@0c6a62a); sent as INTERNAL with e.what().
SHUTDOWN_TEXT = "[TensorRT-LLM][ERROR] Assertion failed: Shutdown called, cannot enqueue requests"


def assertion_text(info: str) -> str:
    """TLLM_CHECK / TLLM_CHECK_WITH_INFO (TL include/tensorrt_llm/common/tllmException.h@0c6a62a
    throwRuntimeError): "[TensorRT-LLM][ERROR] Assertion failed: " + the condition's source text
    or the info."""
    return f"[TensorRT-LLM][ERROR] Assertion failed: {info}"


# TL executor/samplingConfig.cpp@3585984 SamplingConfig::check*: the executor::SamplingConfig the
# backend builds from the tensors (TB utils.cc getSamplingConfigFromTensors) checks each value it
# is given, in this order (the constructor's initialiser list); TLLM_CHECK prints the condition.
# runtime_top_p <= 0 never reaches its check: the backend drops it first (BE utils.cc:555-563).
def _sampling_checks(v: dict) -> Optional[str]:
    checks = (
        # (its upper bound, kMaxBeamWidth, is beyond the CPU decoder's own refusal of beams)
        ("beam_width", lambda x: x > 0,
         "beamWidth > 0 && beamWidth <= static_cast<SizeType32 const>(tensorrt_llm::kernels::kMaxBeamWidth)"),
        ("runtime_top_k", lambda x: x >= 0, "topK.value() >= 0"),
        ("runtime_top_p", lambda x: x <= 1.0, "topP.value() <= 1.f"),
        ("runtime_top_p_reset_ids", lambda x: x >= 0, "topPResetIds.value() >= 0"),
        ("runtime_top_p_decay", lambda x: x > 0.0, "topPDecay.value() > 0.f"),
        ("runtime_top_p_decay", lambda x: x <= 1.0, "topPDecay.value() <= 1.f"),
        ("temperature", lambda x: x >= 0.0, "temperature.value() >= 0.f"),
        ("min_tokens", lambda x: x >= 0, "minTokens.value() >= 0"),
        ("beam_search_diversity_rate", lambda x: x >= 0.0, "beamSearchDiversityRate.value() >= 0.f"),
        ("repetition_penalty", lambda x: x > 0.0, "repetitionpenalty.value() > 0.f"),
        ("len_penalty", lambda x: x >= 0.0, "lengthPenalty.value() >= 0.f"),
        ("num_return_sequences", lambda x: x > 0, "numReturnSequences.value() > 0"),
    )
    for name, ok, condition in checks:
        if name in v and not ok(v[name]):      # NaN fails every comparison, as in C++
            return assertion_text(condition)
    return None


def _sparse_list_checks(flat: list[int]) -> Optional[str]:
    """TB utils.cc convertWordList (BE utils.cc:416-450): a stop/bad word list flattened to
    [ids..., offsets...]; TLLM_CHECK_WITH_INFO texts end with the list, each value followed by a
    space (sparseListToStr). Odd lengths cannot arrive: the config's dims are [2, -1]."""
    n = len(flat)
    text = "".join(f"{x} " for x in flat)
    if n % 2:
        return assertion_text("Sparse list must not have odd length: " + text)
    num_tokens = n // 2
    for i in range(num_tokens, n):
        if flat[i] == -1:
            if any(x != -1 for x in flat[i + 1:]):
                return assertion_text("Sparse list must not have additional -1s: " + text)
            break
        if flat[i] > num_tokens:
            return assertion_text("Sparse list must not have out-of-bound offsets: " + text)
        if i != num_tokens and not flat[i] > flat[i - 1]:
            return assertion_text("Sparse list must not have non-increasing offsets: " + text)
    return None


def convert_word_list(flat: list[int]) -> list[list[int]]:
    """The words of a list that passed _sparse_list_checks, as convertWordList makes them (an
    offset equal to the one before cannot pass; a first offset of 0 is an empty word)."""
    num_tokens, words, start = len(flat) // 2, [], 0
    for end in flat[num_tokens:]:
        if end == -1:
            break
        words.append(flat[start:end])
        start = end
    return words


# TL executor/guidedDecodingParams.cpp@2a9abd9: only `json` may come without a guide.
GUIDE_MISSING = assertion_text("The guide string must be provided unless using GuideType::kJSON.")
# TL executor/requestImpl.h@04fa274 Request::Impl::validate.
EMPTY_INPUT = assertion_text("!mInputTokenIds.empty()")
NO_NEW_TOKENS = assertion_text("mMaxNewTokens > 0")


def enqueue_error(get) -> Optional[str]:
    """The first refusal the backend answers at enqueue, in its order (TB utils.cc
    createRequestsFromInputTensors: the input tokens, the sampling config, bad then stop words,
    the executor::Request, the guide), or None. `get(name)` returns a declared input or None."""
    ids = get("input_ids")
    if ids is None:
        return MISSING_INPUT_IDS

    def scalar(name, kind):
        arr = get(name)
        return None if arr is None else kind(np.asarray(arr).reshape(-1)[0])

    values = {}
    for name, kind in (("beam_width", int), ("runtime_top_k", int), ("runtime_top_p", float),
                       ("runtime_top_p_reset_ids", int), ("runtime_top_p_decay", float), ("temperature", float),
                       ("min_tokens", int), ("beam_search_diversity_rate", float), ("repetition_penalty", float),
                       ("len_penalty", float), ("num_return_sequences", int)):
        value = scalar(name, kind)
        if value is not None:
            values[name] = value
    if "runtime_top_p" in values and values["runtime_top_p"] <= 0:
        del values["runtime_top_p"]
    error = _sampling_checks(values)
    if error:
        return error
    for name in ("bad_words_list", "stop_words_list"):
        words = get(name)
        if words is not None:
            error = _sparse_list_checks(np.asarray(words).reshape(-1).astype(np.int64).tolist())
            if error:
                return error
    if np.asarray(ids).size == 0:
        return EMPTY_INPUT
    if scalar("request_output_len", int) is not None and scalar("request_output_len", int) <= 0:
        return NO_NEW_TOKENS
    guide_type = get("guided_decoding_guide_type")
    if guide_type is not None and guide_type_name(guide_type) in ("json_schema", "regex", "ebnf_grammar") \
            and get("guided_decoding_guide") is None:
        return GUIDE_MISSING
    return None


def guide_type_name(arr) -> str:
    v = np.asarray(arr, dtype=object).reshape(-1)[0]
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else str(v)


# ---- executor time: TL executor/executorImpl.cpp@b35ac1b fetchNewRequests runs LlmRequest::validate
# on each new request and answers what it throws with "Encountered an error when fetching new
# request: " + the text; the backend sends that as "Executor failed process requestId N due to the
# following error: ..." (TB model_instance_state.cc fillTritonResponse; BE :1311-1314).

def executor_refusal(prompt_len: int, end_id: Optional[int], *, vocab_size: int, max_input_len: int
                     ) -> Optional[str]:
    """TL batch_manager/llmRequest.cpp@89fd9b7 LlmRequest::validate, the checks a request of ours
    can meet, in order: the end id's range, then the prompt's length. (Too many new tokens are
    clamped with a warning, as the CPU engine does; the draft-token, encoder and prompt-table
    checks need inputs our config does not declare.)"""
    if end_id is not None and not -1 <= end_id < vocab_size:
        return assertion_text(f"EndId ({end_id}) is not within acceptable range [-1, {vocab_size}).")
    if prompt_len > max_input_len:
        return (f"Prompt length ({prompt_len}) exceeds maximum input length ({max_input_len}). Set log level to info "
                "and check TRTGptModel logs for how maximum input length is set")
    return None


def queue_full_text(max_queue_size: int) -> str:
    """TL executor/executorImpl.cpp:941-943@b35ac1b Executor::Impl::enqueueRequests, thrown when the
    queue plus this request and its child requests (:938) would pass max_queue_size."""
    return f"Maximum queue size of {max_queue_size} has been reached, please try again later"


def executor_error_text(message: str) -> str:
    """A request the executor refuses after enqueueing, as the backend reports it: `message` is
    executor_refusal()'s upstream text, or the CPU engine's own for refusals TensorRT-LLM words
    otherwise (a KV cache too small for n sequences)."""
    return (f"Executor failed process requestId {next(_executor_ids)} due to the following error: "
            f"Encountered an error when fetching new request: {message}")


# ---- response time: TB model_instance_state.cc fillTritonResponse catches what filling a response
# throws and makes it that request's final response (BE :1317-1321).

def missing_requested_output(requested: frozenset[str]) -> Optional[str]:
    """TB model_instance_state.cc fillTritonResponse (BE :1079-1103): output_ids, then
    sequence_length, must be among the outputs the request asked for (TB utils.cc
    getRequestOutputNames: exactly those; Triton fills in all of them when a client asks for none).
    The request itself was enqueued and runs on upstream; only its responses are lost."""
    for name in ("output_ids", "sequence_length"):
        if name not in requested:
            return (f"Error encountered while populating response: {name} tensor must be present in list of "
                    "output tensors")
    return None


def missing_output_text(name: str) -> str:
    """An output the backend writes but the config does not declare (BE utils.h:322-331, caught
    and reported at model_instance_state.cc:1317-1321)."""
    return (f"Error encountered while populating response: Could not get response output for output "
            f"tensor {name}: unexpected inference output '{name}' for model 'tensorrt_llm'")


def wants_perf_metrics(get) -> bool:
    """BE utils.cc:623-624 / model_instance_state.cc:968: the request's return_perf_metrics flag."""
    value = get("return_perf_metrics")
    return value is not None and bool(np.asarray(value).reshape(-1)[0])


class MissingOutput(RuntimeError):
    pass


class ResponseShaper:
    """Turns one request's CPU-decoder response tensors into what the C++ backend sends."""

    def __init__(self, *, num_sequences: int, streaming: bool, prompt_len: int, perf_metrics: bool,
                 block_size: int, declared: frozenset[str], requested: Optional[frozenset[str]] = None):
        # The first response of a request that did not ask for output_ids and sequence_length fails.
        self.unfillable = missing_requested_output(requested if requested is not None else declared)
        self.n = num_sequences
        self.streaming = streaming
        self.prompt_len = prompt_len
        self.perf_metrics = perf_metrics
        self.block_size = max(1, block_size)
        self.declared = declared
        self.arrival_ns = time.monotonic_ns()
        self.log_probs: dict[int, list[float]] = {}
        self.generated: dict[int, int] = {}
        self.reused: dict[int, int] = {}
        self.first_token_ns: dict[int, int] = {}

    def shape(self, out: SequenceOutput, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`arrays`: output_arrays() of this response, built with every declared output."""
        if self.unfillable:
            raise MissingOutput(self.unfillable)
        i = out.sequence_index
        arrays = dict(arrays)
        # TL batch_manager/llmRequest.cpp@119c6e6 createResult: a streamed result holds only the
        # new token ids (:119, :137-147) but `logProbs = getLogProbs()` (:155), every generated
        # token's so far (backend issue #632); a non-streamed one holds them all anyway.
        if "output_log_probs" in arrays:
            if self.streaming:
                lps = self.log_probs.setdefault(i, [])
                lps.extend(out.log_probs or [])
            else:
                lps = list(out.log_probs or [])
            arrays["output_log_probs"] = np.asarray(lps, dtype=np.float32).reshape(1, 1, -1)
        # BE model_instance_state.cc:1221-1230: sequence_index only when num_return_sequences > 1
        # (and batch_index only for batched requests, :1211-1219; ours are never batched).
        if self.n <= 1:
            arrays.pop("sequence_index", None)
        arrays.pop("batch_index", None)
        self.generated[i] = (self.generated.get(i, 0) + len(out.token_ids)) if self.streaming \
            else len(out.token_ids)
        self.reused[i] = max(self.reused.get(i, 0), out.num_reused_tokens)
        now = time.monotonic_ns()
        if out.token_ids:
            self.first_token_ns.setdefault(i, now)
        if self.perf_metrics:
            arrays.update(self._perf(i, now))
        return arrays

    def _perf(self, i: int, now: int) -> dict[str, np.ndarray]:
        """BE model_instance_state.cc:1255-1306: with return_perf_metrics every response carries
        the KV-cache counts, four steady-clock time points (ns) and the speculative-decoding
        figures; an output the config lacks fails the request (see missing_output_text)."""
        missing = [name for name in PERF_METRIC_NAMES if name not in self.declared]
        if missing:
            raise MissingOutput(missing_output_text(missing[0]))
        total = -(-(self.prompt_len + self.generated.get(i, 0)) // self.block_size)
        reused = min(self.reused.get(i, 0) // self.block_size, total)
        first_token = self.first_token_ns.get(i, 0)

        def one(value, dtype):
            return np.asarray([[value]], dtype=dtype)

        return {
            "kv_cache_alloc_new_blocks": one(total - reused, np.int32),
            "kv_cache_reused_blocks": one(reused, np.int32),
            "kv_cache_alloc_total_blocks": one(total, np.int32),
            "arrival_time_ns": one(self.arrival_ns, np.int64),
            # The CPU engine does not report when it scheduled a request: its first output's
            # time stands in (an upper bound).
            "first_scheduled_time_ns": one(first_token or now, np.int64),
            "first_token_time_ns": one(first_token, np.int64),
            "last_token_time_ns": one(now, np.int64),
            # No speculative decoding: TL's RequestPerfMetrics defaults (0).
            "acceptance_rate": one(0.0, np.float32),
            "total_accepted_draft_tokens": one(0, np.int32),
            "total_draft_tokens": one(0, np.int32),
        }
