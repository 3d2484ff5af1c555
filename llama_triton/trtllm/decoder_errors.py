"""The decoder's failures on the wire: typed codes where we own both sides, one table for the rest.

Triton hands a decoupled model's error to a gRPC client as text only
(`ModelStreamInferResponse.error_message`; no status code survives the stream), so a decoder we
write (the CPU decoder, the LLM-API decoder: both answer through
llama_triton/backend/decoder_model.py) puts a code in front of its text:

    [llama-triton:<code>] <message>

and the frontend reads a code only there, at the very start, where no text taken from a request
can be: a message that quotes a request (a schema, a stop word) quotes it after the code. Nothing
is read from the rest of the text.

The C++ `tensorrtllm` backend and Triton itself say what they say. Their texts that the frontend
acts on are matched in `FOREIGN_MESSAGES`, one row per text, each anchored at the start of the
message and cited upstream. TensorRT-LLM throws with `TLLM_THROW(fmt, ...)`, whose what() is the
text, then " (file:line)" and a stack trace (cpp/include/tensorrt_llm/common/tllmException.h:28-38
and cpp/tensorrt_llm/common/tllmException.cpp:38-44, read at 0c6a62a and 015884d), or with
`TLLM_CHECK_WITH_INFO`, whose text starts "[TensorRT-LLM][ERROR] Assertion failed: "
(tllmException.h:78-81@0c6a62a); the backend passes what() on unchanged. A text no row matches is
`UNKNOWN`: the frontend then probes the decoder to tell a refused request from a broken decoder
(frontend/decoder/health.py).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

# What the frontend does with a failure (frontend/decoder/interface.py `http_error`, frontend/decoder/triton_client.py).
BUSY = "busy"                  # 429 with Retry-After: the decoder's queue is full
UNAVAILABLE = "unavailable"    # 503: the decoder is not there (shutting down, not loaded, dead stub)
INVALID = "invalid"            # 400: the decoder refused this request's input; no probe needed
INTERNAL = "internal"          # 500 unless a probe finds the decoder broken (then 503)
UNKNOWN = "unknown"            # probes decide: 400 when they pass, 503 when they fail

# The codes our decoders send, and what each means to the frontend.
QUEUE_FULL = "queue_full"
SHUTTING_DOWN = "shutting_down"
INVALID_REQUEST = "invalid_request"
INTERNAL_ERROR = "internal_error"
CODES = {QUEUE_FULL: BUSY, SHUTTING_DOWN: UNAVAILABLE, INVALID_REQUEST: INVALID, INTERNAL_ERROR: INTERNAL}

_TYPED = re.compile(r"\[llama-triton:([a-z_]+)\] ")


def typed_message(code: str, message: str) -> str:
    """The text our decoders send for a failure with this code."""
    if code not in CODES:
        raise ValueError(f"unknown decoder error code {code!r}")
    return f"[llama-triton:{code}] {message}"


def typed_code(message: str) -> Optional[str]:
    """The code at the start of a message from our decoders, or None (another decoder's text)."""
    m = _TYPED.match(message)
    return m.group(1) if m is not None and m.group(1) in CODES else None


def without_code(message: str) -> str:
    """The message without our code in front (what a client is shown)."""
    m = _TYPED.match(message)
    return message[m.end():] if m is not None and m.group(1) in CODES else message


@dataclass(frozen=True)
class ForeignMessage:
    """A text of TensorRT-LLM's backend or of Triton, as it starts, and what it means."""
    pattern: re.Pattern
    kind: str
    source: str          # where upstream writes it


_ASSERTION = r"(?:\[TensorRT-LLM\]\[ERROR\] Assertion failed: )?"
BE = "triton-inference-server/tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc"
TL = "NVIDIA/TensorRT-LLM cpp/tensorrt_llm/executor/executorImpl.cpp"

FOREIGN_MESSAGES: tuple[ForeignMessage, ...] = (
    # Executor::Impl::enqueueRequests, when the queue plus the request and its child requests would
    # pass max_queue_size: TLLM_THROW, reported by the backend's execute as INTERNAL with e.what()
    # (BE :1003-1006@c2e65b8; the same code is triton_backend/inflight_batcher_llm/src/ in TensorRT-LLM).
    ForeignMessage(re.compile(_ASSERTION + r"Maximum queue size of \d+ has been reached, please try again later"),
                   BUSY, f"{TL}:941-943@b35ac1b (enqueueRequests)"),
    # The first statement of the same function: an executor that is shutting down (Triton unloading
    # the model) refuses every new request (TLLM_CHECK_WITH_INFO: the assertion prefix).
    ForeignMessage(re.compile(_ASSERTION + r"Shutdown called, cannot enqueue requests"),
                   UNAVAILABLE, f"{TL}:887@b35ac1b (enqueueRequests)"),
    # A response the executor failed (its validation of the request, or a failed step of the
    # whole batch): the text says which, the frontend cannot; probes decide.
    ForeignMessage(re.compile(r"Executor failed process requestId \d+ due to the following error: "),
                   UNKNOWN, f"{BE}:1312-1314@c2e65b8 (fillTritonResponse)"),
    # The backend could not build a response (an output the config lacks, an output list without
    # output_ids / sequence_length): a deployment or frontend bug, never the client's.
    ForeignMessage(re.compile(r"Error encountered while populating response: "),
                   INTERNAL, f"{BE}:1321-1322@c2e65b8 (fillTritonResponse)"),
    ForeignMessage(re.compile(_ASSERTION + r"\S+ tensor must be present in list of output tensors"),
                   INTERNAL, f"{BE}:1089,1102@c2e65b8 (fillTritonResponse)"),
    # A stop request without an id: only a frontend bug sends one.
    ForeignMessage(re.compile(r"Trying to stop a request but request ID is not provided"),
                   INTERNAL, f"{BE}:885@c2e65b8 (handleStopRequest)"),
    # Triton: the model is not (or no longer) loaded.
    ForeignMessage(re.compile(r"Request for unknown model: "), UNAVAILABLE,
                   "triton-inference-server/core src/model_repository_manager (GetModel), r24.10"),
    # Triton's Python backend: the decoder's stub process died (llama_triton/serve/supervisor.py
    # restarts tritonserver); its open streams go silent, new requests get this.
    ForeignMessage(re.compile(r"Stub process '[^']*' is not healthy\."), UNAVAILABLE,
                   "triton-inference-server/python_backend src/python_be.cc (ProcessRequests), r24.10"),
)


def classify(message: str) -> str:
    """BUSY, UNAVAILABLE, INVALID, INTERNAL or UNKNOWN for a decoder's error text."""
    code = typed_code(message)
    if code is not None:
        return CODES[code]
    for row in FOREIGN_MESSAGES:
        if row.pattern.match(message):
            return row.kind
    return UNKNOWN
