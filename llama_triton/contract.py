"""What the frontend and the decoder side share, without torch: the request errors a decoder raises,
the guide types it takes, and the stop request that cancels a request.

The frontend (frontend/), the text helpers both sides use (llama_triton/text/), the tensor mapping
(llama_triton/trtllm/) and the decoder side (llama_triton/engine/, llama_triton/backend/) all import
these from here, so none of them imports another's package for one type (tests/unit/test_layers.py
holds the layering).
"""
from __future__ import annotations

import numpy as np

# TensorRT-LLM's `guided_decoding_guide_type` values: the four its backend maps
# (triton_backend/inflight_batcher_llm/src/utils.cc getGuidedDecodingParamsFromTensors; see
# llama_triton/trtllm/backend_contract.py), and the four the CPU decoder compiles.
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")

# The boolean input that makes a request a stop request: TensorRT-LLM's cancellation, a request
# with `stop=true` and the id of the request to stop.
STOP_INPUT = "stop"


class RequestError(ValueError):
    """A request that cannot be served as asked; fails that request alone."""


class QueueFull(RuntimeError):
    """The engine's bounded queue is full; the caller should retry later (HTTP 429)."""


class EngineStopped(RuntimeError):
    """The engine has shut down (Triton is unloading the model): nothing more is admitted."""


def stop_request_arrays() -> dict[str, np.ndarray]:
    """The input tensors of a stop request (its request id names the request to stop).

    Triton refuses a request without an input the model declares non-optional, and upstream's
    config declares `input_lengths` and `request_output_len` so (tensorrtllm_backend
    all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt:64-74@c2e65b8; ours too,
    llama_triton/trtllm/tensor_contract.py): they go along as placeholders, with a one-token
    `input_ids`. The CPU decoder reads `stop` before anything else (backend/request_decoding.py)."""
    return {"input_ids": np.zeros((1, 1), np.int32), "input_lengths": np.ones((1, 1), np.int32),
            "request_output_len": np.ones((1, 1), np.int32), STOP_INPUT: np.ones((1, 1), bool)}
