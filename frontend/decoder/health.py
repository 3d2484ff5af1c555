"""What the frontend knows of the decoder's health, and how it finds out (docs/OPERATIONS.md).

Triton keeps calling the `tensorrt_llm` model ready when the decoder behind it is gone: a Python
backend stub SIGKILLed (the CPU decoder) answers every new request with "Stub process
'tensorrt_llm_0_0' is not healthy." and leaves the open streams silent forever; a TensorRT-LLM
executor after a CUDA error fails every request while the model stays ready. So the frontend
probes the decoder itself, with two requests that need no client input:

* the reach probe: `stop=true` for a request id nobody uses. It crosses Triton and the decoder's
  request path (the Python stub, the TensorRT-LLM backend's execute) without touching the
  engine, so it is answered at once even under full load: an empty final response when all is
  well, an error when the stub is dead (after Triton's one-second stub health check), the model
  unloaded or Triton gone;
* the work probe: one token generated from a one-token prompt. It proves the engine generates
  (the GPU case: the reach probe succeeds while the executor fails every request). It queues
  behind real requests, so only an explicit error counts against the decoder (a full queue or a
  slow answer proves it alive).

When they run:

* a new request fails with an error that is neither "busy" nor "Triton unreachable": Triton's
  stream errors carry a message and no code (`ModelStreamInferResponse.error_message`), so the
  decoder's refusal of a bad request and a broken decoder are told apart by probing, not by
  the message: the probes pass -> the request's fault (400, or 500 once tokens were produced);
  a probe fails -> the decoder's (503);
* an open stream has had no event for SILENCE_S (0.3 s): the watchdog sends a reach probe (at most
  every PROBE_EVERY_S; streams wait silently in the decoder's queue under load, which is normal);
* a request lost its stream (Triton unreachable): a reach probe at once;
* while the decoder is down: a probe every RECHECK_S, to notice when it is back.

A failed probe marks the decoder down: every open request is ended at once with
DecoderUnavailable (streams: an error event and `data: [DONE]`; others: a 503), `/health` answers
503 and new requests get a 503 with Retry-After without reaching Triton, until a probe passes.
A work probe that fails while the reach probe passes is also reported to the launcher (a file it
watches, `--decoder-failure-file`), which restarts tritonserver: nothing else would notice.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

log = logging.getLogger("frontend.health")

SILENCE_S = 0.3          # an open stream this quiet makes the watchdog probe
PROBE_EVERY_S = 0.5      # at most one reach probe this often while the decoder is up
RECHECK_S = 1.0          # while it is down, a probe this often
TICK_S = 0.1
REACH_TIMEOUT_S = 2.5    # a dead stub answers in ~1 s; an unanswered probe counts only when repeated
REACH_TIMEOUTS_DOWN = 2  # consecutive unanswered reach probes that mark the decoder down (a hung stub)
WORK_TIMEOUT_S = 5.0


class ProbeFailed(Exception):
    """The decoder answered a probe with an error (or Triton could not be reached)."""


@dataclass
class OpenRequest:
    """One decoder request in flight: when it last heard from the decoder, and how to end it."""
    last: float
    abort: Callable[[str], None]


class DecoderHealth:
    def __init__(self, reach: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[None]],
                 on_broken: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.monotonic):
        """`reach` and `work` send one probe each and raise ProbeFailed on an error answer;
        `on_broken(reason)` is told when the work probe fails while the reach probe passes."""
        self._reach, self._work, self._on_broken, self.clock = reach, work, on_broken, clock
        self.down_reason: Optional[str] = None
        self.down_since: Optional[float] = None
        self._down_kind = ""                     # "reach" | "work": which probe must pass to come back
        self._requests: dict[int, OpenRequest] = {}
        self._next_id = 0
        self._last_probe = -1e9
        self._reach_timeouts = 0
        self._reach_task: Optional[asyncio.Task] = None
        self._work_task: Optional[asyncio.Task] = None
        self._watchdog: Optional[asyncio.Task] = None
        self._suspected = False
        self._wake = asyncio.Event()
        self.probes = {"reach": 0, "work": 0, "failed": 0}

    # ---- state ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.down_reason is None

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else self.clock() - self.down_since

    def mark_down(self, reason: str, kind: str = "reach") -> None:
        if self.down_reason is None:
            self.down_reason, self.down_since = reason, self.clock()
            log.error("decoder down: %s; ending %d open request(s), answering 503 until a probe passes",
                      reason, len(self._requests))
        if kind == "work":
            self._down_kind = "work"
        elif not self._down_kind:
            self._down_kind = kind
        for key in list(self._requests):
            entry = self._requests.pop(key, None)
            if entry is not None:
                entry.abort(reason)

    def mark_up(self) -> None:
        if self.down_reason is not None:
            log.warning("decoder back after %.1f s (was: %s)", self.down_for(), self.down_reason)
        self.down_reason = self.down_since = None
        self._down_kind = ""
        self._reach_timeouts = 0

    # ---- open requests --------------------------------------------------------------------------
    def track(self, abort: Callable[[str], None]) -> int:
        self._next_id += 1
        self._requests[self._next_id] = OpenRequest(self.clock(), abort)
        self.ensure_watchdog()
        return self._next_id

    def heard(self, key: int) -> None:
        entry = self._requests.get(key)
        if entry is not None:
            entry.last = self.clock()

    def untrack(self, key: int) -> None:
        self._requests.pop(key, None)

    @property
    def open_requests(self) -> int:
        return len(self._requests)

    # ---- probes ---------------------------------------------------------------------------------
    @staticmethod
    def _shared(task: Optional[asyncio.Task], run) -> asyncio.Task:
        """The probe in flight, or a new one. It runs in a task of its own with a context of its own
        (not the request's that started it), and its callers wait shielded: a caller that goes away
        (a client hanging up) neither cancels it for the others nor skips its verdict."""
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(run(), context=contextvars.Context())
        return task

    async def reach(self) -> Optional[bool]:
        """One reach probe (shared by concurrent callers): True passed, False failed, None no answer."""
        self._reach_task = self._shared(self._reach_task, self._run_reach)
        return await asyncio.shield(self._reach_task)

    async def _run_reach(self) -> Optional[bool]:
        self.probes["reach"] += 1
        self._last_probe = self.clock()
        try:
            async with asyncio.timeout(REACH_TIMEOUT_S):
                await self._reach()
        except TimeoutError:
            self._reach_timeouts += 1
            if self._reach_timeouts >= REACH_TIMEOUTS_DOWN:
                self.probes["failed"] += 1
                self.mark_down(f"the decoder answered no probe within {REACH_TIMEOUT_S:g} s "
                               f"{self._reach_timeouts} times in a row")
                return False
            return None
        except ProbeFailed as e:
            self.probes["failed"] += 1
            self._reach_timeouts = 0
            self.mark_down(f"the decoder failed a probe: {e}")
            return False
        self._reach_timeouts = 0
        return True

    async def work(self) -> Optional[bool]:
        """One work probe (shared like `reach`: the requests that fail together start one)."""
        self._work_task = self._shared(self._work_task, self._run_work)
        return await asyncio.shield(self._work_task)

    async def _run_work(self) -> Optional[bool]:
        self.probes["work"] += 1
        try:
            async with asyncio.timeout(WORK_TIMEOUT_S):
                await self._work()
        except TimeoutError:
            return None
        except ProbeFailed as e:
            self.probes["failed"] += 1
            reason = f"the decoder cannot generate: {e}"
            self.mark_down(reason, kind="work")
            if self._on_broken is not None:
                self._on_broken(reason)
            return False
        return True

    async def is_broken(self) -> bool:
        """After a request failed with an error of its own: is it the decoder's fault?"""
        if not self.ready:
            return True
        if await self.reach() is False:
            return True
        return await self.work() is False

    def suspect(self) -> None:
        """Something went wrong (a stream lost): have the watchdog probe now."""
        self._suspected = True
        self._wake.set()
        self.ensure_watchdog()

    # ---- watchdog -------------------------------------------------------------------------------
    def ensure_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            try:
                # A context of its own: not the request's that happened to start it (its log lines).
                self._watchdog = asyncio.get_running_loop().create_task(self._watch(), context=contextvars.Context())
            except RuntimeError:
                pass        # no loop (unit tests building the app)

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except (asyncio.CancelledError, Exception):
                pass

    async def _watch(self) -> None:
        while True:
            try:
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("decoder health check failed")

    async def check(self) -> None:
        """One watchdog step."""
        now = self.clock()
        if not self.ready:
            if now - self._last_probe < RECHECK_S:
                return
            kind = self._down_kind
            self._last_probe = now
            if await self.reach() and (kind != "work" or await self.work()):
                self.mark_up()
            return
        if now - self._last_probe < PROBE_EVERY_S and not self._suspected:
            return
        suspected, self._suspected = self._suspected, False
        if suspected or any(now - r.last >= SILENCE_S for r in self._requests.values()):
            await self.reach()


def probe_request_id() -> str:
    return f"health-probe-{uuid.uuid4().hex}"
