"""A small pool of guide compile processes that can be stopped: a compile past its deadline is killed.

Each worker is a `python -m llama_triton.text.compile_worker` child (see there for the protocol)
holding the model's xgrammar TokenizerInfo. `run(job, deadline)` takes an idle worker, sends the
job and waits for its answer until `deadline` (loop time); past it the worker is killed (SIGKILL:
its CPU stops at once) and a fresh one starts in the background. A job that finds every worker
busy waits for one, but only while fewer than `max_waiting` jobs wait and only until its
deadline; otherwise it gets `PoolBusy` at once. So a pathological guide costs at most one worker
for one deadline, and the pool never holds more than `size` cores.

Starting a worker (importing xgrammar and torch, building the TokenizerInfo) takes seconds. The
first start happens on the first guided request; a killed worker's replacement starts at once, in
the background, while the other workers serve. A job's deadline (`timeout_s`) covers queueing
behind other compiles and its own compile, not the pool's start-ups: while no worker is up at all
(the first start, or every worker just killed), a job waits for one to come up, and its deadline
starts then.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from typing import Callable, Optional

log = logging.getLogger("frontend.compile_pool")

WORKER_MODULE = "llama_triton.text.compile_worker"
START_TIMEOUT_S = 300.0        # importing torch + xgrammar on a loaded 2-core box


class PoolBusy(Exception):
    """No compile worker became free in time."""


class CompileTimeout(Exception):
    """The job ran past its deadline; its worker was killed. `param` is the part it was compiling."""

    def __init__(self, param: str):
        super().__init__(param)
        self.param = param


class WorkerLost(Exception):
    """The worker died (not killed by us) or broke the protocol."""


class _Worker:
    """One worker process. Plain `subprocess` pipes with a reader thread, not the event loop's
    subprocess transport: uvloop's spawn runs the parent's fork handlers, and with gRPC's threads
    busy in the frontend the child's pipes came back closed (seen in the served stack)."""

    def __init__(self, proc: subprocess.Popen, loop: asyncio.AbstractEventLoop):
        self.proc = proc
        self._loop = loop
        self._lines: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._read, name=f"compile-worker-{proc.pid}", daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        try:
            for raw in self.proc.stdout:
                self._loop.call_soon_threadsafe(self._lines.put_nowait, raw)
            self._loop.call_soon_threadsafe(self._lines.put_nowait, b"")
        except (OSError, ValueError):
            try:
                self._loop.call_soon_threadsafe(self._lines.put_nowait, b"")
            except RuntimeError:
                self.kill()
        except RuntimeError:          # the loop is closed: nobody waits any more
            self.kill()

    async def _line(self) -> dict:
        raw = await self._lines.get()
        if not raw:
            raise WorkerLost("the compile worker exited")
        try:
            return json.loads(raw)
        except ValueError:
            raise WorkerLost(f"the compile worker wrote {raw[:80]!r}") from None

    def _write_blocking(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    async def _write(self, data: bytes) -> None:
        # in a thread: the setup payload is megabytes, more than a pipe holds while the child imports
        try:
            await self._loop.run_in_executor(None, self._write_blocking, data)
        except (BrokenPipeError, OSError, ValueError) as e:
            raise WorkerLost(f"the compile worker's stdin is closed ({e})") from None

    async def start(self, setup: bytes) -> None:
        await self._write(setup)
        msg = await asyncio.wait_for(self._line(), START_TIMEOUT_S)
        if not msg.get("ready"):
            raise WorkerLost(f"the compile worker did not start: {msg}")

    async def run(self, job: dict, progress: dict) -> dict:
        await self._write((json.dumps({"job": job}) + "\n").encode())
        while True:
            msg = await self._line()
            if "progress" in msg:
                progress["param"] = msg["progress"]
                continue
            return msg

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    async def wait(self) -> int:
        return await self._loop.run_in_executor(None, self.proc.wait)


class CompilePool:
    """`size` compile worker processes; see the module docstring. Create and use on one event loop."""

    def __init__(self, setup: Callable[[], dict], *, size: int = 2, max_waiting: Optional[int] = None):
        self._setup_fn = setup
        self._setup: Optional[bytes] = None
        self.size = max(1, int(size))
        self.max_waiting = self.size * 2 if max_waiting is None else int(max_waiting)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._up: set[_Worker] = set()         # started and not killed
        self._waiters: list[asyncio.Future] = []
        self._warm: Optional[asyncio.Future] = None    # set once the first worker is ready
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._has_idle: Optional[asyncio.Event] = None
        self.num_killed = 0

    # -- workers ------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._start_one())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start_one(self) -> None:
        worker = None
        try:
            if self._setup is None:
                payload = await asyncio.get_running_loop().run_in_executor(None, self._setup_fn)
                self._setup = (json.dumps(payload) + "\n").encode()
            proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            worker = _Worker(proc, asyncio.get_running_loop())
            self._all.add(worker)
            await worker.start(self._setup)
        except BaseException as e:
            if worker is not None:
                self._discard(worker)
            if not isinstance(e, asyncio.CancelledError):
                log.error("a guide compile worker failed to start: %s", e)
                if self._warm is not None and not self._warm.done():
                    self._warm.set_exception(RuntimeError(f"the guide compile workers cannot start: {e}"))
            raise
        self._up.add(worker)
        if self._warm is not None and not self._warm.done():
            self._warm.set_result(None)
        self._release(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._all.discard(worker)
        self._up.discard(worker)
        task = asyncio.get_running_loop().create_task(worker.wait())   # reap it
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replace(self, worker: _Worker) -> None:
        self._discard(worker)
        if not self._closed:
            self._spawn()

    def _release(self, worker: _Worker) -> None:
        if self._closed:
            self._discard(worker)
            return
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(worker)
                return
        self._idle.append(worker)
        if self._has_idle is not None:
            self._has_idle.set()

    async def wait_idle(self) -> None:
        """Until some worker is idle (for tests and warm-up; requests never wait here)."""
        await self._ensure_started()
        while not self._idle:
            if self._has_idle is None:
                self._has_idle = asyncio.Event()
            self._has_idle.clear()
            await self._has_idle.wait()

    async def _ensure_started(self) -> None:
        if self._warm is None:
            self._warm = asyncio.get_running_loop().create_future()
            for _ in range(self.size):
                self._spawn()
        await asyncio.shield(self._warm)

    async def _acquire(self, timeout_s: float) -> tuple[_Worker, bool]:
        """An idle worker, and whether the job waited for one to start up; raises PoolBusy."""
        await self._ensure_started()
        loop = asyncio.get_running_loop()
        if self._idle:
            return self._idle.pop(), False
        if len(self._waiters) >= self.max_waiting:
            raise PoolBusy()
        starting_up = not self._up          # no worker is up: wait for one, outside the deadline
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            worker = await asyncio.wait_for(asyncio.shield(waiter), START_TIMEOUT_S if starting_up else timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())     # handed over just as we gave up: pass it on
            waiter.cancel()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise PoolBusy() from None
        return worker, starting_up

    # -- the one entry point --------------------------------------------------------------------------
    async def run(self, job: dict, timeout_s: float) -> dict:
        """The worker's answer ({"ok": ...} or {"error": ..., "param": ...}); raises PoolBusy,
        CompileTimeout or WorkerLost. `timeout_s` bounds waiting for a worker and compiling together."""
        loop = asyncio.get_running_loop()
        await self._ensure_started()          # the pool's first start is not the job's time
        start = loop.time()
        worker, started_up = await self._acquire(timeout_s)
        deadline = (loop.time() if started_up else start) + timeout_s
        progress = {"param": job.get("param")}
        try:
            answer = await asyncio.wait_for(worker.run(job, progress), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            self.num_killed += 1
            log.warning("guide compile for %s passed its deadline; worker %d killed", progress["param"], worker.pid)
            self._replace(worker)
            raise CompileTimeout(progress["param"]) from None
        except BaseException:
            self._replace(worker)        # cancelled or broken mid-job: its state is unknown
            raise
        self._release(worker)
        return answer

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._all]

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self._all):
            worker.kill()
            try:
                await worker.wait()
            except Exception:  # noqa: BLE001
                pass
        self._all.clear()
        self._idle.clear()
