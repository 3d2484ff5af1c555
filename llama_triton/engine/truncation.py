"""Truncation: temperature, top-k, top-p and min-p on the processed logits of the rows that are not
greedy (step 8 of `sampler.py`'s processing order), in Hugging Face's warper order."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from .sampler import SequenceSampling

_TOP_P_MANTISSA_BITS = 6           # top-p histogram resolution (bucket width 2**(1/64))


def _top_p_threshold(p: torch.Tensor, top_ps: list[float]) -> torch.Tensor:
    """Per row of unnormalised probabilities ``p`` [r, V] (>= 0, finite), the smallest value
    ``thr`` such that the tokens with ``p >= thr`` carry at least ``top_p`` of the row's mass:
    walking the tokens from most to least likely, the value at which the cumulative mass first
    reaches ``top_p * total``. Returns [r, 1].

    Radix select instead of a sort (a full sort of 32000 floats costs several times more): a float64
    histogram of the mass over the top bits of the float32 bit pattern (sign, exponent and
    `_TOP_P_MANTISSA_BITS` mantissa bits: order preserving for non-negative floats) finds the
    bucket where the mass is reached, and only that bucket's values are sorted. Deterministic
    per row (CPU scatter_add adds in index order)."""
    r = p.shape[0]
    shift = 23 - _TOP_P_MANTISSA_BITS
    bucket = (p.view(torch.int32) >> shift).to(torch.int64)
    nb = (0x3F800000 >> shift) + 1                   # bucket of 1.0, the largest value
    hist = torch.zeros(r, nb, dtype=torch.float64).scatter_add_(1, bucket, p.to(torch.float64))
    desc = hist.flip(-1).cumsum(-1)                  # mass of the buckets >= each, high first
    target = torch.tensor(top_ps, dtype=torch.float64)[:, None] * desc[:, -1:]
    pos = torch.searchsorted(desc, target).clamp_(max=nb - 1)   # first reaching the target
    above = torch.where(pos > 0, desc.gather(1, (pos - 1).clamp(min=0)), 0.0)
    in_edge = bucket == (nb - 1) - pos                         # the boundary bucket
    counts = in_edge.count_nonzero(-1)
    values = p[in_edge]                                        # row-major
    width = max(1, int(counts.max()))   # an empty bucket only if rounding put target > total
    rows = torch.repeat_interleave(torch.arange(r), counts)
    starts = torch.cumsum(counts, 0) - counts
    cols = torch.arange(values.numel()) - torch.repeat_interleave(starts, counts)
    padded = torch.full((r, width), -1.0, dtype=p.dtype)
    padded[rows, cols] = values
    srt = torch.sort(padded, dim=-1, descending=True).values   # padding (-1) sorts last
    cs = srt.clamp(min=0).to(torch.float64).cumsum(-1) + above
    at = torch.minimum(torch.searchsorted(cs, target), (counts - 1).clamp(min=0)[:, None])
    return srt.gather(1, at)                                   # -1 (keep all) if empty


def truncated_probs(x: torch.Tensor, rowmax: torch.Tensor, seqs: Sequence[SequenceSampling],
                    scratch: bool = False) -> torch.Tensor:
    """Temperature, top-k, top-p and min-p for non-greedy rows x [b, V] whose row maxima (finite)
    are ``rowmax`` [b, 1]: the unnormalised probabilities [b, V] to draw from (the largest is
    exactly 1, a dropped token's 0). ``scratch``: x may be overwritten."""
    b, V = x.shape
    k_rows = [j for j, s in enumerate(seqs) if s.top_k > 0]
    # top-k reads x after p exists; otherwise p can take x's memory (a [64, 32000] float32
    # allocation and pass fewer per step)
    p = x.sub_(rowmax) if scratch and not k_rows else x - rowmax
    temps = [s.temperature for s in seqs]
    if any(t != 1.0 for t in temps):
        p.div_(torch.tensor(temps, dtype=torch.float32)[:, None])
    p.exp_()                     # unnormalised probabilities; the largest is exactly 1

    if k_rows:
        # on the logits: temperature does not change the order
        ks = torch.tensor([seqs[j].top_k for j in k_rows], dtype=torch.long)
        xk = x if len(k_rows) == b else x[k_rows]
        kth = torch.topk(xk, int(ks.max()), dim=-1, sorted=True).values.gather(
            1, (ks - 1)[:, None])
        if len(k_rows) == b:
            p.masked_fill_(xk < kth, 0.0)
        else:
            p[k_rows] = p[k_rows].masked_fill_(xk < kth, 0.0)

    p_rows = [j for j, s in enumerate(seqs) if s.top_p < 1.0]
    if p_rows:
        pp = p if len(p_rows) == b else p[p_rows]
        thr = _top_p_threshold(pp, [seqs[j].top_p for j in p_rows])
        pp.masked_fill_(pp < thr, 0.0)
        if len(p_rows) < b:
            p[p_rows] = pp

    m_rows = [j for j, s in enumerate(seqs) if s.min_p > 0.0]
    if m_rows:
        mins = torch.tensor([seqs[j].min_p for j in m_rows], dtype=torch.float32)[:, None]
        pm = p if len(m_rows) == b else p[m_rows]
        pm.masked_fill_(pm < mins, 0.0)
        if len(m_rows) < b:
            p[m_rows] = pm
    return p
