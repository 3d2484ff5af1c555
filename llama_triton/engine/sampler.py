"""Per-request sampling for the CPU decoder, batched over the running sequences.

The engine keeps one `SequenceSampling` per running sequence (made by `Sampler.new_sequence`)
and, after each forward pass, calls `Sampler.sample(logits[B, V], seqs)` once for the batch.
Every row is processed independently of the others: a sequence's tokens depend only on its own
parameters, seed, prompt and logits, never on which other rows share the batch or on its row.

Processing order (per row; a step that is off for a row costs that row nothing):

1. ``embedding_bias`` is added to the logits.
2. ``repetition_penalty`` (multiplicative, CTRL / Hugging Face): for every token id that appears
   in the prompt or in the generated tokens, ``logit > 0 ? logit / p : logit * p``.
3. ``presence_penalty`` / ``frequency_penalty`` (additive, OpenAI), over generated tokens only:
   ``logit -= presence * (count > 0) + frequency * count``.
4. ``bad_words``: a single-token entry is always masked (-inf); a multi-token entry masks its last
   token when the sequence so far (prompt + generated, as TensorRT-LLM's kernel sees it) ends
   with the entry's other tokens.
5. ``min_tokens``: until ``min_tokens`` tokens have been generated, ``end_id`` and every
   single-token stop word are masked.
6. Guided decoding: tokens the grammar does not allow are masked (see `guided.py`); once the
   grammar has terminated, only the stop token (``end_id``) is allowed.
   If steps 1-6 leave a row with no finite logit (for example bad words or ``min_tokens`` ban
   every token the grammar allows), the row falls back to the raw logits with only the grammar
   mask (NaN -> -inf); if even that is empty, to the lowest id the grammar allows (id 0 without
   a grammar). The grammar always wins.
7. Log-probs are taken here (see below).
8. Greedy rows (``temperature < 1e-5``, ``top_k == 1`` or ``min_p >= 1``) take the argmax, ties to
   the lowest id, and skip the rest. Other rows: logits / ``temperature``, then ``top_k`` (keep
   logits >= the k-th largest, ties included), then ``top_p`` (keep the most likely tokens
   until their cumulative probability reaches ``top_p``; tokens tied with the last kept one are
   kept too), then ``min_p`` (keep probabilities >= ``min_p`` * the largest). This is Hugging
   Face's warper order. ``top_k`` 0 is off; ``top_p`` <= 0 or >= 1 is off; ``min_p`` 0 is off.
9. The token is drawn by inverse CDF (in id order, float64) with one uniform number per step
   from the sequence's own ``torch.Generator``, seeded from ``derive_seed(seed, sequence_index)``.

Log-probs: ``SampleResult.logprob`` is the log-softmax, at the chosen token, of the logits after
steps 1-6 (bias, penalties and masks) and *before* temperature, top-k, top-p and min-p. So
greedy decoding returns real log-probs (not TensorRT-LLM's zeros), and a token's log-prob does
not depend on the truncation settings. ``top_logprobs`` (0..20) are the N most likely
``(id, logprob)`` pairs of that same distribution, best first.

``sample()`` itself calls ``seq.accept(token)`` for every row before it returns; the engine must
not call ``accept`` again for those tokens. ``accept`` is public for callers that drive a
sequence by hand (tests, forced tokens).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from llama_triton.contract import RequestError
from llama_triton.text.grammar import DEFAULT_COMPILE_TIMEOUT_S, GuideCompiler, GuideMatcher
from .types import SamplingParams

MAX_TOP_LOGPROBS = 20
GREEDY_TEMPERATURE = 1e-5          # temperatures below this are greedy
_CDF_BLOCK = 128                   # inverse CDF: block sums, then one block
_TOP_P_MANTISSA_BITS = 6           # top-p histogram resolution (bucket width 2**(1/64))
_MASK64 = (1 << 64) - 1
_NEG_INF = float("-inf")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, sequence_index: int) -> int:
    """The uint64 seed of one sequence's generator, from the request seed and sequence index."""
    return _splitmix64(_splitmix64(int(seed) & _MASK64) ^ (int(sequence_index) & _MASK64))


@dataclass
class SampleResult:
    token_id: int
    logprob: Optional[float] = None                           # when return_log_probs
    top_logprobs: Optional[list[tuple[int, float]]] = None    # when top_logprobs > 0; best first
    error: Optional[str] = None   # set if the sequence cannot go on (grammar rejected the token)


class _IdCounts:
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


def _padded(structs: list[_IdCounts], with_counts: bool):
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


class SequenceSampling:
    """All sampling state of one sequence: its generator, penalty counts, grammar matcher and
    generated ids. Made by `Sampler.new_sequence`; advanced by `accept` (which `Sampler.sample`
    calls itself)."""

    def __init__(self, params: SamplingParams, sequence_index: int, prompt_ids: Sequence[int],
                 vocab_size: int, bias: Optional[torch.Tensor], guide: Optional[GuideMatcher],
                 norm: dict):
        self.params = params
        self.sequence_index = sequence_index
        self.vocab_size = vocab_size
        self.generated: list[int] = []
        self.seed = derive_seed(norm["seed"], sequence_index)
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)

        self.temperature: float = norm["temperature"]
        self.top_k: int = norm["top_k"]          # 0: off (also when >= vocab size)
        self.top_p: float = norm["top_p"]        # 1.0: off
        self.min_p: float = norm["min_p"]        # 0.0: off
        self.greedy = (self.temperature < GREEDY_TEMPERATURE or self.top_k == 1
                       or self.min_p >= 1.0)

        self.return_log_probs: bool = norm["return_log_probs"]
        self.top_logprobs: int = norm["top_logprobs"]
        self.needs_logprobs = self.return_log_probs or self.top_logprobs > 0

        self.bias = bias
        self.repetition_penalty: float = norm["repetition_penalty"]
        self.presence_penalty: float = norm["presence_penalty"]
        self.frequency_penalty: float = norm["frequency_penalty"]
        self._seen = _IdCounts(prompt_ids) if self.repetition_penalty != 1.0 else None
        self._counts = (_IdCounts() if (self.presence_penalty != 0.0
                                        or self.frequency_penalty != 0.0) else None)

        self.bad_single: list[int] = norm["bad_single"]
        self.bad_multi: list[tuple[list[int], int]] = norm["bad_multi"]
        longest = max((len(p) for p, _ in self.bad_multi), default=0)
        # the last prompt tokens a multi-token bad word can reach back into
        self._prompt_tail: list[int] = list(prompt_ids[-longest:]) if longest else []

        self.min_tokens: int = norm["min_tokens"]
        self.min_tokens_ids: list[int] = norm["min_tokens_ids"]
        # Index tensors built once: masking them costs one vectorised write per step, however long
        # the request's lists are (a flood of stop_token_ids cost ms per token as Python lists).
        self._bad_single_t = torch.tensor(self.bad_single, dtype=torch.long) if self.bad_single else None
        self._min_tokens_ids_t = (torch.tensor(self.min_tokens_ids, dtype=torch.long)
                                  if self.min_tokens_ids else None)
        self.guide = guide

    # -- state --------------------------------------------------------------------------------
    @property
    def num_generated(self) -> int:
        return len(self.generated)

    @property
    def is_grammar_terminated(self) -> bool:
        """The grammar has accepted its stop token: the engine should finish the sequence."""
        return self.guide is not None and self.guide.is_terminated

    @property
    def is_guided(self) -> bool:
        return self.guide is not None

    def accept(self, token_id: int) -> None:
        """Records a generated token (advances counts and grammar). `Sampler.sample` calls this
        for the tokens it returns. Raises RequestError if the grammar rejects the token."""
        token_id = int(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise RequestError(f"token id {token_id} is outside the vocabulary")
        if self.guide is not None and not self.guide.is_terminated:
            if not self.guide.accept(token_id):
                raise RequestError(f"token id {token_id} is not allowed by the guided-decoding "
                                   "grammar here")
        self.generated.append(token_id)
        if self._seen is not None:
            self._seen.add(token_id)
        if self._counts is not None:
            self._counts.add(token_id)

    def _bad_multi_hits(self) -> list[int]:
        hits = []
        gen = self.generated
        for prefix, last in self.bad_multi:
            n = len(prefix)
            if len(gen) >= n:
                tail = gen[len(gen) - n:]
            else:
                need = n - len(gen)
                if need > len(self._prompt_tail):
                    continue
                tail = self._prompt_tail[len(self._prompt_tail) - need:] + gen
            if tail == prefix:
                hits.append(last)
        return hits

    def _next_uniform(self) -> float:
        return float(torch.rand((), generator=self.generator, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# validation


def _num(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise RequestError(f"{name} must not be NaN")
    return v


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise RequestError(f"{name} must be an integer, got {value!r}")


def _token_lists(value: Any, name: str, vocab_size: int) -> list[list[int]]:
    out = []
    if value is None:
        return out
    if not isinstance(value, (list, tuple, np.ndarray)):
        raise RequestError(f"{name} must be a list of token-id lists")
    for entry in value:
        if isinstance(entry, (int, np.integer)):
            entry = [entry]
        if not isinstance(entry, (list, tuple, np.ndarray)):
            raise RequestError(f"{name} must be a list of token-id lists")
        ids = [_int(t, name) for t in entry]
        for t in ids:
            if not 0 <= t < vocab_size:
                raise RequestError(f"{name}: token id {t} is outside the vocabulary "
                                   f"(0..{vocab_size - 1})")
        if ids:
            out.append(ids)
    return out


class Sampler:
    """Batched sampler for one model vocabulary. ``hf_tokenizer`` is needed only for guided
    decoding (its xgrammar ``TokenizerInfo`` is built on first use)."""

    def __init__(self, vocab_size: int, hf_tokenizer: Any = None, *,
                 guide_compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 json_max_whitespace: Optional[int] = None):
        self.vocab_size = int(vocab_size)
        self.guides = GuideCompiler(hf_tokenizer, self.vocab_size,
                                    compile_timeout_s=guide_compile_timeout_s,
                                    json_max_whitespace=json_max_whitespace)

    # -- request set-up -----------------------------------------------------------------------
    def _normalise(self, params: SamplingParams, prompt_ids: Optional[Sequence[int]]) -> dict:
        V = self.vocab_size
        p = params
        n: dict = {}
        if _int(p.max_new_tokens, "max_new_tokens") < 0:
            raise RequestError("max_new_tokens must be >= 0")
        if _int(p.num_return_sequences, "num_return_sequences") < 1:
            raise RequestError("num_return_sequences must be >= 1")
        t = _num(p.temperature, "temperature")
        if not math.isfinite(t) or t < 0:
            raise RequestError(f"temperature must be finite and >= 0, got {t}")
        n["temperature"] = t
        k = _int(p.top_k, "top_k")
        if k < 0:
            raise RequestError(f"top_k must be >= 0, got {k}")
        n["top_k"] = 0 if k >= V else k
        tp = _num(p.top_p, "top_p")
        n["top_p"] = tp if 0.0 < tp < 1.0 else 1.0
        mp = _num(p.min_p, "min_p")
        if not 0.0 <= mp <= 1.0:
            raise RequestError(f"min_p must be in [0, 1], got {mp}")
        n["min_p"] = mp
        rp = _num(p.repetition_penalty, "repetition_penalty")
        if not math.isfinite(rp) or rp <= 0:
            raise RequestError(f"repetition_penalty must be finite and > 0, got {rp}")
        n["repetition_penalty"] = rp
        for name in ("presence_penalty", "frequency_penalty"):
            v = _num(getattr(p, name), name)
            if not math.isfinite(v):
                raise RequestError(f"{name} must be finite")
            n[name] = v
        seed = _int(p.seed, "seed")
        if not -(1 << 63) <= seed <= _MASK64:
            raise RequestError(f"seed must be a 64-bit integer, got {seed}")
        n["seed"] = seed & _MASK64     # negative int64 seeds wrap to their uint64 bit pattern
        end_id = None if p.end_id is None else _int(p.end_id, "end_id")
        if end_id is not None and not 0 <= end_id < V:
            # TensorRT-LLM's "no end id" is -1
            if end_id != -1:
                raise RequestError(f"end_id {end_id} is outside the vocabulary")
            end_id = None
        n["end_id"] = end_id
        min_tokens = _int(p.min_tokens, "min_tokens")
        if min_tokens < 0:
            raise RequestError("min_tokens must be >= 0")
        n["min_tokens"] = min_tokens
        stop_words = _token_lists(p.stop_words, "stop_words", V)
        bad_words = _token_lists(p.bad_words, "bad_words", V)
        n["bad_single"] = sorted({w[0] for w in bad_words if len(w) == 1})
        n["bad_multi"] = [(w[:-1], w[-1]) for w in bad_words if len(w) > 1]
        ids = ([end_id] if end_id is not None else []) + [w[0] for w in stop_words if len(w) == 1]
        n["min_tokens_ids"] = sorted(set(ids))
        n["return_log_probs"] = bool(p.return_log_probs)
        tl = _int(p.top_logprobs, "top_logprobs")
        if not 0 <= tl <= MAX_TOP_LOGPROBS:
            raise RequestError(f"top_logprobs must be in 0..{MAX_TOP_LOGPROBS}, got {tl}")
        n["top_logprobs"] = tl
        if prompt_ids is not None and len(prompt_ids):
            arr = np.asarray(prompt_ids)
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise RequestError("prompt ids must be a flat list of integers")
            if arr.min() < 0 or arr.max() >= V:
                raise RequestError("prompt contains token ids outside the vocabulary")
        GuideCompiler.check_guide(p.guide_type or None, p.guide)
        return n

    def _bias(self, params: SamplingParams) -> Optional[torch.Tensor]:
        if params.embedding_bias is None:
            return None
        try:
            arr = np.asarray(params.embedding_bias, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise RequestError("embedding_bias must be a float vector") from None
        if arr.size == 0:
            return None
        if arr.size != self.vocab_size:
            raise RequestError(f"embedding_bias has {arr.size} entries, the vocabulary has "
                               f"{self.vocab_size}")
        if np.isnan(arr).any() or np.isposinf(arr).any():
            raise RequestError("embedding_bias must not contain NaN or +inf")
        if not arr.any():
            return None
        return torch.from_numpy(arr.copy())

    def check(self, params: SamplingParams, prompt_ids: Optional[Sequence[int]] = None) -> None:
        """Checks a request's parameters without compiling its guide (quick: Triton's execute thread
        calls it through Engine.submit). Raises RequestError. Safe to call from any thread."""
        self._normalise(params, prompt_ids)
        self._bias(params)

    def compile_guide(self, params: SamplingParams):
        """The request's compiled grammar (None without a guide); blocks up to the compile time
        limit, so the engine calls it on its compile threads. Raises RequestError."""
        if not params.guide_type:
            return None
        return self.guides.compile(params.guide_type, params.guide)

    def validate(self, params: SamplingParams, prompt_ids: Optional[Sequence[int]] = None) -> None:
        """`check`, and compiles the guide too (which warms the grammar cache). Raises RequestError."""
        self.check(params, prompt_ids)
        self.compile_guide(params)

    def new_sequence(self, params: SamplingParams, sequence_index: int,
                     prompt_ids: Sequence[int], compiled: Any = None) -> SequenceSampling:
        """Validates ``params`` and makes the sampling state of one sequence of a request.

        ``compiled`` is the request's compiled grammar when the caller has it (the engine compiles
        off its thread, `compile_guide`); else the guide is compiled here. Raises RequestError on
        bad input, an invalid guide, or a guide that takes longer than the compile time limit. The
        n sequences of a request share one compiled grammar, each with its own matcher."""
        idx = _int(sequence_index, "sequence_index")
        if idx < 0:
            raise RequestError("sequence_index must be >= 0")
        norm = self._normalise(params, prompt_ids)
        bias = self._bias(params)
        guide = None
        if params.guide_type:
            if compiled is None:
                compiled = self.guides.compile(params.guide_type, params.guide)
            stops = [norm["end_id"]] if norm["end_id"] is not None else None
            guide = self.guides.new_matcher(compiled, stops)
        prompt = [] if prompt_ids is None else [int(t) for t in prompt_ids]
        return SequenceSampling(params, idx, prompt, self.vocab_size, bias,
                                guide, norm)

    # -- the per-step work --------------------------------------------------------------------
    def process_logits(self, logits: torch.Tensor, seqs: Sequence[SequenceSampling]
                       ) -> torch.Tensor:
        """Steps 1-6 of the module docstring on a float32 copy of ``logits`` [B, V]."""
        x, _ = self._process(logits, seqs)
        return x

    def _check_logits(self, logits: torch.Tensor, seqs) -> torch.Tensor:
        if logits.dim() != 2 or logits.shape[0] != len(seqs) or logits.shape[1] != self.vocab_size:
            raise ValueError(f"logits must be [{len(seqs)}, {self.vocab_size}], "
                             f"got {list(logits.shape)}")
        return logits.detach().to(device="cpu", dtype=torch.float32)

    @staticmethod
    def _edits(seqs: Sequence[SequenceSampling]) -> bool:
        """Whether steps 1-6 change any row (else the logits are used as they are, uncopied)."""
        for s in seqs:
            if (s.bias is not None or s.guide is not None or s.bad_single or s.bad_multi
                    or (s._seen is not None and s._seen.n) or (s._counts is not None and s._counts.n)
                    or (s.min_tokens_ids and len(s.generated) < s.min_tokens)):
                return True
        return False

    def _process(self, logits: torch.Tensor, seqs: Sequence[SequenceSampling]):
        raw = self._check_logits(logits, seqs)
        if not self._edits(seqs):
            return raw, (raw, None)
        x = raw.clone()
        V = self.vocab_size

        # 1. embedding bias
        for i, s in enumerate(seqs):
            if s.bias is not None:
                x[i].add_(s.bias)

        # 2. repetition penalty over prompt + generated ids
        rows = [i for i, s in enumerate(seqs) if s._seen is not None and s._seen.n]
        if rows:
            ids, _ = _padded([seqs[i]._seen for i in rows], with_counts=False)
            r = torch.tensor(rows, dtype=torch.long)[:, None]
            pen = torch.tensor([seqs[i].repetition_penalty for i in rows],
                               dtype=torch.float32)[:, None]
            vals = x[r, ids]
            x[r, ids] = torch.where(vals > 0, vals / pen, vals * pen)

        # 3. presence / frequency penalties over generated ids
        rows = [i for i, s in enumerate(seqs) if s._counts is not None and s._counts.n]
        if rows:
            ids, counts = _padded([seqs[i]._counts for i in rows], with_counts=True)
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
            if s._bad_single_t is not None:
                x[i].index_fill_(0, s._bad_single_t, _NEG_INF)
            if s.bad_multi:
                hits = s._bad_multi_hits()
                mask_rows.extend([i] * len(hits))
                mask_cols.extend(hits)
            if s._min_tokens_ids_t is not None and len(s.generated) < s.min_tokens:
                x[i].index_fill_(0, s._min_tokens_ids_t, _NEG_INF)
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
        return x, (raw, bitmask)

    def _repair_row(self, x: torch.Tensor, raw: torch.Tensor, bitmask, i: int,
                    s: SequenceSampling) -> None:
        """Gives row i a usable distribution when steps 1-6 left none (module docstring)."""
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
            allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
            if s.guide.is_terminated or bitmask is None:
                allowed[s.guide.stop_token_ids] = True
            else:
                bits = bitmask[i].to(torch.int64) & 0xFFFFFFFF
                shifts = torch.arange(32, dtype=torch.int64)
                unpacked = ((bits[:, None] >> shifts) & 1).reshape(-1)[: self.vocab_size]
                allowed = unpacked.bool()
            y = torch.where(allowed, y, _NEG_INF)
        if not torch.isfinite(y.max()):
            if allowed is not None and allowed.any():
                pick = int(allowed.nonzero()[0])
            else:
                pick = 0
            y = torch.full((self.vocab_size,), _NEG_INF)
            y[pick] = 0.0
        row.copy_(y)

    def _draw(self, x: torch.Tensor, rowmax: torch.Tensor, seqs: list[SequenceSampling],
              scratch: bool = False) -> torch.Tensor:
        """Temperature, top-k, top-p, min-p and the draw, for non-greedy rows x [b, V] whose
        row maxima (finite) are ``rowmax`` [b, 1]. ``scratch``: x may be overwritten."""
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

        u = torch.tensor([s._next_uniform() for s in seqs], dtype=torch.float64)[:, None]
        return _inverse_cdf(p, u)

    def sample(self, logits: torch.Tensor, seqs: Sequence[SequenceSampling], *, overwrite: bool = False
               ) -> list[SampleResult]:
        """Picks one token per row of ``logits`` [B, V] (row i belongs to ``seqs[i]``), records
        it with ``seqs[i].accept``, and returns the tokens with their log-probs. ``overwrite``:
        the caller is done with ``logits`` and they may be used as scratch space."""
        seqs = list(seqs)
        if not seqs:
            return []
        x, (raw, bitmask) = self._process(logits, seqs)
        scratch = overwrite or x is not raw
        B = len(seqs)
        rowmax = x.amax(dim=-1, keepdim=True)                  # NaN if the row has a NaN
        bad = (~torch.isfinite(rowmax[:, 0])).nonzero()[:, 0].tolist()
        if bad and not scratch:
            x, scratch = x.clone(), True      # the repair writes rows; not into the caller's logits
        for i in bad:
            self._repair_row(x, raw, bitmask, i, seqs[i])
            rowmax[i] = x[i].max()

        lp_rows = [i for i, s in enumerate(seqs) if s.needs_logprobs]
        lp = None
        if lp_rows:
            lp = torch.log_softmax(x if len(lp_rows) == B else x[lp_rows], dim=-1)

        greedy = [i for i, s in enumerate(seqs) if s.greedy]
        if len(greedy) == B:
            tokens = x.argmax(dim=-1)
        else:
            tokens = torch.empty(B, dtype=torch.long)
            if greedy:
                tokens[greedy] = x[greedy].argmax(dim=-1)
            rest = [i for i, s in enumerate(seqs) if not s.greedy]
            if len(rest) == B:
                tokens = self._draw(x, rowmax, seqs, scratch=scratch)
            else:
                tokens[rest] = self._draw(x[rest], rowmax[rest], [seqs[i] for i in rest])
        tok_list = tokens.tolist()

        results = [SampleResult(token_id=t) for t in tok_list]
        if lp is not None:
            chosen = lp.gather(1, tokens[lp_rows][:, None])[:, 0].tolist()
            n_top = min(max(seqs[i].top_logprobs for i in lp_rows), self.vocab_size)
            if n_top:
                top_v, top_i = torch.topk(lp, n_top, dim=-1, sorted=True)
                top_v, top_i = top_v.tolist(), top_i.tolist()
            for j, i in enumerate(lp_rows):
                s = seqs[i]
                if s.return_log_probs:
                    results[i].logprob = chosen[j]
                if s.top_logprobs:
                    results[i].top_logprobs = list(zip(top_i[j][: s.top_logprobs],
                                                       top_v[j][: s.top_logprobs]))
        for i, s in enumerate(seqs):
            try:
                s.accept(tok_list[i])
            except RequestError as e:
                results[i].error = str(e)
        return results
