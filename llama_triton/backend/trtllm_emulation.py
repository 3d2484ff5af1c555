"""The CPU decoder's GPU mode: what a client of TensorRT-LLM's C++ `tensorrtllm` backend observes.

When the repository renders the CPU decoder with TensorRT-LLM's tensor list (`--decoder-io gpu`,
parameter `emulate_tensorrt_llm`), llama_triton/backend/decoder_model.py routes requests and
responses through this module, so the suite's GPU-mode runs fail where a GPU deployment would.
Each behaviour cites the upstream lines it copies (docs/GPU.md has the table):

  BE = triton-inference-server/tensorrtllm_backend at c2e65b8 (the v0.20 line; the same sources
       live in NVIDIA/TensorRT-LLM triton_backend/ from v0.20.0 on)
  TL = NVIDIA/TensorRT-LLM cpp/tensorrt_llm/ (executor, batch manager, sampling layers). v0.20.0
       is commit 7965842, which could not be read here; TL lines are cited as path:line@commit at
       the stored commits docs/GPU.md 5.1 names, and show the code path, not v0.20.0's numbering.

What cannot be emulated (beam search, speculative decoding, real scheduling times) is listed in
docs/GPU.md.
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

# Enqueue-time errors, as the backend words them (BE utils.cc:942, :949; sent as
# TRITONSERVER_ERROR_INTERNAL with e.what(), model_instance_state.cc:1003-1006).
MISSING_INPUT_IDS = "input_ids or encoder_input_features is not present in the request."
MISSING_OUTPUT_LEN = "request_output_len is not present in the request"
# BE model_instance_state.cc:885: a stop request needs the id of the request to stop.
STOP_WITHOUT_ID = "Trying to stop a request but request ID is not provided"
# TL executor/executorImpl.cpp:887@b35ac1b, the first statement of Executor::Impl::enqueueRequests:
# TLLM_CHECK_WITH_INFO(!mShutdownCalled, ...), whose text carries the assertion prefix
# (cpp/include/tensorrt_llm/common/tllmException.h:78-81@0c6a62a); sent as INTERNAL with e.what().
SHUTDOWN_TEXT = "[TensorRT-LLM][ERROR] Assertion failed: Shutdown called, cannot enqueue requests"


def queue_full_text(max_queue_size: int) -> str:
    """TL executor/executorImpl.cpp:941-943@b35ac1b Executor::Impl::enqueueRequests, thrown when the
    queue plus this request and its child requests (:938) would pass max_queue_size."""
    return f"Maximum queue size of {max_queue_size} has been reached, please try again later"


def executor_error_text(message: str) -> str:
    """A request the executor refuses after enqueueing (TL batch_manager/llmRequest.cpp:243-315@119c6e6
    validate and the like), as the backend reports it (BE model_instance_state.cc:1311-1314).
    Upstream the message inside is "Encountered an error when fetching new request: " + TL's text
    (executor/executorImpl.cpp:1658@b35ac1b); here it is the CPU engine's own text, unprefixed."""
    return (f"Executor failed process requestId {next(_executor_ids)} due to the following error: "
            f"{message}")


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
                 block_size: int, declared: frozenset[str]):
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
