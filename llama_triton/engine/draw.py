"""The draw: each sequence's seeded generator, the inverse-CDF pick, and the log-probs it reports
(steps 7 and 9 of `sampler.py`'s processing order)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:
    from .sampler import SequenceSampling

UINT64_MASK = (1 << 64) - 1
_CDF_BLOCK = 128                   # inverse CDF: block sums, then one block


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & UINT64_MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & UINT64_MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & UINT64_MASK
    return x ^ (x >> 31)


def derive_seed(seed: int, sequence_index: int) -> int:
    """The uint64 seed of one sequence's generator, from the request seed and sequence index."""
    return _splitmix64(_splitmix64(int(seed) & UINT64_MASK) ^ (int(sequence_index) & UINT64_MASK))


@dataclass
class SampleResult:
    token_id: int
    logprob: Optional[float] = None                           # when return_log_probs
    top_logprobs: Optional[list[tuple[int, float]]] = None    # when top_logprobs > 0; best first
    error: Optional[str] = None   # set if the sequence cannot go on (grammar rejected the token)


def _inverse_cdf(p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row of unnormalised probabilities ``p`` [b, V], the first id whose cumulative mass
    (in id order) exceeds ``u * total`` for ``u`` [b, 1] in [0, 1). Two levels: float64
    cumulative sums of float32 block sums pick a block, then one block is scanned."""
    b, V = p.shape
    nblk = -(-V // _CDF_BLOCK)
    if nblk * _CDF_BLOCK != V:
        p = torch.nn.functional.pad(p, (0, nblk * _CDF_BLOCK - V))
    blocks = p.view(b, nblk, _CDF_BLOCK)
    cum = blocks.sum(-1).to(torch.float64).cumsum(-1)       # [b, nblk]
    target = u * cum[:, -1:]
    blk = torch.searchsorted(cum, target, right=True).clamp_(max=nblk - 1)
    before = torch.where(blk > 0, cum.gather(1, (blk - 1).clamp(min=0)), 0.0)
    inner = blocks[torch.arange(b), blk[:, 0]]               # [b, BLOCK]
    icum = inner.to(torch.float64).cumsum(-1) + before
    at = torch.searchsorted(icum, target, right=True).clamp_(max=_CDF_BLOCK - 1)
    tok = blk[:, 0] * _CDF_BLOCK + at[:, 0]
    picked = p.gather(1, tok[:, None])[:, 0]
    for j in (picked <= 0).nonzero()[:, 0].tolist():         # rounding at a block's end
        nz = (p[j, :V] > 0).nonzero()[:, 0]
        lower = nz[nz <= tok[j]]
        tok[j] = lower[-1] if len(lower) else nz[0]
    return tok


def draw(p: torch.Tensor, seqs: Sequence[SequenceSampling]) -> torch.Tensor:
    """One token per row of the unnormalised probabilities ``p`` [b, V], by inverse CDF (in id
    order, float64) with one uniform number per step from each sequence's own generator."""
    u = torch.tensor([float(torch.rand((), generator=s.generator, dtype=torch.float64)) for s in seqs],
                     dtype=torch.float64)[:, None]
    return _inverse_cdf(p, u)


def add_logprobs(results: list[SampleResult], lp: torch.Tensor, tokens: torch.Tensor, lp_rows: list[int],
                 seqs: Sequence[SequenceSampling], vocab_size: int) -> None:
    """Fills in the chosen token's log-prob and the top-N of the rows ``lp_rows``, whose
    log-softmax (of the processed logits, before temperature and truncation) is ``lp``."""
    chosen = lp.gather(1, tokens[lp_rows][:, None])[:, 0].tolist()
    n_top = min(max(seqs[i].top_logprobs for i in lp_rows), vocab_size)
    if n_top:
        top_v, top_i = torch.topk(lp, n_top, dim=-1, sorted=True)
        top_v, top_i = top_v.tolist(), top_i.tolist()
    for j, i in enumerate(lp_rows):
        s = seqs[i]
        if s.return_log_probs:
            results[i].logprob = chosen[j]
        if s.top_logprobs:
            results[i].top_logprobs = list(zip(top_i[j][: s.top_logprobs], top_v[j][: s.top_logprobs]))
