"""Waiting/running queues, admission, chunked prefill and preemption. No tensors here."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .config import EngineConfig
from .kv_cache import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)   # tokens each seq computes this step
    preempted: list[Sequence] = field(default_factory=list)
    num_reused_tokens: int = 0

    def add(self, seq: Sequence, num_new_tokens: int) -> None:
        self.seqs.append(seq)
        self.num_new_tokens.append(num_new_tokens)


class Scheduler:
    def __init__(self, config: EngineConfig, block_manager: BlockManager) -> None:
        self.max_batch_size = config.max_batch_size
        self.prefill_chunk_size = config.prefill_chunk_size
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []       # admission order: the last is the youngest
        # requests whose guide is still compiling: not schedulable, but queued (they count as
        # waiting), so a slow grammar holds up no one else's admission
        self.parked: list[Sequence] = []

    @property
    def num_running(self) -> int:
        return sum(seq.num_forks for seq in self.running)

    @property
    def num_waiting(self) -> int:
        return sum(seq.num_forks for seq in self.waiting) + sum(seq.num_forks for seq in self.parked)

    @property
    def num_queued(self) -> int:
        """Requests admitted to the engine but not running yet (the queue bound counts these)."""
        return len(self.waiting) + len(self.parked)

    @property
    def has_work(self) -> bool:
        """Something to schedule (parked sequences are not: their compile wakes the engine)."""
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        """Into the waiting queue by `seq.order` (priority, then the frontend's fair-share rank),
        behind those of the same order: first come, first served among equals."""
        seq.status = SequenceStatus.WAITING
        at = len(self.waiting)
        while at > 0 and self.waiting[at - 1].order > seq.order \
                and self.waiting[at - 1].status is SequenceStatus.WAITING and self.waiting[at - 1].num_outputs == 0:
            at -= 1
        self.waiting.insert(at, seq)

    def park(self, seq: Sequence) -> None:
        """Holds a sequence until its guide is ready (`unpark`)."""
        seq.status = SequenceStatus.WAITING_FOR_GUIDE
        self.parked.append(seq)

    def unpark(self, seq: Sequence) -> None:
        self.parked.remove(seq)
        self.add(seq)

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.prefill_chunk_size
        # running sequences, oldest first: decode one token each; prefill continues within the budget
        for seq in list(self.running):
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted for an older sequence in this loop
            if seq.is_decoding:
                if self._reserve_decode_block(seq, batch):
                    batch.add(seq, 1)
            elif budget > 0:
                num_new = min(seq.num_uncomputed_tokens, budget)
                budget -= num_new
                batch.add(seq, num_new)
        if batch.preempted:
            return batch  # out of blocks: admit nothing new this step
        # admission in waiting order (add: priority, fair-share rank, arrival)
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            if self.num_running + seq.num_forks > self.max_batch_size:
                break
            if not self.block_manager.can_allocate(seq):
                break
            self.waiting.popleft()
            num_reused = self.block_manager.allocate(seq)
            batch.num_reused_tokens += num_reused
            if seq.num_outputs == 0:
                seq.num_reused_tokens = num_reused
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            budget -= num_new
            batch.add(seq, num_new)
        return batch

    def _reserve_decode_block(self, seq: Sequence, batch: ScheduledBatch) -> bool:
        while not self.block_manager.can_append(seq):
            victim = self.running[-1]
            self.preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
        self.block_manager.append(seq)
        return True

    def preempt(self, seq: Sequence) -> None:
        """Back to the front of waiting; its K/V are recomputed (or found in the prefix cache) later."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def fork(self, parent: Sequence, children: list[Sequence]) -> list[tuple[int, int]]:
        """Splits a prefilled parent into n sequences; returns (src, dst) blocks the runner copies."""
        copies = []
        for child in children:
            pair = self.block_manager.fork(parent, child)
            if pair is not None:
                copies.append(pair)
            child.status = SequenceStatus.RUNNING
        assert not parent.reserved_blocks
        parent.num_forks = 1
        at = self.running.index(parent) + 1
        self.running[at:at] = children
        return copies

    def computed(self, seq: Sequence, num_new_tokens: int) -> None:
        seq.num_computed_tokens += num_new_tokens
        self.block_manager.register_computed(seq)

    def finish(self, seq: Sequence) -> None:
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.block_manager.free(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        elif seq.status is SequenceStatus.WAITING_FOR_GUIDE:
            self.parked.remove(seq)
        seq.status = SequenceStatus.FINISHED
