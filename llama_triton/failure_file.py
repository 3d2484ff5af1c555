"""The decoder-failure file: how a frontend tells the launcher that the decoder is broken although
its process lives (the GPU case: TensorRT-LLM's executor fails every request after a CUDA error
while Triton reports the model ready; docs/OPERATIONS.md).

The launcher passes the path (`--decoder-failure-file`) and restarts tritonserver when a report
newer than the running server appears (llama_triton/serve/supervisor.py); a frontend worker writes
it through the callback `reporter` makes, so the frontend knows a callable, not the launcher.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional

log = logging.getLogger("llama_triton.failure_file")


def write_failure_report(path: str, reason: str) -> None:
    """Atomically (rename) so the launcher never reads half a line."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} pid {os.getpid()}: {reason}\n")
    os.replace(tmp, path)


def failure_report(path: Path, since: float) -> Optional[str]:
    """The reason a frontend wrote to `path` after `since` (wall clock), or None."""
    try:
        if path.stat().st_mtime < since:
            return None
        return path.read_text(errors="replace").strip() or "no reason given"
    except OSError:
        return None


def reporter(path: Optional[str]) -> Optional[Callable[[str], None]]:
    """The frontend's callback for a broken decoder: writes `path` (None without one). A failed
    write is logged, never raised: the frontend goes on answering 503 on its own."""
    if not path:
        return None

    def report(reason: str) -> None:
        try:
            write_failure_report(path, reason)
        except OSError as e:
            log.error("could not report the broken decoder to the launcher: %s", e)
    return report
