"""The LLM-API adapter (llama_triton/backend/llmapi_engine.py) over a scripted LLM: the decoder's
per-token contract from 1.2.1-shaped results, the queue gate, errors, cancellation.

The results are the stand-in's RequestOutput (1.2.1's update rules, tested in
test_llmapi_standin.py); the test feeds them executor responses by hand.
"""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from llama_triton.backend import llmapi_standin as s
from llama_triton.backend.llmapi_engine import LlmApiEngine, load_api
from llama_triton.backend.llmapi_standin import Logprob, _Response
from llama_triton.contract import QueueFull, RequestError
from llama_triton.engine.types import GenerationRequest, SamplingParams


class Tok:
    def encode(self, text, add_special_tokens=False):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


class ScriptedLLM:
    """generate_async hands out stand-in results; the test pushes their responses."""

    def __init__(self):
        self.tokenizer = Tok()
        self.results: dict[str, s.RequestOutput] = {}
        self.calls = []
        self.salts = []
        self.aborted = []
        self.fail_with = None
        self.counters = {"num_running": 3.0}
        self.closed = False

    def generate_async(self, ids, sampling_params, streaming, cache_salt=None):
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append((ids, sampling_params, streaming))
        self.salts.append(cache_salt)
        rid = len(self.calls)
        result = s.RequestOutput(rid, ids, sampling_params, asyncio.get_running_loop(), self.aborted.append)
        self.results[str(rid)] = result
        return result

    def shutdown(self):
        self.closed = True


class Collector:
    def __init__(self):
        self.outs = []
        self.cond = threading.Condition()

    def __call__(self, out):
        with self.cond:
            self.outs.append(out)
            self.cond.notify_all()

    def wait(self, pred, timeout=10):
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.outs), timeout), self.outs
        return self.outs


@pytest.fixture
def engine():
    llm = ScriptedLLM()
    eng = LlmApiEngine(llm, load_api("cpu"), max_batch_size=2, max_queue_size=1)
    eng.start()
    yield eng, llm
    eng.shutdown()
    assert llm.closed


def push(engine, n, *responses):
    """Feed the n-th generate_async result (1-based) its executor responses."""
    deadline = time.monotonic() + 10
    while str(n) not in engine.llm.results:
        assert time.monotonic() < deadline, "generate_async was not called"
        time.sleep(0.005)
    result = engine.llm.results[str(n)]
    for r in responses:
        engine._loop.call_soon_threadsafe(result._push, r)


def request(rid="r", streaming=True, **params):
    params.setdefault("max_new_tokens", 8)
    params.setdefault("end_id", 2)
    return GenerationRequest(rid, [1, 5, 6], SamplingParams(**params), streaming)


def lp(token, value, alts=()):
    entry = {t: Logprob(v, rank=i + 1) for i, (t, v) in enumerate(alts)}
    entry.setdefault(token, Logprob(value, rank=len(entry) + 1))
    return entry


def test_streamed_tokens_log_probs_and_the_end_token(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request(return_log_probs=True, top_logprobs=2), got)
    push(eng, 1, _Response(0, [10], [lp(10, -1.0, [(11, -0.5), (10, -1.0)])], cached_tokens=99),
         _Response(0, [12], [lp(12, -3.0, [(4, -0.1), (5, -0.2)])]),
         _Response(0, [], [], finish="stop"))           # the end token (2) comes with the last response
    outs = got.wait(lambda o: o and o[-1].finished)
    assert [o.token_ids for o in outs] == [[10], [12], []]
    assert [o.log_probs for o in outs[:2]] == [[-1.0], [-3.0]] and not outs[2].log_probs
    assert outs[0].top_logprobs == [[(11, -0.5), (10, -1.0)]] and outs[1].top_logprobs == [[(4, -0.1), (5, -0.2)]]
    assert outs[0].num_reused_tokens == 3              # capped at the 3-token prompt
    assert outs[-1].finish_reason == "stop"
    sp = llm.calls[0][1]
    assert (sp.logprobs, sp.include_stop_str_in_output, sp.detokenize) == (2, True, False)
    assert llm.calls[0][2] is True


def test_two_sequences_each_get_their_own_tokens_once(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request(num_return_sequences=2, temperature=1.0), got)
    push(eng, 1, _Response(0, [10], None), _Response(1, [20], None), _Response(0, [11], None, finish="length"),
         _Response(1, [21], None), _Response(1, [22], None, finish="length"))
    outs = got.wait(lambda o: sum(x.finished for x in o) == 2)
    by_seq = {i: [t for o in outs if o.sequence_index == i for t in o.token_ids] for i in (0, 1)}
    assert by_seq == {0: [10, 11], 1: [20, 21, 22]}     # no stale diff of the other sequence repeated
    assert [o.sequence_index for o in outs if o.finished] == [1, 0]


def test_non_streamed_gets_one_output_per_sequence(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request(streaming=False, num_return_sequences=2, temperature=1.0), got)
    push(eng, 1, _Response(0, [10, 11], None, finish="length"), _Response(1, [20, 2], None, finish="stop"))
    outs = got.wait(lambda o: len(o) == 2)
    assert sorted((o.sequence_index, o.token_ids, o.finished) for o in outs) == [(0, [10, 11], True),
                                                                                 (1, [20], True)]
    assert llm.calls[0][2] is False


def test_sampling_params_refusals_have_the_llm_apis_text(engine):
    eng, _ = engine
    with pytest.raises(RequestError, match=r"^require top_k >= 0, got top_k=-1$"):
        eng.submit(request(top_k=-1), Collector())


def test_the_gate_is_max_batch_size_plus_max_queue_size(engine):
    eng, llm = engine
    got = [Collector() for _ in range(3)]
    for i, c in enumerate(got):
        eng.submit(request(f"r{i}"), c)
    with pytest.raises(QueueFull, match=r"3 requests in flight \(max_batch_size 2 \+ max_queue_size 1\)"):
        eng.submit(request("r3"), Collector())
    push(eng, 1, _Response(0, [10], None, finish="length"))
    got[0].wait(lambda o: o and o[-1].finished)
    deadline = time.monotonic() + 5
    while True:                                         # the slot is freed on the loop thread
        try:
            eng.submit(request("r4"), Collector())
            break
        except QueueFull:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_errors_are_per_request(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request("a", num_return_sequences=2, temperature=1.0), got)
    push(eng, 1, _Response(0, [10], None), _Response(0, [], None, error="The sum of prompt length is too long"))
    outs = got.wait(lambda o: sum(x.finished for x in o) == 2)
    errors = [o for o in outs if o.error]
    assert len(errors) == 2 and all(o.error == "The sum of prompt length is too long" for o in errors)
    llm.fail_with = RuntimeError("MPI worker exited unexpectedly")
    dead = Collector()
    eng.submit(request("b"), dead)
    out = dead.wait(lambda o: o and o[-1].finished)[-1]
    assert out.error == "internal error: MPI worker exited unexpectedly"     # the decoder is broken: a 5xx


def test_cancel_aborts_and_ends_with_cancelled(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request("c"), got)
    push(eng, 1, _Response(0, [10], None))
    got.wait(lambda o: len(o) == 1)
    eng.cancel("c")
    deadline = time.monotonic() + 5
    while not llm.aborted:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    push(eng, 1, _Response(0, [], None, finish="cancelled"))
    out = got.wait(lambda o: o[-1].finished)[-1]
    assert out.finish_reason == "cancelled" and llm.aborted == [1]


def test_zero_new_tokens_never_reaches_the_llm(engine):
    eng, llm = engine
    got = Collector()
    eng.submit(request(max_new_tokens=0), got)
    out = got.wait(lambda o: o and o[-1].finished)[-1]
    assert out.token_ids == [] and llm.calls == []


def test_listeners_run_and_counters_come_from_the_llm(engine):
    eng, _ = engine
    ticks = threading.Event()
    eng.add_step_listener(ticks.set)
    assert ticks.wait(2)
    assert eng.num_running == 3.0
    assert not hasattr(eng, "num_steps")                # an LLM without that counter: no metric


def test_tensorrt_llm_is_imported_only_when_asked_for():
    import sys

    import llama_triton.backend.llmapi_engine  # noqa: F401
    assert "tensorrt_llm" not in sys.modules
    with pytest.raises(ImportError):
        load_api("tensorrt_llm")          # CI never installs it; on a GPU host the NGC image has it
    with pytest.raises(ValueError, match="llm_api 'gpu'"):
        load_api("gpu")


def test_the_cache_salt_reaches_generate_async_as_the_llm_apis_string(engine):
    """The LLM API takes `cache_salt` as a string (LLM.generate_async); our uint64 goes as its
    decimal text, and a request without one stays unsalted (None), as upstream's default."""
    eng, llm = engine
    for n, (rid, salt) in enumerate((("a", 2 ** 64 - 1), ("b", None)), start=1):
        got = Collector()
        eng.submit(GenerationRequest(rid, [1, 5, 6], SamplingParams(max_new_tokens=1, end_id=2), True,
                                     cache_salt=salt), got)
        push(eng, n, _Response(0, [7], None, finish="length"))
        got.wait(lambda o: o and o[-1].finished)
    assert llm.salts == ["18446744073709551615", None]
