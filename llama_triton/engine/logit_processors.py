"""Logit processors: steps 1-6 of `sampler.py`'s processing order (embedding bias, repetition,
presence and frequency penalties, bad words, the min_tokens mask, the guide's mask) on a batch's
logits, and the repair of a row they left without a finite logit. Each row depends only on its
own sequence."""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import numpy as np
import torch

from llama_triton.text.grammar import GuideCompiler

if TYPE_CHECKING:
    from .sampler import SequenceSampling

_NEG_INF = float("-inf")


class Processed(NamedTuple):
    logits: torch.Tensor                 # [B, V] float32, after steps 1-6
    raw: torch.Tensor                    # [B, V] float32, the logits as they came
    bitmask: Optional[torch.Tensor]      # the guides' token bitmask, when a row has a live guide


class IdCounts:
    """Distinct token ids with counts, in numpy buffers that grow by doubling (O(1) add)."""

    __slots__ = ("ids", "counts", "n", "pos")

    def __init__(self, initial_ids: Sequence[int] = ()):
        uniq = np.unique(np.asarray(initial_ids, dtype=np.int64)) if len(initial_ids) else \
            np.empty(0, dtype=np.int64)
        cap = max(16, 2 * len(uniq))
        self.ids = np.zeros(cap, dtype=np.int64)
        self.counts = np.zeros(cap, dtype=np.float32)
        self.n = len(uniq)
        self.ids[: self.n] = uniq
        self.counts[: self.n] = 1.0
        self.pos = {int(t): i for i, t in enumerate(uniq.tolist())}

    def add(self, token_id: int) -> None:
        i = self.pos.get(token_id)
        if i is not None:
            self.counts[i] += 1.0
            return
        if self.n == len(self.ids):
            self.ids = np.concatenate([self.ids, np.zeros_like(self.ids)])
            self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
        self.ids[self.n] = token_id
        self.counts[self.n] = 1.0
        self.pos[token_id] = self.n
        self.n += 1


def _padded(structs: list[IdCounts], with_counts: bool):
    """[b, L] ids padded with each row's first id (and [b, L] counts padded with 0)."""
    width = max(s.n for s in structs)
    ids = np.empty((len(structs), width), dtype=np.int64)
    counts = np.zeros((len(structs), width), dtype=np.float32) if with_counts else None
    for i, s in enumerate(structs):
        ids[i, : s.n] = s.ids[: s.n]
        ids[i, s.n:] = s.ids[0]
        if with_counts:
            counts[i, : s.n] = s.counts[: s.n]
    return torch.from_numpy(ids), (torch.from_numpy(counts) if with_counts else None)


def _bad_multi_hits(s: SequenceSampling) -> list[int]:
    """The last tokens of the multi-token bad words whose other tokens end the sequence so far."""
    hits = []
    gen = s.generated
    for prefix, last in s.bad_multi:
        n = len(prefix)
        if len(gen) >= n:
            tail = gen[len(gen) - n:]
        else:
            need = n - len(gen)
            if need > len(s.prompt_tail):
                continue
            tail = s.prompt_tail[len(s.prompt_tail) - need:] + gen
        if tail == prefix:
            hits.append(last)
    return hits


def _check_logits(logits: torch.Tensor, seqs: Sequence[SequenceSampling], vocab_size: int) -> torch.Tensor:
    if logits.dim() != 2 or logits.shape[0] != len(seqs) or logits.shape[1] != vocab_size:
        raise ValueError(f"logits must be [{len(seqs)}, {vocab_size}], "
                         f"got {list(logits.shape)}")
    return logits.detach().to(device="cpu", dtype=torch.float32)


def _edits(seqs: Sequence[SequenceSampling]) -> bool:
    """Whether steps 1-6 change any row (else the logits are used as they are, uncopied)."""
    for s in seqs:
        if (s.bias is not None or s.guide is not None or s.bad_single or s.bad_multi
                or (s.seen is not None and s.seen.n) or (s.counts is not None and s.counts.n)
                or (s.min_tokens_ids and len(s.generated) < s.min_tokens)):
            return True
    return False


def process_logits(logits: torch.Tensor, seqs: Sequence[SequenceSampling], vocab_size: int) -> Processed:
    """Steps 1-6 of `sampler.py`'s processing order on a float32 copy of ``logits`` [B, V] (row i
    is ``seqs[i]``'s); the logits themselves, uncopied, when no step changes any row."""
    raw = _check_logits(logits, seqs, vocab_size)
    if not _edits(seqs):
        return Processed(raw, raw, None)
    x = raw.clone()
    V = vocab_size

    # 1. embedding bias
    for i, s in enumerate(seqs):
        if s.bias is not None:
            x[i].add_(s.bias)

    # 2. repetition penalty over prompt + generated ids
    rows = [i for i, s in enumerate(seqs) if s.seen is not None and s.seen.n]
    if rows:
        ids, _ = _padded([seqs[i].seen for i in rows], with_counts=False)
        r = torch.tensor(rows, dtype=torch.long)[:, None]
        pen = torch.tensor([seqs[i].repetition_penalty for i in rows],
                           dtype=torch.float32)[:, None]
        vals = x[r, ids]
        x[r, ids] = torch.where(vals > 0, vals / pen, vals * pen)

    # 3. presence / frequency penalties over generated ids
    rows = [i for i, s in enumerate(seqs) if s.counts is not None and s.counts.n]
    if rows:
        ids, counts = _padded([seqs[i].counts for i in rows], with_counts=True)
        r = torch.tensor(rows, dtype=torch.long)[:, None].expand_as(ids)
        pres = torch.tensor([seqs[i].presence_penalty for i in rows],
                            dtype=torch.float32)[:, None]
        freq = torch.tensor([seqs[i].frequency_penalty for i in rows],
                            dtype=torch.float32)[:, None]
        delta = pres * (counts > 0).to(torch.float32) + freq * counts   # 0 on padding
        x.index_put_((r, ids), -delta, accumulate=True)

    # 4. bad words, 5. min_tokens
    mask_rows: list[int] = []
    mask_cols: list[int] = []
    for i, s in enumerate(seqs):
        if s.bad_single_ids is not None:
            x[i].index_fill_(0, s.bad_single_ids, _NEG_INF)
        if s.bad_multi:
            hits = _bad_multi_hits(s)
            mask_rows.extend([i] * len(hits))
            mask_cols.extend(hits)
        if s.min_tokens_mask_ids is not None and len(s.generated) < s.min_tokens:
            x[i].index_fill_(0, s.min_tokens_mask_ids, _NEG_INF)
    if mask_rows:
        x[torch.tensor(mask_rows), torch.tensor(mask_cols)] = _NEG_INF

    # 6. guided decoding
    bitmask = None
    guided = [i for i, s in enumerate(seqs) if s.guide is not None]
    if guided:
        fill = []
        for i in guided:
            g = seqs[i].guide
            if g.is_terminated:
                keep = x[i, g.stop_token_ids].clone()
                x[i] = _NEG_INF
                x[i, g.stop_token_ids] = keep
            else:
                fill.append(i)
        if fill:
            bitmask = GuideCompiler.allocate_bitmask(len(seqs), V)
            for i in fill:
                seqs[i].guide.fill_bitmask(bitmask, i)
            GuideCompiler.apply_bitmask(x, bitmask, fill, V)
    return Processed(x, raw, bitmask)


def repair_row(x: torch.Tensor, raw: torch.Tensor, bitmask: Optional[torch.Tensor], i: int,
               s: SequenceSampling) -> None:
    """Gives row i of ``x`` a usable distribution when steps 1-6 left it none (`sampler.py`'s
    processing order, after step 6): ``raw`` and ``bitmask`` are `process_logits`'s."""
    vocab_size = x.shape[1]
    row = x[i]
    row.masked_fill_(torch.isnan(row), _NEG_INF)
    if torch.isposinf(row).any():
        row.copy_(torch.where(torch.isposinf(row), 0.0, _NEG_INF))
    if torch.isfinite(row.max()):
        return
    y = raw[i].masked_fill(torch.isnan(raw[i]), _NEG_INF)
    if torch.isposinf(y).any():
        y = torch.where(torch.isposinf(y), 0.0, _NEG_INF)
    allowed: Optional[torch.Tensor] = None
    if s.guide is not None:
        allowed = torch.zeros(vocab_size, dtype=torch.bool)
        if s.guide.is_terminated or bitmask is None:
            allowed[s.guide.stop_token_ids] = True
        else:
            bits = bitmask[i].to(torch.int64) & 0xFFFFFFFF
            shifts = torch.arange(32, dtype=torch.int64)
            unpacked = ((bits[:, None] >> shifts) & 1).reshape(-1)[: vocab_size]
            allowed = unpacked.bool()
        y = torch.where(allowed, y, _NEG_INF)
    if not torch.isfinite(y.max()):
        if allowed is not None and allowed.any():
            pick = int(allowed.nonzero()[0])
        else:
            pick = 0
        y = torch.full((vocab_size,), _NEG_INF)
        y[pick] = 0.0
    row.copy_(y)
