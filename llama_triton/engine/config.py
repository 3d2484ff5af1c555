"""Engine limits: the CPU counterparts of TensorRT-LLM's build and executor limits."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from llama_triton.defaults import (ENGINE_CONFIG_DTYPE, MAX_BATCH_SIZE, MAX_NUM_TOKENS, MAX_QUEUE_SIZE, PREFILL_CHUNK_SIZE,
                                   TOKENS_PER_BLOCK)

DTYPES = ("float32", "bfloat16", "float16", "auto")  # auto: llama_triton.llama.dtype.resolve_dtype
MATMULS = ("auto", "plain", "swapped", "prepacked")    # llama_triton.llama.linear (kept in step by a test)


@dataclass(frozen=True)
class EngineConfig:
    max_batch_size: int = MAX_BATCH_SIZE  # running sequences (batch slots)
    max_num_tokens: int = MAX_NUM_TOKENS  # KV cache capacity in tokens; num_blocks = max_num_tokens // block_size
    block_size: int = TOKENS_PER_BLOCK  # tokens per KV block
    max_seq_len: Optional[int] = None  # prompt + output; None: the model's max_position_embeddings
    max_queue_size: int = MAX_QUEUE_SIZE  # requests waiting for admission before QueueFull
    prefill_chunk_size: int = PREFILL_CHUNK_SIZE  # prompt tokens prefilled per step, across sequences
    enable_prefix_reuse: bool = True   # reuse cached KV blocks of shared prompt prefixes
    dtype: str = ENGINE_CONFIG_DTYPE   # model and KV cache dtype; "auto": bf16 where the CPU has native bf16
    num_threads: Optional[int] = None  # torch intra-op threads, process-wide; None leaves torch's default,
                                       # 0 picks by model size (auto_num_threads)
    matmul: str = "auto"               # kernels of the linear layers (llama_triton.llama.linear): auto, plain,
                                       # swapped, prepacked (oneDNN's blocked weights; one row slower)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_num_tokens", "block_size", "max_queue_size", "prefill_chunk_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"EngineConfig.{name} must be a positive int, got {value!r}")
        if self.max_seq_len is not None and (not isinstance(self.max_seq_len, int) or self.max_seq_len < 2):
            raise ValueError(f"EngineConfig.max_seq_len must be an int >= 2 or None, got {self.max_seq_len!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, int) or self.num_threads < 0):
            raise ValueError(f"EngineConfig.num_threads must be an int >= 0 or None, got {self.num_threads!r}")
        if self.max_num_tokens < self.block_size:
            raise ValueError("EngineConfig.max_num_tokens must hold at least one block")
        if self.dtype not in DTYPES:
            raise ValueError(f"EngineConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.matmul not in MATMULS:
            raise ValueError(f"EngineConfig.matmul must be one of {', '.join(MATMULS)}, got {self.matmul!r}")

    @property
    def num_blocks(self) -> int:
        return self.max_num_tokens // self.block_size


# Below this many multiply-adds per token (the tiny test models: ~1e5) a matmul is over in
# microseconds and handing it to other threads costs more than it saves; the 1.1B TinyLlama shape
# does ~1e9 per token and is bound by memory bandwidth, which more cores do raise.
_PARALLEL_MACS_PER_TOKEN = 50_000_000


def auto_num_threads(macs_per_token: int, available_cores: Optional[int] = None) -> int:
    """Intra-op threads for `num_threads=0`: one for small models, every core we may run on otherwise."""
    if available_cores is None:
        try:
            available_cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            available_cores = os.cpu_count() or 1
    return 1 if macs_per_token < _PARALLEL_MACS_PER_TOKEN else max(1, available_cores)
