"""Fair share of the decoder between API keys: who gets a place when it is full, and who gets 429.

The decoder holds `capacity` requests (batch slots plus queue); frontend/tenancy/admission.py counts them
across this replica's workers. This gate stands in front of that count:

* With room and nobody waiting, any key is admitted (the gate is work-conserving).
* Full, a key at or over its share (capacity / keys with work, the asking key included) gets 429
  at once, with `Retry-After` from the measured drain rate (completions per second over the last
  DRAIN_WINDOW_S): the time until the places ahead of it have drained.
* Full, a key under its share waits (at most `wait_s`, and at most `max_waiting` waiters in all).
  When a place frees, the waiting key with the fewest open requests goes first (arrival order
  among equals); a waiter still waiting when `wait_s` runs out gets 429.
* An optional cap per key (`--key-max-concurrent ID=N`) refuses its N+1th open request (429).
* An optional rate per key (`--key-max-tokens-per-s ID=N`, `TokenRates`): each finished request's
  prompt and completion tokens are charged to its key's bucket, which refills at N per second up
  to BURST_S seconds' worth; a key whose bucket is empty gets 429 until it has refilled.

Each admitted request gets a rank: how many requests its key already had open. The CPU decoder
orders its waiting queue by (priority, rank, arrival), so a key's first request overtakes another
key's tenth that is still queued in the decoder (llama_triton/engine/scheduler.py). Decoders
without the `tenant_rank` input (TensorRT-LLM's) keep their queue first come, first served: there
the fair order holds only in this gate's own queue (docs/OPERATIONS.md).

Across frontend workers (`--frontend-workers N`) the counts, in all and per key, are the admission
file's (frontend/tenancy/admission.py), so a key's share is judged on its requests in every worker. The
waiters are each worker's own: a key waiting in another worker does not count among the keys with
work here, and a freed place goes to whichever worker's best waiter takes it first (each waiter
notices places freed elsewhere by polling the shared count every POLL_S).
"""
from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from frontend.tenancy.admission import Admission, LocalAdmission

DRAIN_WINDOW_S = 10.0
POLL_S = 0.05
RETRY_AFTER_MAX_S = 60
DEFAULT_MAX_WAITING = 256
BURST_S = 10.0          # a token-rate bucket holds this many seconds of its rate


class OverShare(Exception):
    """Refused: the key is over its share (or its cap) while the decoder is full, or waited too long."""

    def __init__(self, retry_after: float, reason: str):
        super().__init__(reason)
        self.retry_after = retry_after


class DrainMeter:
    """Completions per second over the last `window_s`."""

    def __init__(self, window_s: float = DRAIN_WINDOW_S, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._done: deque[float] = deque()

    def completed(self) -> None:
        self._done.append(self.clock())
        self._trim()

    def _trim(self) -> None:
        cutoff = self.clock() - self.window_s
        while self._done and self._done[0] < cutoff:
            self._done.popleft()

    def rate(self) -> Optional[float]:
        """Completions per second, or None when nothing completed within the window."""
        self._trim()
        return len(self._done) / self.window_s if self._done else None

    def seconds_for(self, places: int) -> float:
        """How long `places` completions take at the measured rate (1 s when nothing was measured)."""
        rate = self.rate()
        if rate is None:
            return 1.0
        return min(float(RETRY_AFTER_MAX_S), max(1.0, places / rate))


class TokenRates:
    """Tokens per second per key id: a bucket each, charged after the fact (a request's size is
    known when it ends), so a key may overdraw by one request and then waits it off. Per frontend
    worker: with W workers a key can reach W times its rate on a replica (docs/OPERATIONS.md)."""

    def __init__(self, limits: dict[str, float], clock: Callable[[], float] = time.monotonic,
                 burst_s: float = BURST_S):
        self.limits = dict(limits)
        self.clock = clock
        self.burst_s = burst_s
        self._balance: dict[str, tuple[float, float]] = {}     # key -> (tokens, when)

    def _refilled(self, key: str, rate: float) -> float:
        tokens, when = self._balance.get(key, (rate * self.burst_s, self.clock()))
        now = self.clock()
        tokens = min(rate * self.burst_s, tokens + (now - when) * rate)
        self._balance[key] = (tokens, now)
        return tokens

    def check(self, key: str) -> None:
        """Raises OverShare while `key`'s bucket is empty."""
        rate = self.limits.get(key)
        if rate is None:
            return
        tokens = self._refilled(key, rate)
        if tokens <= 0:
            retry = min(float(RETRY_AFTER_MAX_S), max(1.0, math.ceil(-tokens / rate)))
            raise OverShare(retry, f"this API key's limit of {rate:g} tokens per second is reached")

    def charge(self, key: str, tokens: int) -> None:
        rate = self.limits.get(key)
        if rate is None or tokens <= 0:
            return
        left = self._refilled(key, rate)
        self._balance[key] = (left - tokens, self._balance[key][1])


@dataclass(eq=False)
class _Waiter:
    key: str
    seq: int
    capacity: Optional[int]
    admitted: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class FairShareGate:
    """The owner of this worker's per-key open counts, its waiters and its drain meter."""

    def __init__(self, admission: Optional[Admission] = None, *, wait_s: float = 600.0,
                 max_waiting: int = DEFAULT_MAX_WAITING, key_caps: Optional[dict[str, int]] = None,
                 key_rates: Optional[dict[str, float]] = None,
                 shared: bool = False, clock: Callable[[], float] = time.monotonic, metrics=None):
        self.admission: Admission = admission or LocalAdmission()
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.key_caps = dict(key_caps or {})
        self.rates = TokenRates(key_rates or {}, clock=clock)
        self.shared = shared            # other workers free places too: waiters poll the shared count
        self.drain = DrainMeter(clock=clock)
        self.metrics = metrics          # FrontendMetrics or None: waiters (gauge), refusals by key id
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        # The decoder refused a request the gate admitted (its own count lags ours by a step:
        # a finished request's slot goes to its queue's head at its next step). Until the next
        # completion the gate counts as full, so the refused key waits for it (or gets 429).
        self._decoder_full = False

    # ---- what tests and metrics read ------------------------------------------------------------
    def open_of(self, key: str) -> int:
        return self.admission.key_open(key)

    @property
    def waiting(self) -> list[str]:
        """The keys of the waiters, in the order they would be admitted."""
        return [w.key for w in sorted(self._waiting, key=self._order)]

    # ---- the gate ------------------------------------------------------------------------------
    def share(self, key: str, capacity: int) -> float:
        of = self.admission.key_of
        keys = self.admission.keys_with_work() | {of(w.key) for w in self._waiting} | {of(key)}
        return capacity / len(keys)

    def _order(self, w: _Waiter) -> tuple[int, int]:
        return self.open_of(w.key), w.seq

    def _refuse(self, key: str, capacity: int, reason: str) -> OverShare:
        # Places that must drain before this key's next request fits: those waiting ahead of it,
        # plus its own excess over its share.
        excess = self.open_of(key) - math.floor(self.share(key, capacity)) + 1
        return OverShare(self.drain.seconds_for(len(self._waiting) + max(1, excess)),
                         f"{reason}: {self.admission.open} requests open (decoder capacity {capacity})")

    async def acquire(self, key: str, capacity: Optional[int]) -> int:
        """Admits one request of `key`; returns its rank (the key's requests already open here).
        Raises OverShare (a 429) when the key must not have a place now."""
        try:
            return await self._acquire(key, capacity)
        except OverShare:
            if self.metrics is not None:
                self.metrics.fair_share_refused.labels(key).inc()
            raise

    async def _acquire(self, key: str, capacity: Optional[int]) -> int:
        self.rates.check(key)
        cap = self.key_caps.get(key)
        if cap is not None and self.open_of(key) >= cap:
            raise OverShare(self.drain.seconds_for(1), f"this API key's limit of {cap} concurrent requests is reached")
        if not self._waiting and not self._decoder_full:
            rank = self.open_of(key)
            taken, _ = self.admission.try_acquire(capacity, key)
            if taken:
                return rank
        if capacity is None:        # no limit known: every try is taken
            rank = self.open_of(key)
            self.admission.try_acquire(None, key)
            return rank
        if self.open_of(key) >= self.share(key, capacity):
            raise self._refuse(key, capacity, "the server is at capacity and this API key has its fair share of it")
        if len(self._waiting) >= self.max_waiting:
            raise self._refuse(key, capacity, "the server is at capacity and its fair-share queue is full")
        waiter = _Waiter(key, next(self._seq), capacity)
        self._waiting.append(waiter)
        if self.metrics is not None:
            self.metrics.fair_share_waiting.inc()
        self._promote()     # a place may have freed in another worker meanwhile
        deadline = time.monotonic() + self.wait_s
        try:
            while not waiter.admitted.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    await asyncio.wait_for(asyncio.shield(waiter.admitted), min(left, POLL_S) if self.shared else left)
                except asyncio.TimeoutError:
                    self._promote()
        except BaseException:
            # Cancelled (client gone): a place handed over in the same moment goes back.
            if waiter.admitted.done() and not waiter.admitted.cancelled():
                self.release(key)
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            if self.metrics is not None:
                self.metrics.fair_share_waiting.dec()
        if waiter.admitted.done():
            return waiter.admitted.result()
        raise self._refuse(key, capacity, f"the server stayed at capacity for {self.wait_s:g} s")

    def release(self, key: str) -> None:
        """One request of `key` is over: its place goes to the waiter of the key with fewest open."""
        self.admission.release(key)
        self.drain.completed()
        self._decoder_full = False
        self._promote()

    def charge(self, key: str, tokens: int) -> None:
        """A finished request's prompt and completion tokens, against its key's token rate."""
        self.rates.charge(key, tokens)

    def refused_by_decoder(self, key: str) -> bool:
        """The decoder answered "queue full" to a request of `key` that the gate had admitted: its
        place is given back, and until the next completion the gate counts as full. False when
        nothing of this gate's is open (the decoder is full of other clients' work): then the
        refusal stands."""
        self.admission.release(key)
        if self.admission.open == 0:
            return False
        self._decoder_full = True
        return True

    def _promote(self) -> None:
        if self._decoder_full:
            return
        while self._waiting:
            best = min(self._waiting, key=self._order)
            rank = self.open_of(best.key)
            taken, _ = self.admission.try_acquire(best.capacity, best.key)
            if not taken:
                return
            self._waiting.remove(best)
            best.admitted.set_result(rank)
