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

Where each step lives: 1-6 and the fallback in `logit_processors.py`, 8's truncation in
`truncation.py`, 7 and 9 in `draw.py`; this module holds each sequence's state, checks a request's
parameters, and runs the steps in this order for the batch.

``sample()`` itself calls ``seq.accept(token)`` for every row before it returns; the engine must
not call ``accept`` again for those tokens. ``accept`` is public for callers that drive a
sequence by hand (tests, forced tokens).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from llama_triton.contract import RequestError
from llama_triton.text.grammar import DEFAULT_COMPILE_TIMEOUT_S, GuideCompiler, GuideMatcher
from .draw import UINT64_MASK, SampleResult, add_logprobs, derive_seed, draw
from .logit_processors import IdCounts, process_logits, repair_row
from .truncation import truncated_probs
from .types import SamplingParams

MAX_TOP_LOGPROBS = 20
GREEDY_TEMPERATURE = 1e-5          # temperatures below this are greedy


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
        self.seen = IdCounts(prompt_ids) if self.repetition_penalty != 1.0 else None   # prompt + generated
        self.counts = (IdCounts() if (self.presence_penalty != 0.0
                                      or self.frequency_penalty != 0.0) else None)   # generated

        self.bad_single: list[int] = norm["bad_single"]
        self.bad_multi: list[tuple[list[int], int]] = norm["bad_multi"]
        longest = max((len(p) for p, _ in self.bad_multi), default=0)
        # the last prompt tokens a multi-token bad word can reach back into
        self.prompt_tail: list[int] = list(prompt_ids[-longest:]) if longest else []

        self.min_tokens: int = norm["min_tokens"]
        self.min_tokens_ids: list[int] = norm["min_tokens_ids"]
        # Index tensors built once: masking them costs one vectorised write per step, however long
        # the request's lists are (a flood of stop_token_ids cost ms per token as Python lists).
        self.bad_single_ids = torch.tensor(self.bad_single, dtype=torch.long) if self.bad_single else None
        self.min_tokens_mask_ids = (torch.tensor(self.min_tokens_ids, dtype=torch.long)
                                    if self.min_tokens_ids else None)
        self.guide = guide

    # -- state --------------------------------------------------------------------------------
    @property
    def is_grammar_terminated(self) -> bool:
        """The grammar has accepted its stop token: the engine should finish the sequence."""
        return self.guide is not None and self.guide.is_terminated

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
        if self.seen is not None:
            self.seen.add(token_id)
        if self.counts is not None:
            self.counts.add(token_id)


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
        if not -(1 << 63) <= seed <= UINT64_MASK:
            raise RequestError(f"seed must be a 64-bit integer, got {seed}")
        n["seed"] = seed & UINT64_MASK     # negative int64 seeds wrap to their uint64 bit pattern
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
    def sample(self, logits: torch.Tensor, seqs: Sequence[SequenceSampling], *, overwrite: bool = False
               ) -> list[SampleResult]:
        """Picks one token per row of ``logits`` [B, V] (row i belongs to ``seqs[i]``), records
        it with ``seqs[i].accept``, and returns the tokens with their log-probs. ``overwrite``:
        the caller is done with ``logits`` and they may be used as scratch space."""
        seqs = list(seqs)
        if not seqs:
            return []
        x, raw, bitmask = process_logits(logits, seqs, self.vocab_size)
        scratch = overwrite or x is not raw
        B = len(seqs)
        rowmax = x.amax(dim=-1, keepdim=True)                  # NaN if the row has a NaN
        bad = (~torch.isfinite(rowmax[:, 0])).nonzero()[:, 0].tolist()
        if bad and not scratch:
            x, scratch = x.clone(), True      # the repair writes rows; not into the caller's logits
        for i in bad:
            repair_row(x, raw, bitmask, i, seqs[i])
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
                tokens = draw(truncated_probs(x, rowmax, seqs, scratch=scratch), seqs)
            else:
                picked = [seqs[i] for i in rest]
                tokens[rest] = draw(truncated_probs(x[rest], rowmax[rest], picked), picked)
        tok_list = tokens.tolist()

        results = [SampleResult(token_id=t) for t in tok_list]
        if lp is not None:
            add_logprobs(results, lp, tokens, lp_rows, seqs, self.vocab_size)
        for i, s in enumerate(seqs):
            try:
                s.accept(tok_list[i])
            except RequestError as e:
                results[i].error = str(e)
        return results
