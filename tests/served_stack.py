"""`llama-triton serve` as a child process on free ports: what the integration tests and the
benchmarks start, stop and look into (its processes, the CPU decoder's counters)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from llama_triton.serve.common import SERVING_LINE, free_port, http_ok


@dataclass
class ServedStack:
    proc: subprocess.Popen
    port: int
    grpc_port: int
    http_port: int
    metrics_port: int
    model_name: str
    log_path: Path
    _log_file: Optional[IO[bytes]] = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """The OpenAI base URL (what openai.OpenAI(base_url=...) takes)."""
        return f"{self.base_url}/v1"

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

    def listening_frontends(self) -> set[int]:
        """Pids of the frontend workers that listen (each writes its pid to its ready file then)
        and are still alive."""
        pids = set()
        for f in (self.log_path.parent / "frontend").glob("ready-*"):
            try:
                pids.add(int(f.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return pids & {p.pid for p in self.processes()["frontend"]}

    def processes(self) -> dict[str, list]:
        """The stack's processes by role: launcher, frontend, tritonserver, python_stubs."""
        import psutil
        roles: dict[str, list] = {"launcher": [], "frontend": [], "tritonserver": [], "python_stubs": []}
        try:
            root = psutil.Process(self.proc.pid)
        except psutil.NoSuchProcess:
            return roles
        roles["launcher"].append(root)
        for p in root.children(recursive=True):
            try:
                argv = p.cmdline()
            except psutil.Error:
                continue
            cmd = " ".join(argv)
            if "triton_python_backend_stub" in cmd:
                roles["python_stubs"].append(p)
            elif argv and Path(argv[0]).name == "tritonserver":
                roles["tritonserver"].append(p)
            elif "-m frontend" in cmd:
                roles["frontend"].append(p)
        # worker processes a frontend may fork count as frontend
        seen = {p.pid for ps in roles.values() for p in ps}
        for f in list(roles["frontend"]):
            try:
                roles["frontend"] += [c for c in f.children(recursive=True) if c.pid not in seen]
            except psutil.Error:
                pass
        return roles

    def stub_names(self) -> dict[int, str]:
        """pid -> Triton model name for each Python backend stub."""
        out = {}
        for p in self.processes()["python_stubs"]:
            try:
                cmd = p.cmdline()
            except Exception:
                continue
            model = next((Path(a).parts[-3] for a in cmd if a.endswith("model.py")), None)
            out[p.pid] = model or "?"
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()


def start_served_stack(model_dir: str, work_dir: Path, *extra: str, frontend_args: tuple[str, ...] = (),
                       timeout: float = 300.0, env: Optional[dict] = None,
                       cwd: Optional[Path] = None) -> ServedStack:
    """Starts the launcher (its output in `work_dir`/stack.log) and returns once it serves.

    Ready means /health answers and the launcher has said it serves: /health answers as soon as
    one frontend worker listens, the launcher's line comes once all of them do.
    """
    port, grpc_port, http_port, metrics_port = (free_port() for _ in range(4))
    log_path = Path(work_dir) / "stack.log"
    cmd = [sys.executable, "-m", "llama_triton.serve.launcher", "serve", "--model-dir", model_dir,
           "--port", str(port), "--triton-grpc-port", str(grpc_port), "--triton-http-port", str(http_port),
           "--triton-metrics-port", str(metrics_port), "--work-dir", str(work_dir), *extra]
    if frontend_args:
        cmd += ["--", *frontend_args]
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT,
                            env=dict(os.environ, **(env or {})))
    stack = ServedStack(proc, port, grpc_port, http_port, metrics_port, Path(model_dir).name, log_path, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"stack exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if http_ok(f"{stack.base_url}/health") and SERVING_LINE in log_path.read_bytes():
            return stack
        time.sleep(0.3)
    stack.stop()
    raise RuntimeError(f"stack not healthy after {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
