"""Exact-expectation tests of the CPU decoder's sampler against plain numpy references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llama_triton.contract import RequestError
from llama_triton.engine.draw import derive_seed
from llama_triton.engine.logit_processors import process_logits
from llama_triton.engine.sampler import MAX_TOP_LOGPROBS, Sampler
from llama_triton.engine.truncation import _top_p_threshold
from llama_triton.engine.types import SamplingParams


def mk(**kw) -> SamplingParams:
    kw.setdefault("max_new_tokens", 16)
    return SamplingParams(**kw)


def uniforms(seed: int, index: int, n: int) -> list[float]:
    """The uniform numbers a sequence's own generator yields (one per sampled step)."""
    g = torch.Generator().manual_seed(derive_seed(seed, index))
    return [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# numpy references


def ref_process(logits, params: SamplingParams, prompt, generated, vocab):
    """Bias -> repetition -> presence/frequency -> bad words -> min_tokens, in float32 numpy."""
    x = np.array(logits, dtype=np.float32).copy()
    if params.embedding_bias is not None:
        x = x + np.asarray(params.embedding_bias, dtype=np.float32)
    if params.repetition_penalty != 1.0:
        p = np.float32(params.repetition_penalty)
        for t in set(prompt) | set(generated):
            x[t] = x[t] / p if x[t] > 0 else x[t] * p
    if params.presence_penalty or params.frequency_penalty:
        counts = np.zeros(vocab, dtype=np.float64)
        for t in generated:
            counts[t] += 1
        x = (x.astype(np.float64) - params.presence_penalty * (counts > 0)
             - params.frequency_penalty * counts)
    x = np.asarray(x, dtype=np.float64)
    seq = list(prompt) + list(generated)
    for w in params.bad_words:
        if len(w) == 1 or (len(seq) >= len(w) - 1 and seq[len(seq) - len(w) + 1:] == w[:-1]):
            x[w[-1]] = -np.inf
    if len(generated) < params.min_tokens:
        if params.end_id is not None:
            x[params.end_id] = -np.inf
        for w in params.stop_words:
            if len(w) == 1:
                x[w[0]] = -np.inf
    return x


def ref_keep(x, params: SamplingParams):
    """Unnormalised probabilities after temperature / top-k / top-p / min-p (float64)."""
    x = np.asarray(x, dtype=np.float64)
    p = np.exp((x - x.max()) / params.temperature)
    if 0 < params.top_k < len(x):
        kth = np.sort(x)[::-1][params.top_k - 1]
        p[x < kth] = 0.0
    if 0 < params.top_p < 1:
        srt = np.sort(p)[::-1]
        cs = np.cumsum(srt)
        at = int(np.searchsorted(cs, params.top_p * p.sum(), side="left"))
        p[p < srt[min(at, len(srt) - 1)]] = 0.0
    if params.min_p > 0:
        p[p < params.min_p * p.max()] = 0.0
    return p


def ref_draw(p, u: float) -> int:
    cdf = np.cumsum(p)
    return int(np.searchsorted(cdf, u * cdf[-1], side="right"))


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


# ---------------------------------------------------------------------------------------------
# greedy and its equivalents


def test_greedy_takes_argmax_and_lowest_id_on_ties():
    s = Sampler(8)
    seq = s.new_sequence(mk(temperature=0.0), 0, [1])
    logits = torch.tensor([[0.5, 3.0, -1.0, 3.0, 2.0, 3.0, 0.0, 1.0]])
    assert s.sample(logits, [seq])[0].token_id == 1
    assert seq.generated == [1]          # sample() accepted it


@pytest.mark.parametrize("kw", [dict(top_k=1, temperature=1.3), dict(min_p=1.0, temperature=0.7),
                                dict(top_k=1, top_p=0.5, min_p=0.2, temperature=2.0)])
def test_top_k_1_and_min_p_1_equal_greedy(kw):
    V, B = 500, 6
    s = Sampler(V)
    gen = torch.Generator().manual_seed(0)
    seqs = [s.new_sequence(mk(seed=i, **kw), 0, [3, 4]) for i in range(B)]
    greedy = [s.new_sequence(mk(temperature=0.0), 0, [3, 4]) for _ in range(B)]
    for _ in range(10):
        logits = torch.randn(B, V, generator=gen) * 2
        logits[0, 7] = logits[0, 9] = logits[0].max() + 1    # a tie: lowest id wins
        got = [r.token_id for r in s.sample(logits, seqs)]
        want = [r.token_id for r in s.sample(logits, greedy)]
        assert got == want == logits.argmax(-1).tolist()
        assert got[0] == 7


def test_tiny_temperature_is_greedy():
    s = Sampler(10)
    seq = s.new_sequence(mk(temperature=1e-7), 0, [])
    logits = torch.tensor([[0.0, 1.0, 5.0, 4.999, 0, 0, 0, 0, 0, 0]])
    assert [s.sample(logits, [seq])[0].token_id for _ in range(5)] == [2] * 5


# ---------------------------------------------------------------------------------------------
# sampling vs reference


SAMPLING_CASES = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.7, top_k=5),
    dict(temperature=1.0, top_p=0.8),
    dict(temperature=0.8, top_p=0.3, top_k=50),
    dict(temperature=1.2, min_p=0.1),
    dict(temperature=1.0, top_k=40, top_p=0.9, min_p=0.05),
    dict(temperature=1.0, top_p=0.0),      # <= 0: off
    dict(temperature=1.0, top_p=1.5),      # >= 1: off
    dict(temperature=1.0, top_k=100000),   # >= vocab: off
]


@pytest.mark.parametrize("V", [1000, 32000])
def test_sampled_tokens_equal_the_reference(V):
    """Each row's token equals the numpy reference fed with the row's own uniform numbers."""
    steps = 6
    s = Sampler(V)
    params = [mk(seed=100 + i, **kw) for i, kw in enumerate(SAMPLING_CASES)]
    seqs = [s.new_sequence(p, 0, []) for p in params]
    us = [uniforms(p.seed, 0, steps) for p in params]
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        scale = 0.5 if step % 2 else 3.0        # flat and peaked distributions
        logits = torch.randn(len(seqs), V, generator=gen) * scale
        got = [r.token_id for r in s.sample(logits, seqs)]
        want = [ref_draw(ref_keep(logits[i].numpy(), p), us[i][step])
                for i, p in enumerate(params)]
        assert got == want, step


@pytest.mark.parametrize("scale", [0.0, 0.05, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.9, 0.999])
def test_top_p_threshold_equals_sorted_reference(scale, top_p):
    gen = torch.Generator().manual_seed(int(scale * 10) + int(top_p * 1000))
    x = torch.randn(3, 32000, generator=gen) * scale
    x[2, 100:] = -math.inf                     # masked tokens carry no mass
    p = torch.exp(x - x.amax(-1, keepdim=True))
    thr = _top_p_threshold(p, [top_p] * 3)
    for i in range(3):
        keep = (p[i] >= thr[i]).numpy()
        want = ref_keep(x[i].numpy(), mk(temperature=1.0, top_p=top_p)) > 0
        np.testing.assert_array_equal(keep, want)


def test_top_k_keeps_exactly_the_k_largest():
    V = 64
    s = Sampler(V)
    x = torch.arange(V, dtype=torch.float32)[None] * 0.01
    seen = set()
    for seed in range(200):
        seq = s.new_sequence(mk(temperature=5.0, top_k=3, seed=seed), 0, [])
        seen.add(s.sample(x, [seq])[0].token_id)
    assert seen == {61, 62, 63}


def test_min_p_keeps_probabilities_above_fraction_of_max():
    s = Sampler(4)
    # probabilities proportional to 1, 0.5, 0.25, 0.125: min_p 0.3 keeps the first two
    x = torch.log(torch.tensor([[1.0, 0.5, 0.25, 0.125]]))
    seen = {s.sample(x, [s.new_sequence(mk(min_p=0.3, seed=i), 0, [])])[0].token_id
            for i in range(200)}
    assert seen == {0, 1}


# ---------------------------------------------------------------------------------------------
# seeds


def test_same_seed_same_tokens_regardless_of_batch_and_row():
    V, steps = 32000, 12
    target = mk(temperature=0.9, top_p=0.9, seed=1234, return_log_probs=True, top_logprobs=3,
                repetition_penalty=1.2, frequency_penalty=0.5)
    gen = torch.Generator().manual_seed(5)
    stream = [torch.randn(V, generator=gen) for _ in range(steps)]

    def run(batch_size: int, row: int):
        s = Sampler(V)
        others = [mk(temperature=0.0), mk(temperature=1.0, seed=7), mk(top_k=20, seed=8),
                  mk(top_p=0.5, seed=9, presence_penalty=1.0), mk(min_p=0.2, seed=10)]
        seqs = [s.new_sequence(others[i % len(others)], i % 3, [i, i + 1])
                for i in range(batch_size)]
        seqs[row] = s.new_sequence(target, 2, [11, 12, 13])
        noise = torch.Generator().manual_seed(batch_size * 100 + row)
        out = []
        for step in range(steps):
            logits = torch.randn(batch_size, V, generator=noise)
            logits[row] = stream[step]
            r = s.sample(logits, seqs)[row]
            out.append((r.token_id, r.logprob, r.top_logprobs))
        return out

    alone = run(1, 0)
    assert run(7, 4) == alone
    assert run(33, 32) == alone
    assert len({t for t, _, _ in alone}) > 1


def test_sequence_index_gives_its_own_stream_and_seed_is_reproducible():
    V = 1000
    x = torch.zeros(1, V)
    def tokens(seed, index):
        s = Sampler(V)
        seq = s.new_sequence(mk(seed=seed), index, [])
        return [s.sample(x, [seq])[0].token_id for _ in range(20)]
    assert tokens(3, 0) == tokens(3, 0)
    assert tokens(3, 0) != tokens(3, 1)
    assert tokens(3, 0) != tokens(4, 0)
    # uniform logits: the token is floor(u * V) of the sequence's own uniforms
    assert tokens(3, 1) == [int(u * V) for u in uniforms(3, 1, 20)]


def test_sampling_leaves_the_global_generator_alone():
    s = Sampler(100)
    seqs = [s.new_sequence(mk(seed=i, top_p=0.7, top_k=30, min_p=0.01), 0, []) for i in range(4)]
    state = torch.get_rng_state()
    for _ in range(5):
        s.sample(torch.randn(4, 100, generator=torch.Generator().manual_seed(0)), seqs)
    assert torch.equal(torch.get_rng_state(), state)


def test_seed_range_is_uint64():
    s = Sampler(10)
    top = s.new_sequence(mk(seed=2**64 - 1), 0, [])
    wrapped = s.new_sequence(mk(seed=-1), 0, [])
    assert top.seed == wrapped.seed == derive_seed(2**64 - 1, 0)
    assert 0 <= derive_seed(2**64 - 1, 5) < 2**64
    with pytest.raises(RequestError):
        s.new_sequence(mk(seed=2**64), 0, [])


# ---------------------------------------------------------------------------------------------
# penalties, bias, bad words, min_tokens: processed logits vs reference


HAND_LOGITS = np.array([2.0, -1.0, 0.5, -3.0, 4.0, 0.0, 1.5, -0.25, 3.0, -2.0], dtype=np.float32)


def drive(s: Sampler, params: SamplingParams, prompt, forced):
    """A sequence that has generated `forced` (accepted by hand), and its processed logits."""
    seq = s.new_sequence(params, 0, prompt)
    for t in forced:
        seq.accept(t)
    return process_logits(torch.from_numpy(HAND_LOGITS)[None], [seq], s.vocab_size).logits[0].numpy()


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_over_prompt_and_generated(penalty):
    s = Sampler(10)
    params = mk(repetition_penalty=penalty)
    prompt, gen = [0, 1, 1], [4, 3, 4]
    got = drive(s, params, prompt, gen)
    want = ref_process(HAND_LOGITS, params, prompt, gen, 10)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    # by hand: positive divided, negative multiplied, untouched elsewhere
    assert got[0] == np.float32(2.0) / np.float32(penalty)
    assert got[1] == np.float32(-1.0) * np.float32(penalty)
    assert got[2] == np.float32(0.5)


def test_presence_and_frequency_penalties_over_generated_only():
    s = Sampler(10)
    params = mk(presence_penalty=0.5, frequency_penalty=0.25)
    prompt, gen = [2, 6], [4, 4, 4, 8, 1]
    got = drive(s, params, prompt, gen)
    want = ref_process(HAND_LOGITS, params, prompt, gen, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got[4] == pytest.approx(4.0 - 0.5 - 0.75)
    assert got[2] == 0.5 and got[6] == 1.5          # prompt tokens untouched


def test_bias_then_repetition_then_presence_frequency_order():
    s = Sampler(10)
    bias = np.array([0, 0, -1.0, 0, -5.0, 0, 0, 0, 1.0, 0], dtype=np.float32)
    params = mk(embedding_bias=bias, repetition_penalty=2.0, presence_penalty=0.3,
                frequency_penalty=-0.1)
    prompt, gen = [2, 8], [4, 4, 2]
    got = drive(s, params, prompt, gen)
    want = ref_process(HAND_LOGITS, params, prompt, gen, 10)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # token 4: (4 - 5) = -1 -> *2 = -2 -> -0.3 + 0.2 = -2.1 (bias before the penalty's sign test)
    assert got[4] == pytest.approx(-2.1)


def test_bad_words_single_always_multi_after_prefix():
    s = Sampler(10)
    params = mk(bad_words=[[5], [1, 2, 9], [3, 6]])
    # prefix [1, 2] straddles prompt and generated; [3] does not end the sequence
    got = drive(s, params, [7, 1], [2])
    want = ref_process(HAND_LOGITS, params, [7, 1], [2], 10)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert got[5] == -np.inf and got[9] == -np.inf and got[6] == 1.5
    got = drive(s, params, [7], [3])
    assert got[6] == -np.inf and got[9] == np.float32(-2.0) and got[5] == -np.inf


def test_min_tokens_masks_end_id_and_single_token_stop_words():
    s = Sampler(10)
    params = mk(temperature=0.0, end_id=4, stop_words=[[8], [6, 7]], min_tokens=2)
    seq = s.new_sequence(params, 0, [0])
    x = torch.from_numpy(HAND_LOGITS)[None]
    p = process_logits(x, [seq], s.vocab_size).logits[0]
    assert p[4] == -np.inf and p[8] == -np.inf and p[6] == 1.5
    assert s.sample(x, [seq])[0].token_id == 0       # best after 4 (4.0) and 8 (3.0)
    assert s.sample(x, [seq])[0].token_id == 0
    assert s.sample(x, [seq])[0].token_id == 4       # two generated: end_id allowed again


def test_penalty_state_is_incremental_across_steps():
    """Many steps through sample(): processed logits match the reference of the whole history."""
    V = 50
    s = Sampler(V)
    params = mk(temperature=1.0, seed=3, repetition_penalty=1.5, presence_penalty=0.4,
                frequency_penalty=0.2, bad_words=[[7], [3, 4]], end_id=1, min_tokens=5)
    prompt = [3, 9, 9, 20]
    seq = s.new_sequence(params, 0, prompt)
    gen = torch.Generator().manual_seed(2)
    for _ in range(25):
        logits = torch.randn(1, V, generator=gen) * 2
        want = ref_process(logits[0].numpy(), params, prompt, seq.generated, V)
        got = process_logits(logits, [seq], s.vocab_size).logits[0].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        s.sample(logits, [seq])
    assert len(seq.generated) == 25


# ---------------------------------------------------------------------------------------------
# log-probs


def test_logprobs_are_log_softmax_of_processed_logits_before_temperature():
    V = 200
    s = Sampler(V)
    gen = torch.Generator().manual_seed(4)
    cases = [mk(temperature=0.0, return_log_probs=True, top_logprobs=5),
             mk(temperature=0.5, top_k=10, seed=1, return_log_probs=True, top_logprobs=20),
             mk(temperature=1.0, seed=2, return_log_probs=True, repetition_penalty=1.4,
                bad_words=[[0]]),
             mk(temperature=1.0, seed=3, top_logprobs=3),
             mk(temperature=1.0, seed=4)]
    prompt = [0, 1, 2]
    seqs = [s.new_sequence(p, 0, prompt) for p in cases]
    for _ in range(4):
        logits = torch.randn(len(seqs), V, generator=gen)
        refs = [log_softmax(ref_process(logits[i].numpy(), p, prompt, seqs[i].generated, V))
                for i, p in enumerate(cases)]
        results = s.sample(logits, seqs)
        for i, (r, p, lp) in enumerate(zip(results, cases, refs)):
            if p.return_log_probs:
                assert r.logprob == pytest.approx(lp[r.token_id], abs=1e-5)
                assert r.logprob < 0
            else:
                assert r.logprob is None
            if p.top_logprobs:
                order = np.argsort(-lp, kind="stable")[: p.top_logprobs]
                assert [t for t, _ in r.top_logprobs] == order.tolist()
                np.testing.assert_allclose([v for _, v in r.top_logprobs], lp[order], atol=1e-5)
            else:
                assert r.top_logprobs is None
    # greedy: the chosen token is the best of top_logprobs and its log-prob is real
    assert results[0].top_logprobs[0][0] == results[0].token_id
    assert results[0].logprob == pytest.approx(results[0].top_logprobs[0][1])
    assert results[0].logprob != 0.0


# ---------------------------------------------------------------------------------------------
# robustness


def test_sample_does_not_modify_the_callers_logits():
    s = Sampler(10)
    seq = s.new_sequence(mk(embedding_bias=np.ones(10, np.float32), bad_words=[[1]]), 0, [])
    x = torch.from_numpy(HAND_LOGITS.copy())[None]
    before = x.clone()
    s.sample(x, [seq])
    assert torch.equal(x, before)


def test_rows_without_any_finite_logit_still_get_a_token():
    s = Sampler(6)
    banned = mk(temperature=0.0, embedding_bias=np.full(6, -np.inf, np.float32))
    nan_row = mk(temperature=1.0, seed=1, return_log_probs=True)
    all_bad = mk(temperature=1.0, seed=2, bad_words=[[i] for i in range(6)])
    seqs = [s.new_sequence(p, 0, []) for p in (banned, nan_row, all_bad)]
    logits = torch.tensor([[0.0, 1.0, 2.0, 5.0, 1.0, 0.0],
                           [0.0, math.nan, 2.0, 1.0, math.nan, 0.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    r = s.sample(logits, seqs)
    assert r[0].token_id == 3                     # falls back to the raw logits
    assert r[1].token_id in (0, 2, 3, 5) and math.isfinite(r[1].logprob)
    assert 0 <= r[2].token_id < 6
    assert all(x.error is None for x in r)


def test_empty_batch_and_shape_check():
    s = Sampler(10)
    assert s.sample(torch.zeros(0, 10), []) == []
    seq = s.new_sequence(mk(), 0, [])
    with pytest.raises(ValueError):
        s.sample(torch.zeros(1, 11), [seq])


# ---------------------------------------------------------------------------------------------
# validation


BAD_PARAMS = [
    dict(temperature=math.nan), dict(temperature=math.inf), dict(temperature=-0.1),
    dict(top_k=-1), dict(top_p=math.nan),
    dict(min_p=-0.01), dict(min_p=1.5), dict(min_p=math.nan),
    dict(repetition_penalty=0.0), dict(repetition_penalty=-1.0),
    dict(repetition_penalty=math.nan),
    dict(presence_penalty=math.inf), dict(frequency_penalty=math.nan),
    dict(top_logprobs=-1), dict(top_logprobs=MAX_TOP_LOGPROBS + 1),
    dict(embedding_bias=np.zeros(9, np.float32)), dict(embedding_bias=np.zeros(11, np.float32)),
    dict(embedding_bias=np.full(10, np.nan, np.float32)),
    dict(max_new_tokens=-1), dict(num_return_sequences=0),
    dict(bad_words=[[10]]), dict(bad_words=[[-1]]), dict(stop_words=[[3, 99]]),
    dict(end_id=10), dict(end_id=-5), dict(min_tokens=-1),
    dict(seed=2**64), dict(seed=-(2**63) - 1),
    dict(guide_type="yaml", guide="x"), dict(guide_type="regex", guide=None),
    dict(guide="{}"),
]


@pytest.mark.parametrize("kw", BAD_PARAMS, ids=[str(sorted(k))[:40] for k in BAD_PARAMS])
def test_invalid_params_raise_request_error(kw):
    s = Sampler(10)
    with pytest.raises(RequestError):
        s.new_sequence(mk(**kw), 0, [1, 2])


def test_invalid_prompt_ids_raise_request_error():
    s = Sampler(10)
    with pytest.raises(RequestError):
        s.new_sequence(mk(repetition_penalty=1.2), 0, [1, 10])
    with pytest.raises(RequestError):
        s.new_sequence(mk(), 0, [-1])


def test_guided_request_without_tokenizer_is_a_request_error():
    s = Sampler(10)
    with pytest.raises(RequestError, match="tokenizer"):
        s.new_sequence(mk(guide_type="json"), 0, [1])


def test_edge_values_are_accepted():
    s = Sampler(10)
    for kw in [dict(temperature=0.0), dict(top_p=-1.0), dict(top_p=math.inf), dict(min_p=1.0),
               dict(top_k=10**9), dict(top_logprobs=MAX_TOP_LOGPROBS), dict(end_id=-1),
               dict(embedding_bias=np.full(10, -np.inf, np.float32)), dict(max_new_tokens=0),
               dict(seed=0), dict(bad_words=[[]])]:
        s.new_sequence(mk(**kw), 0, [1])


@pytest.mark.parametrize("kw", [dict(temperature=0.8), dict(temperature=1.0, top_p=0.9), dict(top_k=5),
                                dict(temperature=1.0, min_tokens=4, end_id=2), dict(repetition_penalty=1.3)])
def test_overwrite_draws_the_same_tokens_and_without_it_the_logits_are_untouched(kw):
    """The engine lets the sampler use its logits as scratch space (no copy per step); callers
    that keep their logits get them back unchanged, and both ways draw the same tokens."""
    V, B = 300, 5
    s = Sampler(V)
    gen = torch.Generator().manual_seed(3)
    mine = [s.new_sequence(mk(seed=i, **kw), 0, [3, 4]) for i in range(B)]
    scratch = [s.new_sequence(mk(seed=i, **kw), 0, [3, 4]) for i in range(B)]
    for _ in range(6):
        logits = torch.randn(B, V, generator=gen) * 3
        kept = logits.clone()
        got = [r.token_id for r in s.sample(logits, mine)]
        assert torch.equal(logits, kept)
        assert [r.token_id for r in s.sample(logits.clone(), scratch, overwrite=True)] == got
