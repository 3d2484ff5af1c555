"""One generated sequence: its tokens, its KV blocks and what it has emitted so far."""
from __future__ import annotations

from enum import Enum, auto
from typing import Any, Optional


class SequenceStatus(Enum):
    WAITING_FOR_GUIDE = auto()    # parked until its grammar has compiled (vLLM's WAITING_FOR_FSM)
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    def __init__(self, seq_id: int, request_id: str, sequence_index: int, token_ids: list[int],
                 num_prompt_tokens: int, num_forks: int = 1, sampling: Any = None,
                 cache_salt: Optional[int] = None, order: tuple[int, int] = (0, 0)) -> None:
        self.seq_id = seq_id
        self.request_id = request_id
        self.sequence_index = sequence_index
        self.token_ids = list(token_ids)          # prompt + generated
        self.num_prompt_tokens = num_prompt_tokens
        self.num_forks = num_forks                # sequences this one splits into after its prompt (n)
        self.sampling = sampling                  # the sampler's per-sequence state
        self.cache_salt = cache_salt              # prefix-cache scope: blocks are shared only within one salt
        self.order = order                        # (priority, tenant rank): the scheduler's waiting order
        self.status = SequenceStatus.WAITING
        # KV cache: owned ids only; the BlockManager owns the blocks
        self.num_computed_tokens = 0              # tokens whose K/V are in the cache
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []       # block keys of the leading full, computed blocks
        self.reserved_blocks: list[int] = []      # partial-block copies for the forks
        # outputs
        self.num_reused_tokens = 0
        self.num_outputs = 0
        self.log_probs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_decoding(self) -> bool:
        """Generating: only the last sampled token is missing from the cache."""
        return self.num_generated_tokens > 0 and self.num_uncomputed_tokens == 1

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    def append_token(self, token_id: int, log_prob: Optional[float],
                     top_logprobs: Optional[list[tuple[int, float]]]) -> None:
        self.token_ids.append(token_id)
        if log_prob is not None:
            self.log_probs.append(log_prob)
        if top_logprobs is not None:
            self.top_logprobs.append(top_logprobs)

    def reset_cache_state(self) -> None:
        self.num_computed_tokens = 0
        self.block_table = []
        self.block_hashes = []
        self.reserved_blocks = []

    def __repr__(self) -> str:
        return (f"Sequence({self.request_id}#{self.sequence_index}, {self.status.name}, "
                f"tokens={self.num_tokens}, computed={self.num_computed_tokens})")
