"""The engine's request and output types: with its errors (llama_triton/contract.py), the only
things that cross the engine boundary.

The Triton `tensorrt_llm` model (llama_triton/backend/decoder_model.py) turns TensorRT-LLM
tensors into a `GenerationRequest` and each `SequenceOutput` back into response tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0          # 0 means greedy
    top_k: int = 0                    # 0 means off
    top_p: float = 1.0                # <= 0 or >= 1 means off (TensorRT-LLM treats <= 0 as unset)
    min_p: float = 0.0                # 0 means off
    repetition_penalty: float = 1.0   # multiplicative (CTRL / Hugging Face)
    presence_penalty: float = 0.0     # additive, OpenAI semantics
    frequency_penalty: float = 0.0    # additive, OpenAI semantics
    seed: int = 0                     # uint64; each sequence index derives its own stream
    end_id: Optional[int] = None      # None: never stop on a token
    stop_words: list[list[int]] = field(default_factory=list)
    bad_words: list[list[int]] = field(default_factory=list)
    min_tokens: int = 0
    num_return_sequences: int = 1
    return_log_probs: bool = False
    top_logprobs: int = 0             # number of alternatives per token (extra, CPU decoder only)
    embedding_bias: Optional[np.ndarray] = None  # [vocab] float32, added to the logits
    guide_type: Optional[str] = None  # one of llama_triton.contract.GUIDE_TYPES
    guide: Optional[str] = None


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    streaming: bool = True
    # uint64 prefix-cache scope (TensorRT-LLM's executor Request `cacheSaltID`): prompt blocks are
    # reused only between requests with the same salt. None: the unsalted scope.
    cache_salt: Optional[int] = None
    # The waiting order (scheduler.py): priority first (lower earlier, vLLM's sense), then the
    # frontend's fair-share rank (the requests its API key already had open), then arrival.
    priority: int = 0
    tenant_rank: int = 0


@dataclass
class SequenceOutput:
    """What one engine step produced for one sequence of a request."""
    request_id: str
    sequence_index: int
    token_ids: list[int]                       # new tokens of this step
    log_probs: Optional[list[float]] = None    # one per new token when asked
    top_logprobs: Optional[list[list[tuple[int, float]]]] = None  # per new token, best first
    finished: bool = False
    finish_reason: Optional[str] = None        # "stop" | "length" | "cancelled" | "error"
    num_reused_tokens: int = 0                 # prompt tokens served from the prefix cache
    error: Optional[str] = None
    # With `error`: whose fault (llama_triton/trtllm/decoder_errors.py codes): "invalid_request"
    # (the request cannot be served), "shutting_down", "internal_error" (the engine's own failure).
    error_code: str = "internal_error"


OutputCallback = Callable[[SequenceOutput], None]


class DecoderEngine(Protocol):
    """What the Triton decoder model (llama_triton/backend/decoder_model.py) drives: `Engine` (the
    model) and `ZeroCostEngine` (no model) both implement it. `submit` raises RequestError, QueueFull
    or EngineStopped (after `shutdown`; llama_triton/contract.py); outputs arrive on the engine thread through `callback`, and
    every submitted request gets exactly one `finished` output per sequence, also when the engine
    shuts down with it unfinished. Counters (`num_steps`, ...) are optional:
    llama_triton/backend/engine_setup.py exports those an engine has."""

    def submit(self, request: GenerationRequest, callback: OutputCallback) -> None: ...

    def cancel(self, request_id: str) -> None: ...

    def add_step_listener(self, listener: Callable[[], None], *, at_end: bool = False) -> None: ...

    def start(self) -> None: ...

    def shutdown(self) -> None: ...
