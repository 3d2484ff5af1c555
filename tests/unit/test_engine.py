"""The in-flight batching engine on a tiny random-weight Llama checkpoint."""
from __future__ import annotations

import math
import threading
import time
from collections import defaultdict

import pytest
import torch

from llama_triton.contract import QueueFull, RequestError
from llama_triton.engine.config import EngineConfig
from llama_triton.engine.engine import Engine
from llama_triton.engine.types import GenerationRequest, SamplingParams, SequenceOutput
from tests.unit.tiny_models import tiny_llama, torch_threads

VOCAB = 1000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    hf = tiny_llama(VOCAB)
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    hf.save_pretrained(str(path))
    return str(path), hf


def make_engine(checkpoint, **overrides) -> Engine:
    kwargs = dict(max_batch_size=16, max_num_tokens=4096, block_size=4, max_seq_len=256)
    kwargs.update(overrides)
    return Engine(checkpoint[0], EngineConfig(**kwargs))


def prompt(seed: int, length: int) -> list[int]:
    return torch.randint(0, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_greedy(checkpoint, ids: list[int], max_new_tokens: int) -> list[int]:
    with torch.inference_mode():
        x = torch.tensor([ids])
        out = checkpoint[1].generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                                     do_sample=False)
    return out[0, len(ids):].tolist()


class Collector:
    def __init__(self) -> None:
        self.outputs: dict[tuple[str, int], list[SequenceOutput]] = defaultdict(list)
        self.done = threading.Event()
        self.expected = 0

    def __call__(self, out: SequenceOutput) -> None:
        self.outputs[(out.request_id, out.sequence_index)].append(out)
        if out.finished and sum(o[-1].finished for o in self.outputs.values()) == self.expected:
            self.done.set()

    def tokens(self, request_id: str, index: int = 0) -> list[int]:
        return [t for o in self.outputs[(request_id, index)] for t in o.token_ids]

    def final(self, request_id: str, index: int = 0) -> SequenceOutput:
        outs = self.outputs[(request_id, index)]
        assert outs and outs[-1].finished and sum(o.finished for o in outs) == 1
        return outs[-1]


def submit(engine, collector, request_id, ids, max_new_tokens, streaming=True, **params) -> None:
    params.setdefault("temperature", 0.0)
    collector.expected += params.get("num_return_sequences", 1)
    engine.submit(GenerationRequest(request_id, ids, SamplingParams(max_new_tokens=max_new_tokens, **params),
                                    streaming=streaming), collector)


def drain(engine, max_steps: int = 5000) -> None:
    for _ in range(max_steps):
        if not engine.has_work:
            return
        engine.step()
    raise AssertionError("the engine did not finish")


def assert_idle(engine) -> None:
    assert engine.num_running == 0 and engine.num_waiting == 0
    assert engine.num_free_blocks == engine.config.num_blocks


def test_greedy_matches_transformers_generate(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    ids = prompt(1, 13)
    submit(engine, col, "stream", ids, 24)
    submit(engine, col, "whole", ids, 24, streaming=False, return_log_probs=True, top_logprobs=3)
    drain(engine)
    expected = hf_greedy(checkpoint, ids, 24)
    assert col.tokens("stream") == expected
    assert len(col.outputs[("stream", 0)]) == 24 and all(len(o.token_ids) == 1 for o in col.outputs[("stream", 0)])
    whole = col.final("whole")
    assert len(col.outputs[("whole", 0)]) == 1
    assert whole.token_ids == expected and whole.finish_reason == "length"
    assert len(whole.log_probs) == 24 and all(lp <= 0 for lp in whole.log_probs)
    assert len(whole.top_logprobs) == 24 and all(top[0][0] == t for top, t in zip(whole.top_logprobs, expected))
    assert engine.num_generated_tokens == 48
    assert_idle(engine)


def test_concurrent_requests_share_decode_passes(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    cases = {f"r{i}": (prompt(100 + i, 3 + 5 * i % 37), 4 + 3 * i % 19) for i in range(16)}
    for rid, (ids, n) in cases.items():
        submit(engine, col, rid, ids, n)
    drain(engine)
    solo = make_engine(checkpoint, enable_prefix_reuse=False)
    for rid, (ids, n) in cases.items():
        ref = Collector()
        submit(solo, ref, rid, ids, n)
        drain(solo)
        assert col.tokens(rid) == ref.tokens(rid) == hf_greedy(checkpoint, ids, n), rid
        assert col.final(rid).finish_reason == "length"
    total = sum(n for _, n in cases.values())
    assert engine.num_generated_tokens == total
    assert engine.num_decode_passes <= max(n for _, n in cases.values())  # all 16 decode together
    assert engine.num_decode_passes <= math.ceil(total / 8)
    assert_idle(engine)


def test_more_requests_than_slots(checkpoint):
    engine, col = make_engine(checkpoint, max_batch_size=8, prefill_chunk_size=512), Collector()
    cases = {f"r{i}": (prompt(200 + i, 6 + i % 5), 12) for i in range(64)}
    for rid, (ids, n) in cases.items():
        submit(engine, col, rid, ids, n)
    drain(engine)
    total = sum(len(col.tokens(rid)) for rid in cases)
    assert total == 64 * 12
    assert engine.num_decode_passes <= math.ceil(total / 8)
    for rid in ("r0", "r37", "r63"):
        assert col.tokens(rid) == hf_greedy(checkpoint, cases[rid][0], 12)
    assert_idle(engine)


def test_chunked_prefill_keeps_decoding_and_matches(checkpoint):
    engine, col = make_engine(checkpoint, prefill_chunk_size=16), Collector()
    short, long = prompt(3, 5), prompt(4, 100)
    submit(engine, col, "short", short, 30)
    engine.step()
    submit(engine, col, "long", long, 8)
    for _ in range(6):  # 100 prompt tokens at 16 per step take 7 steps
        engine.step()
        assert not col.outputs[("long", 0)]
    engine.step()
    assert len(col.tokens("long")) == 1
    assert len(col.tokens("short")) == 8  # one token per step while the long prompt was prefilled
    drain(engine)
    assert col.tokens("long") == hf_greedy(checkpoint, long, 8)
    assert col.tokens("short") == hf_greedy(checkpoint, short, 30)
    assert engine.num_prefill_tokens == 105


def test_n_sequences_share_one_prefill(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    ids = prompt(5, 14)  # not a multiple of the block size: the partial block is copied per fork
    submit(engine, col, "sampled", ids, 12, num_return_sequences=3, temperature=1.0, seed=7)
    drain(engine)
    assert engine.num_prefill_tokens == 14
    outs = [col.tokens("sampled", i) for i in range(3)]
    assert all(len(o) == 12 for o in outs)
    assert len({tuple(o) for o in outs}) > 1
    assert_idle(engine)

    for ids in (prompt(5, 14), prompt(5, 16)):  # partial last block copied per fork; full one shared
        engine, col = make_engine(checkpoint), Collector()
        submit(engine, col, "greedy", ids, 12, num_return_sequences=3, streaming=False)
        drain(engine)
        expected = hf_greedy(checkpoint, ids, 12)
        assert [col.final("greedy", i).token_ids for i in range(3)] == [expected] * 3
        assert engine.num_prefill_tokens == len(ids)
        assert_idle(engine)


def test_prefix_reuse(checkpoint):
    engine, col = make_engine(checkpoint, block_size=8), Collector()
    system = prompt(6, 40)
    first, second = system + prompt(7, 5), system + prompt(8, 9)
    submit(engine, col, "first", first, 10)
    drain(engine)
    prefilled = engine.num_prefill_tokens
    submit(engine, col, "second", second, 10)
    submit(engine, col, "again", first, 10, streaming=False)
    drain(engine)
    assert col.outputs[("first", 0)][0].num_reused_tokens == 0
    assert col.outputs[("second", 0)][0].num_reused_tokens == 40
    assert all(o.num_reused_tokens == 0 for o in col.outputs[("second", 0)][1:])
    # never the block of the last prompt token: 45 tokens -> 5 full blocks, the 6th holds the last token
    assert col.final("again").num_reused_tokens == 40
    assert engine.num_reused_tokens == 80
    assert engine.num_prefill_tokens - prefilled == (49 - 40) + (45 - 40)
    assert col.tokens("second") == hf_greedy(checkpoint, second, 10)
    assert col.final("again").token_ids == col.tokens("first") == hf_greedy(checkpoint, first, 10)

    off, col2 = make_engine(checkpoint, block_size=8, enable_prefix_reuse=False), Collector()
    submit(off, col2, "first", first, 10)
    drain(off)
    submit(off, col2, "again", first, 10)
    drain(off)
    assert col2.outputs[("again", 0)][0].num_reused_tokens == 0 and off.num_reused_tokens == 0


def test_cancel_frees_the_slot_at_the_next_step(checkpoint):
    engine, col = make_engine(checkpoint, max_batch_size=2), Collector()
    submit(engine, col, "a", prompt(9, 10), 200)
    submit(engine, col, "b", prompt(10, 10), 200, streaming=False)
    submit(engine, col, "queued", prompt(11, 10), 200)
    for _ in range(5):
        engine.step()
    assert engine.num_running == 2 and engine.num_waiting == 1
    engine.cancel("a")
    engine.cancel("b")
    engine.cancel("queued")
    engine.step()
    assert_idle(engine)
    assert col.final("a").finish_reason == "cancelled"
    assert col.final("b").finish_reason == "cancelled" and len(col.final("b").token_ids) == 5
    assert col.final("queued").finish_reason == "cancelled" and col.tokens("queued") == []
    assert not engine.has_work
    engine.cancel("a")  # unknown or finished ids are ignored
    engine.step()


def test_queue_bound_and_request_validation(checkpoint):
    engine, col = make_engine(checkpoint, max_queue_size=2, max_seq_len=64), Collector()
    submit(engine, col, "a", [1, 2, 3], 4)
    submit(engine, col, "b", [1, 2, 3], 4)
    with pytest.raises(QueueFull):
        submit(engine, col, "c", [1, 2, 3], 4)
    with pytest.raises(RequestError, match="already in flight"):
        engine.submit(GenerationRequest("a", [1], SamplingParams(max_new_tokens=1)), col)
    for bad in ([], [VOCAB], [-1]):
        with pytest.raises(RequestError):
            engine.submit(GenerationRequest("x", bad, SamplingParams(max_new_tokens=1)), col)
    with pytest.raises(RequestError, match="max_seq_len"):
        engine.submit(GenerationRequest("x", [1] * 64, SamplingParams(max_new_tokens=1)), col)
    with pytest.raises(RequestError, match="num_return_sequences"):
        engine.submit(GenerationRequest("x", [1], SamplingParams(max_new_tokens=1, num_return_sequences=17)), col)
    drain(engine)
    submit(engine, col, "c", [1, 2, 3], 4)  # room again


def test_queue_bound_holds_while_a_step_runs(checkpoint):
    """Requests submitted during a forward pass count the ones that step took from the inbox:
    the bound was read from the last step's end, so a flood overfilled the queue (CI saw fewer
    queue-full refusals than the decoder's capacity allows)."""
    engine, col = make_engine(checkpoint, max_batch_size=1, max_queue_size=2), Collector()
    submit(engine, col, "a", [1, 2, 3], 4)
    submit(engine, col, "b", [1, 2, 3], 4)
    during: list[str] = []
    run = engine.runner.run

    def run_and_submit(seqs, num_new):
        if not during:                     # the first pass: a runs, b waits
            for rid in ("c", "d"):
                try:
                    submit(engine, col, rid, [1, 2, 3], 4)
                    during.append(rid)
                except QueueFull:
                    during.append(f"{rid} refused")
        return run(seqs, num_new)

    engine.runner.run = run_and_submit
    engine.step()
    assert during == ["c", "d refused"]        # b and c fill the two places
    drain(engine)
    assert {rid for rid, _ in col.outputs} == {"a", "b", "c"}


def test_output_length_is_clamped_to_max_seq_len(checkpoint):
    engine, col = make_engine(checkpoint, max_seq_len=32), Collector()
    ids = prompt(12, 25)
    submit(engine, col, "r", ids, 100)
    drain(engine)
    assert col.tokens("r") == hf_greedy(checkpoint, ids, 7)
    assert col.final("r").finish_reason == "length"


def test_end_id_and_stop_words(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    ids = prompt(13, 9)
    expected = hf_greedy(checkpoint, ids, 20)
    k = next(i for i in range(3, 20) if expected[i] not in expected[:i])  # first occurrence of that token
    submit(engine, col, "eos", ids, 20, end_id=expected[k])
    submit(engine, col, "stop", ids, 20, stop_words=[[expected[k - 1], expected[k]], [VOCAB - 1, 5]],
           streaming=False)
    drain(engine)
    assert col.tokens("eos") == expected[:k]  # end_id itself is not returned
    assert col.final("eos").finish_reason == "stop" and col.final("eos").token_ids == []
    assert col.final("stop").token_ids == expected[:k + 1] and col.final("stop").finish_reason == "stop"


class ScriptedSampling:
    """Stands in for a grammar matcher that terminates after `terminate_after` accepted tokens."""

    def __init__(self, terminate_after: int) -> None:
        self.num_accepted, self.terminate_after = 0, terminate_after

    def accept(self, token_id: int) -> None:
        self.num_accepted += 1

    @property
    def is_grammar_terminated(self) -> bool:
        return self.num_accepted >= self.terminate_after


class ScriptedSampler:
    def __init__(self, vocab_size, hf_tokenizer) -> None:
        pass

    def new_sequence(self, params, sequence_index, prompt_ids):
        return ScriptedSampling(params.seed)

    def sample(self, logits, seqs, **_):
        from llama_triton.engine.draw import SampleResult
        tokens = logits.argmax(-1).tolist()
        for token, s in zip(tokens, seqs):
            s.accept(token)
        return [SampleResult(token) for token in tokens]


def test_grammar_termination_finishes_with_stop(checkpoint):
    engine = Engine(checkpoint[0], EngineConfig(max_num_tokens=1024, block_size=4, max_seq_len=256),
                    sampler_factory=ScriptedSampler)
    col, ids = Collector(), prompt(16, 7)
    submit(engine, col, "g", ids, 20, seed=4)
    drain(engine)
    # the 4th token ended the grammar: it is the stop token and is not returned
    assert col.tokens("g") == hf_greedy(checkpoint, ids, 3)
    assert col.final("g").finish_reason == "stop" and col.final("g").token_ids == []


def test_bad_parameter_fails_only_its_request(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    ids = prompt(14, 8)
    submit(engine, col, "ok1", ids, 6)
    # Parameters are validated (and grammars compiled) on the submitting thread, so the bad
    # request is refused right there; it never reaches the batch.
    with pytest.raises(RequestError, match="temperature"):
        submit(engine, col, "bad", ids, 6, temperature=-1.0, num_return_sequences=2)
    submit(engine, col, "ok2", ids, 6, streaming=False)
    drain(engine)
    expected = hf_greedy(checkpoint, ids, 6)
    assert col.tokens("ok1") == col.final("ok2").token_ids == expected
    assert_idle(engine)


def test_step_failure_fails_the_batch_and_the_engine_goes_on(checkpoint):
    from llama_triton.engine.sampler import Sampler

    class FlakySampler(Sampler):
        fail_next = True

        def sample(self, logits, seqs, **_):
            if FlakySampler.fail_next:
                FlakySampler.fail_next = False
                raise RuntimeError("boom")
            return super().sample(logits, seqs)

    engine = Engine(checkpoint[0], EngineConfig(max_num_tokens=1024, block_size=4, max_seq_len=256),
                    sampler_factory=lambda vocab, tok: FlakySampler(vocab, tok))
    col = Collector()
    ids = prompt(15, 6)
    submit(engine, col, "first", ids, 5)
    engine.step()
    assert col.final("first").finish_reason == "error" and "boom" in col.final("first").error
    assert_idle(engine)
    submit(engine, col, "second", ids, 5)
    drain(engine)
    assert col.tokens("second") == hf_greedy(checkpoint, ids, 5)


def test_preemption_under_a_tiny_kv_budget(checkpoint):
    # 12 blocks of 4 tokens; each request grows to 8 + 20 = 28 tokens (7 blocks)
    engine, col = make_engine(checkpoint, max_num_tokens=48, max_seq_len=40), Collector()
    cases = {f"p{i}": prompt(300 + i, 8) for i in range(4)}
    for rid, ids in cases.items():
        submit(engine, col, rid, ids, 20, streaming=rid != "p3")
    submit(engine, col, "forks", prompt(310, 6), 16, num_return_sequences=2)
    drain(engine)
    assert engine.num_preemptions > 0
    for rid, ids in cases.items():
        assert col.tokens(rid) == hf_greedy(checkpoint, ids, 20), rid
    fork_ref = hf_greedy(checkpoint, prompt(310, 6), 16)
    assert col.tokens("forks", 0) == col.tokens("forks", 1) == fork_ref
    assert_idle(engine)


def test_background_thread_sleeps_when_idle(checkpoint):
    engine, col = make_engine(checkpoint), Collector()
    engine.start()
    try:
        threads = [threading.Thread(target=submit, args=(engine, col, f"t{i}", prompt(400 + i, 7), 9))
                   for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # All six finished, and the engine has nothing left to do. (col.done alone can fire early:
        # a request may finish before another thread has counted its own into col.expected.)
        def idle_after_all():
            finished = all(col.outputs[(f"t{i}", 0)] and col.outputs[(f"t{i}", 0)][-1].finished for i in range(6))
            return finished and not engine.has_work
        deadline = time.monotonic() + 60
        while not idle_after_all():
            assert time.monotonic() < deadline, "the six requests did not finish within 60 s"
            threading.Event().wait(0.01)
        steps = engine.num_steps
        threading.Event().wait(0.3)
        assert engine.num_steps == steps  # no busy stepping while idle
        for i in range(6):
            assert col.tokens(f"t{i}") == hf_greedy(checkpoint, prompt(400 + i, 7), 9)
        late = Collector()
        submit(engine, late, "late", prompt(500, 5), 500)
    finally:
        engine.shutdown()
    assert late.final("late").finish_reason in ("error", "length")
    with pytest.raises(RuntimeError):
        submit(engine, late, "after", [1], 1)


def test_engine_config_is_validated():
    with pytest.raises(ValueError):
        EngineConfig(max_batch_size=0)
    with pytest.raises(ValueError):
        EngineConfig(dtype="int8")
    with pytest.raises(ValueError):
        EngineConfig(max_num_tokens=8, block_size=16)
    assert EngineConfig(max_num_tokens=100, block_size=16).num_blocks == 6
