"""Starts the real stack (tritonserver + frontend, through the launcher) for integration tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from llama_triton.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Polls `predicate` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


@dataclass
class Stack:
    proc: subprocess.Popen
    port: int
    grpc_port: int
    http_port: int
    metrics_port: int
    model_name: str
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def engine_stats(self) -> dict[str, float]:
        """The CPU decoder's counters, from Triton's Prometheus endpoint."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        stats = {}
        for line in text.splitlines():
            if line.startswith("llama_triton_engine{"):
                label = line.split('stat="', 1)[1].split('"', 1)[0]
                stats[label] = float(line.rsplit(" ", 1)[1])
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def start_stack(model_dir: str, work_dir: Path, *extra: str, frontend_args: tuple[str, ...] = (),
                timeout: float = 300.0, env: dict | None = None) -> Stack:
    port, grpc_port, http_port, metrics_port = (free_port() for _ in range(4))
    log_path = work_dir / "stack.log"
    cmd = [sys.executable, "-m", "llama_triton.launcher", "serve", "--model-dir", model_dir,
           "--port", str(port), "--triton-grpc-port", str(grpc_port), "--triton-http-port", str(http_port),
           "--triton-metrics-port", str(metrics_port), "--work-dir", str(work_dir), *extra]
    if frontend_args:
        cmd += ["--", *frontend_args]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    stack = Stack(proc, port, grpc_port, http_port, metrics_port, Path(model_dir).name, log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stack exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            # /health answers once one frontend worker listens; the launcher's "serving" line
            # comes once all of them do.
            with urllib.request.urlopen(f"{stack.base_url}/health", timeout=1) as r:
                if r.status == 200 and b"serving the OpenAI API at" in log_path.read_bytes():
                    return stack
        except Exception:
            pass
        time.sleep(0.3)
    stack.stop()
    raise RuntimeError(f"stack not healthy after {timeout} s:\n{log_path.read_text()[-4000:]}")
