"""`llama-triton cluster` as a child process on free ports: what the cluster tests and the
router-cost benchmark start, look into (which replica served what, its processes) and stop."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from llama_triton.serve.cluster import CLUSTER_SERVING_LINE, RouterKeys
from llama_triton.serve.common import free_port, http_ok


def scrape(url: str, timeout: float = 5.0, headers: Optional[dict] = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


@dataclass
class ServedCluster:
    proc: subprocess.Popen
    port: int
    router_metrics_port: int
    work_dir: Path
    model_name: str
    log_path: Path
    api_key: Optional[str] = None
    _log_file: Optional[IO[bytes]] = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def router_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.router_metrics_port}/metrics"

    def router_keys(self) -> RouterKeys:
        """The key files `llama-triton cluster` generated for its router (in <work-dir>/keys/)."""
        keys = self.work_dir / "keys"
        worker = keys / "router-worker-key"
        return RouterKeys(keys / "router-admin-key", worker if worker.is_file() else None)

    @property
    def admin_key(self) -> str:
        """SMG's control-plane key (what only the operator has; client keys cannot administer SMG)."""
        return self.router_keys().admin.read_text().strip().partition(":")[2]

    def admin_auth(self) -> dict:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def workers(self) -> list[dict]:
        """SMG's view of the replicas (its /workers admin route): url, is_healthy, load, ..."""
        return json.loads(scrape(f"{self.base_url}/workers", headers=self.admin_auth()))["workers"]

    def healthy_workers(self) -> set[str]:
        try:
            return {w["url"] for w in self.workers() if w.get("is_healthy")}
        except OSError:
            return set()

    def replica_urls(self) -> list[str]:
        """The replicas' frontends, in replica order (from the launcher's command lines)."""
        return [f"http://127.0.0.1:{port}" for port, _ in self.replica_launchers()]

    def routed(self) -> dict[str, float]:
        """Requests SMG has sent to each replica so far (smg_worker_requests_total by worker URL)."""
        text = scrape(self.router_metrics_url)
        out: dict[str, float] = {}
        for m in re.finditer(r'^smg_worker_requests_total\{([^}]*)\} (\S+)$', text, re.M):
            worker = re.search(r'worker="([^"]+)"', m.group(1))
            if worker:
                out[worker.group(1)] = out.get(worker.group(1), 0.0) + float(m.group(2))
        return out

    def replica_launchers(self) -> list[tuple[int, "object"]]:
        """(frontend port, psutil.Process) of each replica's `llama-triton serve`, by replica index."""
        import psutil
        found = []
        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []
        for p in children:
            try:
                argv = p.cmdline()
            except psutil.Error:
                continue
            if "serve" in argv and "--port" in argv:
                work = argv[argv.index("--work-dir") + 1] if "--work-dir" in argv else ""
                found.append((work, int(argv[argv.index("--port") + 1]), p))
        return [(port, p) for _, port, p in sorted(found, key=lambda t: t[0])]

    def replica_process(self, port: int, role: str):
        """The replica's `frontend` or `tritonserver` process (psutil), or None."""
        for p_port, launcher in self.replica_launchers():
            if p_port != port:
                continue
            for child in launcher.children(recursive=True):
                try:
                    argv = child.cmdline()
                except Exception:
                    continue
                if role == "frontend" and "-m" in argv and "frontend" in argv:
                    return child
                if role == "tritonserver" and argv and Path(argv[0]).name == "tritonserver":
                    return child
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()


def start_served_cluster(model_dir: str, work_dir: Path, replicas: int = 2, *cluster_args: str,
                         serve_args: tuple[str, ...] = (), timeout: float = 600.0,
                         env: Optional[dict] = None, cwd: Optional[Path] = None) -> ServedCluster:
    """Starts `llama-triton cluster` (its output in `work_dir`/cluster.log); returns once it serves.

    Every port is a fresh one: a stopped SMG holds its ports for a few seconds.
    """
    port, metrics_port = free_port(), free_port()
    work_dir = Path(work_dir)
    log_path = work_dir / "cluster.log"
    cmd = [sys.executable, "-m", "llama_triton.serve.launcher", "cluster", "--replicas", str(replicas),
           "--model-dir", model_dir, "--port", str(port), "--router-metrics-port", str(metrics_port),
           "--replica-base-port", "0", "--work-dir", str(work_dir), *cluster_args]
    if serve_args:
        cmd += ["--", *serve_args]
    env = dict(os.environ, **(env or {}))
    keys = sorted(k.strip() for k in env.get("API_KEYS", "").split(",") if k.strip())   # the router's shared key: the first
    log_file = open(log_path, "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    cluster = ServedCluster(proc, port, metrics_port, work_dir, Path(model_dir).name, log_path,
                            keys[0] if keys else None, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log_file.close()
            raise RuntimeError(f"cluster exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if CLUSTER_SERVING_LINE in log_path.read_bytes() and http_ok(f"{cluster.base_url}/health"):
            return cluster
        time.sleep(0.3)
    cluster.stop()
    raise RuntimeError(f"cluster not serving after {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
