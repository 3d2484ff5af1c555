"""Per-request time points of the time to first token, for benchmarks/ttft_segments.py.

Off unless the environment variable LLAMA_TRITON_TTFT_STAMPS names a directory: the benchmark
sets it for the stack it starts, and the frontend, tritonserver and its Python-backend stubs
inherit it. Then each process that stamps appends one JSON line per request to
`<dir>/<role>-<pid>.jsonl`, its time points in nanoseconds of `time.monotonic_ns()`:
CLOCK_MONOTONIC, one clock for every process of the host, so the frontend's and the decoder's
stamps of one request subtract. Off, call sites test `ENABLED` (a constant read at import) and
do nothing else: no clock read, no allocation.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Optional

ENV = "LLAMA_TRITON_TTFT_STAMPS"
DIRECTORY: Optional[str] = os.environ.get(ENV) or None
ENABLED = DIRECTORY is not None

now = time.monotonic_ns


class StampLog:
    """One process's stamp file (owned by the app or model that stamps); thread-safe appends."""

    def __init__(self, role: str, directory: Optional[str] = None):
        self.role = role
        self.directory = directory or DIRECTORY
        self._lock = threading.Lock()
        self._file = None

    def write(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            if self._file is None:
                path = Path(self.directory) / f"{self.role}-{os.getpid()}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                # Line-buffered: a record is on disk once written, whenever the process is stopped.
                self._file = open(path, "a", buffering=1, encoding="utf-8")
            self._file.write(line)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
