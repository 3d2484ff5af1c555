"""What the launcher needs to keep a replica alive: restart policies and the decoder's processes.

* `RestartPolicy`: the delay before restarting a process that died (at once the first time, then
  1 s, doubling up to 30 s; back to "at once" after a minute of running), and a crash budget: a process that dies more than
  `max_crashes` times within `window` seconds is not restarted again; the launcher then stops
  the replica and exits non-zero, so that whatever supervises it (systemd, Kubernetes) sees a
  failure instead of a replica that keeps flapping.
* `decoder_processes`: the Python backend stubs under tritonserver (the CPU decoder runs in the
  `tensorrt_llm` stub). Triton keeps a model "ready" after its stub died and answers every
  request with "Stub process '<model>_0_0' is not healthy."; the launcher watches their pids
  and restarts tritonserver when one is gone.
* `failure_report`: the file through which a frontend tells the launcher that the decoder is
  broken although its process lives (the GPU case: TensorRT-LLM's executor fails every request
  after a CUDA error while Triton reports the model ready; docs/OPERATIONS.md).
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

STUB_BINARY = "triton_python_backend_stub"


class CrashLoop(RuntimeError):
    """A process used up its crash budget: the launcher gives up."""


@dataclass
class RestartPolicy:
    name: str
    max_crashes: int = 5
    window: float = 300.0
    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 60.0          # running this long resets the backoff
    crashes: deque = field(default_factory=deque)
    backoff: float = 0.0
    started_at: Optional[float] = None

    def __post_init__(self):
        self.backoff = 0.0                  # the first restart is immediate

    def started(self, now: float) -> None:
        self.started_at = now

    def crashed(self, now: float) -> float:
        """Records a crash; returns the delay before the restart. Raises CrashLoop past the budget."""
        if self.started_at is not None and now - self.started_at >= self.stable_after:
            self.backoff = 0.0
        self.started_at = None
        self.crashes.append(now)
        while self.crashes and now - self.crashes[0] > self.window:
            self.crashes.popleft()
        if len(self.crashes) > self.max_crashes:
            raise CrashLoop(f"{self.name} died {len(self.crashes)} times within {self.window:.0f} s "
                            f"(--max-restarts {self.max_crashes}); giving up")
        delay = self.backoff
        self.backoff = min(max(self.backoff * 2, self.initial), self.maximum)
        return delay

    @property
    def recent_crashes(self) -> int:
        return len(self.crashes)


def decoder_processes(triton_pid: int) -> dict[int, str]:
    """pid -> model name of every live Python backend stub under `triton_pid` (mpirun included)."""
    out = {}
    try:
        children = psutil.Process(triton_pid).children(recursive=True)
    except psutil.Error:
        return out
    for p in children:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            argv = p.cmdline()
        except psutil.Error:
            continue
        if not argv or Path(argv[0]).name != STUB_BINARY:
            continue
        # argv[1] is the model's .../<model>/<version>/model.py
        model = next((Path(a).parts[-3] for a in argv[1:] if a.endswith("model.py") and len(Path(a).parts) >= 3), "?")
        out[p.pid] = model
    return out


def dead(pids: dict[int, str]) -> dict[int, str]:
    """Those of `pids` that are gone. A stub SIGKILLed stays a zombie (tritonserver does not reap it)."""
    gone = {}
    for pid, model in pids.items():
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                gone[pid] = model
        except psutil.NoSuchProcess:
            gone[pid] = model
        except psutil.Error:
            pass
    return gone


def failure_report(path: Path, since: float) -> Optional[str]:
    """The reason a frontend wrote to `path` after `since` (wall clock), or None."""
    try:
        if path.stat().st_mtime < since:
            return None
        return path.read_text(errors="replace").strip() or "no reason given"
    except OSError:
        return None


def write_failure_report(path: str, reason: str) -> None:
    """Atomically (rename) so the launcher never reads half a line."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}: {reason}\n")
    os.replace(tmp, path)
