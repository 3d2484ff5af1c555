"""Issue 24 findings 1, 2, 3 and 5: guide compiles that cannot hurt other requests.

StructuredOutputs and CompilePool are real; where a compile must be held open at a chosen moment,
the pool's workers are stand-ins whose jobs wait on an event (`GatedPool`); the kill-on-deadline
test runs real worker processes on a schema that takes xgrammar far longer than its deadline.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from frontend import errors
from frontend.openai.compile_pool import CompilePool
from frontend.openai.structured import GuideCache, GuideSpec, StructuredOutputs

WAIT_S = 120     # bounds on event waits only


class GatedWorker:
    def __init__(self, pool: "GatedPool", n: int):
        self.pool, self.pid = pool, -n

    async def run(self, job: dict, progress: dict) -> dict:
        self.pool.started.append(job["guide"])
        self.pool.job_started.set()
        await self.pool.gates.setdefault(job["guide"], asyncio.Event()).wait()
        return {"ok": ["regex", job["guide"]]}

    def kill(self) -> None:
        self.pool.killed.append(self.pid)


class GatedPool(CompilePool):
    """A CompilePool whose workers are GatedWorkers: a job ends when its guide's gate opens."""

    def __init__(self, size: int, max_waiting: int):
        super().__init__(lambda: {}, size=size, max_waiting=max_waiting)
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.killed: list[int] = []
        self.job_started = asyncio.Event()
        self._n = 0

    async def _start_one(self) -> None:
        self._n += 1
        if not self._warm.done():
            self._warm.set_result(None)
        worker = GatedWorker(self, self._n)
        self._up.add(worker)
        self._release(worker)

    def _discard(self, worker) -> None:
        worker.kill()

    def open(self, guide: str) -> None:
        self.gates.setdefault(guide, asyncio.Event()).set()


def outputs_with(pool: CompilePool) -> StructuredOutputs:
    s = StructuredOutputs(None, 32000, compile_timeout_s=WAIT_S)
    s.pool = pool
    return s


def spec(guide: str) -> GuideSpec:
    return GuideSpec("regex", guide, "response_format")


def test_a_waiter_hanging_up_does_not_cancel_the_shared_compile():
    """Finding 1: the first of six clients with the same new guide hangs up; the other five get it."""
    async def main():
        pool = GatedPool(size=1, max_waiting=4)
        s = outputs_with(pool)
        waiters = [asyncio.create_task(s.resolve(spec("same"))) for _ in range(6)]
        await asyncio.wait_for(pool.job_started.wait(), WAIT_S)
        waiters[0].cancel()                       # the leader's client hangs up mid-compile
        await asyncio.gather(waiters[0], return_exceptions=True)
        pool.open("same")
        results = await asyncio.wait_for(asyncio.gather(*waiters[1:]), WAIT_S)
        assert results == [("regex", "same")] * 5
        assert pool.started == ["same"]           # one compile, shared
        assert s.cache.get(spec("same").key)[0] == "ok"    # and its bookkeeping ran
        assert not s._inflight
    asyncio.run(main())


def test_compiles_cancelled_while_queued_give_their_worker_back():
    """Finding 2: compiles whose clients left while they waited for a worker leak nothing; a new
    guide afterwards compiles (on main: 429 grammar_compiler_busy until restart)."""
    async def main():
        pool = GatedPool(size=1, max_waiting=3)
        s = outputs_with(pool)
        first = asyncio.create_task(s.resolve(spec("first")))
        await asyncio.wait_for(pool.job_started.wait(), WAIT_S)
        queued = [asyncio.create_task(s.resolve(spec(f"q{i}"))) for i in range(3)]
        while len(pool._waiters) < 3:              # all three wait in the pool's queue: what this is about
            await asyncio.sleep(0)
        for t in queued:
            t.cancel()
        await asyncio.gather(*queued, return_exceptions=True)
        for g in ("first", "q0", "q1", "q2", "fresh"):
            pool.open(g)
        assert await asyncio.wait_for(first, WAIT_S) == ("regex", "first")
        assert await asyncio.wait_for(s.resolve(spec("fresh")), WAIT_S) == ("regex", "fresh")
        while s._inflight:                         # the abandoned compiles finish in their own tasks
            await asyncio.wait_for(asyncio.shield(next(iter(s._inflight.values()))), WAIT_S)
        assert not pool._waiters and len(pool._idle) == 1
        assert sorted(pool.started) == ["first", "fresh", "q0", "q1", "q2"]
    asyncio.run(main())


def test_a_busy_pool_is_a_429_and_is_never_cached():
    async def main():
        pool = GatedPool(size=1, max_waiting=0)
        s = outputs_with(pool)
        first = asyncio.create_task(s.resolve(spec("first")))
        await asyncio.wait_for(pool.job_started.wait(), WAIT_S)
        with pytest.raises(errors.APIError) as e:
            await s.resolve(spec("second"))
        assert e.value.status == 429 and e.value.code == "grammar_compiler_busy"
        pool.open("first")
        pool.open("second")
        await first
        assert await s.resolve(spec("second")) == ("regex", "second")     # tried again, not a cached 429
    asyncio.run(main())


# Compiling this schema takes xgrammar 0.1.32 over a minute (30 strings of distinct fixed lengths).
PATHOLOGICAL = json.dumps({"type": "object", "properties": {f"p{i}": {"type": "string", "minLength": 2000 + i,
                                                                      "maxLength": 2000 + i} for i in range(30)},
                           "required": [f"p{i}" for i in range(30)]})


def test_a_compile_past_its_deadline_is_killed_and_not_cached(default_tokenizer):
    """Finding 3: the compile stops at the deadline (its process is gone), the timeout is not
    cached (the same guide is compiled again), and the pool then serves a fresh guide."""
    async def main():
        s = StructuredOutputs(default_tokenizer.hf, default_tokenizer.vocab_size, compile_timeout_s=1.0, workers=1)
        try:
            pool = s._get_pool()
            await pool.wait_idle()
            for attempt in (1, 2):
                [pid] = pool.worker_pids()
                worker = next(iter(pool._all))
                with pytest.raises(errors.APIError) as e:
                    await s.resolve(GuideSpec("json_schema", PATHOLOGICAL, "response_format"))
                assert e.value.status == 400 and e.value.code == "grammar_too_complex"
                assert e.value.param == "response_format"
                assert await asyncio.wait_for(worker.wait(), WAIT_S) is not None   # killed, not running on
                assert pool.num_killed == attempt                                      # compiled again
                await asyncio.wait_for(pool.wait_idle(), WAIT_S)
                assert pid not in pool.worker_pids()
            assert (await s.resolve(GuideSpec("regex", "ok|fine", "response_format"))) == ("regex", "ok|fine")
        finally:
            await s.aclose()
    asyncio.run(main())


def test_the_guide_cache_is_bounded_in_bytes():
    """Finding 5: entries hold a digest and the guide, and their total size stays under the bound."""
    cache = GuideCache(max_bytes=1_000_000)
    big = "x" * 100_000
    for i in range(50):
        cache.put(GuideSpec("json_schema", big + str(i), "response_format").key, ("ok", "ebnf_grammar", big))
    assert cache.bytes <= 1_000_000 and len(cache) == 9
    assert len(GuideSpec("json_schema", big, "response_format").key) == 64      # a digest, not the schema
