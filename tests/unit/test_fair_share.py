"""The fair-share gate (frontend/tenancy/fair_share.py) on its own: who is admitted when the decoder is full,
who gets 429 and with what Retry-After, and the waiting order of the CPU decoder's scheduler."""
from __future__ import annotations

import asyncio

import pytest

from frontend.tenancy import admission
from frontend.tenancy.admission import LocalAdmission, SharedAdmission
from frontend.tenancy.fair_share import DrainMeter, FairShareGate, OverShare, TokenRates


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _until(cond) -> None:
    """Lets the loop run until `cond()` holds (no timing: each turn runs the ready callbacks)."""
    for _ in range(10_000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def test_token_rate_bucket_refills_at_its_rate():
    clock = Clock()
    rates = TokenRates({"a": 10.0}, clock=clock, burst_s=10.0)      # 100 tokens of burst
    rates.check("a")
    rates.charge("a", 150)                                          # overdrawn by 50
    with pytest.raises(OverShare) as e:
        rates.check("a")
    assert e.value.retry_after == 5.0                               # 50 tokens at 10 per second
    clock.t += 4.9
    with pytest.raises(OverShare):
        rates.check("a")
    clock.t += 0.2
    rates.check("a")                                                # refilled past zero
    clock.t += 1000
    rates.charge("a", 100)                                          # the bucket never holds more than 100
    with pytest.raises(OverShare):
        rates.check("a")
    rates.check("b")                                                # no rate for b
    rates.charge("b", 10**6)
    rates.check("b")


def test_drain_rate_is_completions_over_the_window():
    clock = Clock()
    meter = DrainMeter(window_s=10.0, clock=clock)
    assert meter.rate() is None and meter.seconds_for(3) == 1.0     # nothing measured: 1 s
    for _ in range(5):
        meter.completed()
    assert meter.rate() == 0.5
    assert meter.seconds_for(3) == 6.0                              # 3 places at 0.5 per second
    assert meter.seconds_for(1000) == 60.0                          # capped
    clock.t += 10.5
    assert meter.rate() is None                                     # out of the window


def test_full_decoder_refuses_the_key_at_its_share_and_queues_the_one_below():
    async def go():
        clock = Clock()
        gate = FairShareGate(LocalAdmission(), clock=clock, wait_s=600)
        assert [await gate.acquire("a", 4) for _ in range(4)] == [0, 1, 2, 3]     # ranks: a's open before
        for _ in range(4):                       # four completions in the 10 s window: 0.4 per second
            gate.release("a")
            await gate.acquire("a", 4)
        with pytest.raises(OverShare) as over:   # alone, a's share is everything; full: 429 at once
            await gate.acquire("a", 4)
        assert over.value.retry_after == pytest.approx(2.5)     # one place at 0.4/s
        b = asyncio.ensure_future(gate.acquire("b", 4))
        await _until(lambda: gate.waiting == ["b"])
        c = asyncio.ensure_future(gate.acquire("c", 4))
        await _until(lambda: gate.waiting == ["b", "c"])
        with pytest.raises(OverShare) as over:   # share now 4/3; a has 4; two waiters ahead of it
            await gate.acquire("a", 4)
        assert over.value.retry_after == pytest.approx((2 + 4 - 1 + 1) / 0.4)
        gate.release("a")                        # a place frees: b, first of the equals
        assert await b == 0 and not c.done() and gate.waiting == ["c"]
        gate.release("a")
        assert await c == 0 and gate.open_of("a") == 2
    asyncio.run(go())


def test_a_place_goes_to_the_waiting_key_with_fewest_open():
    async def go():
        gate = FairShareGate(LocalAdmission())
        for key in ("a", "b", "a"):
            await gate.acquire(key, 3)           # a: 2, b: 1, full
        b = asyncio.ensure_future(gate.acquire("b", 3))    # b: 1 < 3/2
        await _until(lambda: gate.waiting == ["b"])
        c = asyncio.ensure_future(gate.acquire("c", 3))    # c: 0 < 3/3, arrived later
        await _until(lambda: len(gate.waiting) == 2)
        assert gate.waiting == ["c", "b"]
        gate.release("a")
        assert await c == 0 and gate.waiting == ["b"]
        gate.release("a")
        assert await b == 1
    asyncio.run(go())


def test_a_waiter_gives_up_after_the_wait_and_a_cancelled_one_leaves_no_place_taken():
    async def go():
        gate = FairShareGate(LocalAdmission(), wait_s=0.01)
        await gate.acquire("a", 1)
        with pytest.raises(OverShare):
            await gate.acquire("b", 1)          # the decoder stays full past the wait
        assert gate.waiting == []
        gate.wait_s = 600
        b = asyncio.ensure_future(gate.acquire("b", 1))
        await _until(lambda: gate.waiting == ["b"])
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        gate.release("a")
        assert gate.admission.open == 0 and gate.waiting == []
    asyncio.run(go())


def test_per_key_cap_refuses_with_room_left():
    async def go():
        gate = FairShareGate(LocalAdmission(), key_caps={"a": 2})
        await gate.acquire("a", 10)
        await gate.acquire("a", 10)
        with pytest.raises(OverShare, match="limit of 2"):
            await gate.acquire("a", 10)
        assert await gate.acquire("b", 10) == 0
    asyncio.run(go())


def test_a_waiter_sees_a_place_freed_by_another_worker(tmp_path):
    path = tmp_path / "admission"
    admission.create_file(path, 2)

    async def go():
        other = SharedAdmission(path, 1)
        assert other.try_acquire(1)[0]                     # worker 1 holds the only place
        gate = FairShareGate(SharedAdmission(path, 0), shared=True)
        b = asyncio.ensure_future(gate.acquire("b", 1))
        await _until(lambda: gate.waiting == ["b"])
        other.release()                                    # freed in worker 1: worker 0 polls the count
        assert await b == 0
    asyncio.run(go())


def test_scheduler_waits_in_priority_then_rank_order():
    from llama_triton.engine.scheduler import Scheduler
    from llama_triton.engine.sequence import Sequence
    from llama_triton.engine.config import EngineConfig

    sched = Scheduler(EngineConfig(), block_manager=None)     # add() touches only the waiting queue
    seqs = {name: Sequence(i, name, 0, [1], 1, order=order)
            for i, (name, order) in enumerate([("a1", (0, 0)), ("a2", (0, 1)), ("a3", (0, 2)), ("b1", (0, 0)),
                                               ("late-urgent", (-5, 9)), ("a4", (0, 3)), ("b2", (0, 1))])}
    for seq in seqs.values():
        sched.add(seq)
    assert [s.request_id for s in sched.waiting] == ["late-urgent", "a1", "b1", "a2", "b2", "a3", "a4"]
