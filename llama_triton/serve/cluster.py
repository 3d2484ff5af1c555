"""`llama-triton cluster`: N replicas on this machine behind Shepherd Model Gateway (SMG).

Each replica is a whole `llama-triton serve` (its own tritonserver and frontend, on its own
ports); SMG, an existing Rust LLM router (`smg` on PyPI, the `cluster` extra), listens on
--host:--port and routes to them. Nothing of ours sits in the token path: SMG proxies the
OpenAI requests straight to the replicas' frontends. docs/SCALE-OUT.md describes the topology.

Routing (SMG's own mechanisms, chosen in docs/SCALE-OUT.md):
- `--policy cache_aware` (default): SMG keeps a prefix tree over each replica's prompt text, so
  a conversation's next turn, and requests that share a system prompt, land where the prefix is
  already in the KV cache. That is also what gives clients that send `prompt_cache_key` only in
  the body their affinity: requests sharing a key share a prefix.
- Explicit pinning: a client sends its key in the `X-Prompt-Cache-Key` header (SMG's sticky
  routing key, `--routing-key-override`); SMG pins the key to one replica for as long as it is
  used and that replica is healthy.

This module supervises: a replica whose launcher exits (its frontend died, say) is started again
on the same ports, and SMG's health checks send traffic back to it once /health answers; a dead
tritonserver is restarted by the replica's own launcher. SIGINT/SIGTERM stops the router first,
then drains every replica (--shutdown-grace, as `serve`). However the cluster process itself ends,
SIGKILL included, the kernel sends SIGTERM to the router and to every replica it started (Linux's
parent-death signal), and each replica stops its own tritonserver and frontend: no replica outlives
its cluster to hold ports and memory as an orphan.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from llama_triton.serve.launcher import DEFAULT_MODEL_DIR, SERVING_LINE, LaunchError, free_port, http_ok, log, port_free

# Logged once the router answers and every replica serves: what a supervising process waits for.
CLUSTER_SERVING_LINE = b"cluster serving the OpenAI API at"
ROUTING_KEY_HEADER = "X-Prompt-Cache-Key"
POLICIES = ("cache_aware", "round_robin", "consistent_hashing", "prefix_hash", "power_of_two", "random")
MAX_RESTART_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1         # <linux/prctl.h>


def die_with(parent_pid: int):
    """A Popen preexec_fn: the child gets SIGTERM when `parent_pid` (the process that starts it)
    ends, however it ends. The replicas run in sessions of their own (a signal to the cluster's
    process group must not reach them twice), so nothing else would tell them."""
    def preexec() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(70)
        if os.getppid() != parent_pid:      # the parent died before prctl took effect
            os._exit(70)
    return preexec


def add_parser(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("cluster", help="N replicas (tritonserver + frontend each) behind Shepherd Model Gateway",
                       description=__doc__.splitlines()[0])
    c.add_argument("--replicas", type=int, default=int(os.environ.get("REPLICAS", "2")))
    c.add_argument("--model-dir", default=os.environ.get("LLAMA_TRITON_MODEL_DIR", DEFAULT_MODEL_DIR))
    c.add_argument("--host", default="127.0.0.1", help="the router's address")
    c.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")), help="the router's port")
    c.add_argument("--router-metrics-port", type=int, default=29000,
                   help="SMG's Prometheus endpoint (GET /metrics on --host at this port)")
    c.add_argument("--replica-base-port", type=int, default=8100,
                   help="replica i's frontend listens on this port + i (0: free ports)")
    c.add_argument("--policy", choices=POLICIES, default="cache_aware", help="SMG's routing policy")
    c.add_argument("--routing-key-header", default=ROUTING_KEY_HEADER,
                   help="header SMG pins requests by (a client's prompt_cache_key)")
    c.add_argument("--health-check-interval", type=int, default=2,
                   help="seconds between SMG's /health probes of each replica")
    c.add_argument("--health-failure-threshold", type=int, default=1,
                   help="failed probes before SMG stops routing to a replica")
    c.add_argument("--smg", default=None, help="path of the smg executable (default: the one next to Python)")
    c.add_argument("--work-dir", default="var/cluster", help="per-replica work dirs and logs")
    c.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get on SIGTERM/SIGINT (passed to every replica)")
    c.add_argument("--ready-timeout", type=float, default=600.0)
    c.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="-- then options for every replica's `llama-triton serve` (e.g. --decoder-kind zero_cost)")
    return c


def find_smg(explicit: Optional[str]) -> list[str]:
    """smg's command line: --smg, the venv's `smg`, `smg` on PATH, or `python -m smg`."""
    if explicit:
        return [explicit]
    beside = Path(sys.executable).parent / "smg"
    if beside.exists():
        return [str(beside)]
    on_path = shutil.which("smg")
    if on_path:
        return [on_path]
    try:
        import smg  # noqa: F401
    except ImportError:
        raise LaunchError("Shepherd Model Gateway is not installed: pip install -e '.[cluster]' "
                          "(or pass --smg)") from None
    return [sys.executable, "-m", "smg"]


def router_command(smg: list[str], host: str, port: int, metrics_port: int, worker_urls: list[str],
                   policy: str = "cache_aware", routing_key_header: str = ROUTING_KEY_HEADER,
                   health_interval: int = 2, health_failures: int = 1, api_keys: tuple[str, ...] = (),
                   shutdown_grace: float = 30.0) -> list[str]:
    """`smg launch` for our replicas (every flag is SMG's own; see docs/SCALE-OUT.md)."""
    cmd = [*smg, "launch", "--host", host, "--port", str(port), "--worker-urls", *worker_urls,
           "--policy", policy,
           # A client's key in this header pins its requests to one replica, on any policy.
           "--routing-key-override", "--routing-key-headers", routing_key_header.lower(),
           # cache_aware otherwise diverts one cache miss in four to a replica that joined in the
           # last minute, which splits conversations right after a start or a restart.
           "--worker-warmup-secs", "0",
           "--health-check-interval-secs", str(health_interval),
           "--health-failure-threshold", str(health_failures), "--health-success-threshold", "1",
           "--prometheus-host", host, "--prometheus-port", str(metrics_port),
           "--shutdown-grace-period-secs", str(max(1, int(shutdown_grace))),
           "--log-level", "warn"]
    if api_keys:
        # Keys are checked at the router (its data plane and its /workers control plane) and again
        # by every replica: SMG forwards the client's Authorization header unchanged, and uses the
        # first key for its own calls to the replicas (model discovery). The other keys are SMG
        # "tenant" keys: same access, each its own tenant name.
        cmd += ["--api-key", api_keys[0]]
        for i, key in enumerate(api_keys[1:], start=1):
            cmd += ["--tenant-api-key", f"key-{i}:{key}"]
    return cmd


@dataclass
class Replica:
    index: int
    port: int
    grpc_port: int
    http_port: int
    metrics_port: int
    work_dir: Path
    proc: Optional[subprocess.Popen] = None
    log_file: Optional[IO[bytes]] = field(default=None, repr=False)
    restarts: int = 0
    restart_at: Optional[float] = None      # a restart is scheduled for this time
    awaiting_health: bool = False           # restarted, /health not yet answered
    backoff: float = 1.0

    @property
    def log_path(self) -> Path:
        return self.work_dir / "replica.log"


class Cluster:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stopping = False
        self.replicas: list[Replica] = []
        self.router: Optional[subprocess.Popen] = None
        self.router_log: Optional[IO[bytes]] = None
        self.work = Path(args.work_dir)
        self.serve_args = [x for x in args.serve_args if x != "--"] if args.serve_args else []

    # ------------------------------------------------------------------ set-up

    def prepare(self) -> None:
        a = self.args
        if a.replicas < 1:
            raise LaunchError(f"--replicas must be at least 1, got {a.replicas}")
        if not (Path(a.model_dir) / "config.json").is_file():
            raise LaunchError(f"model directory {a.model_dir} not found (or has no config.json); run `make model`")
        for name, port in (("--port", a.port), ("--router-metrics-port", a.router_metrics_port)):
            if not port_free(a.host, port):
                raise LaunchError(f"port {port} ({name}) is already in use on {a.host}")
        self.smg = find_smg(a.smg)
        self.work.mkdir(parents=True, exist_ok=True)
        for i in range(a.replicas):
            port = a.replica_base_port + i if a.replica_base_port else free_port()
            if not port_free("127.0.0.1", port):
                raise LaunchError(f"replica {i}'s port {port} is in use (--replica-base-port {a.replica_base_port})")
            self.replicas.append(Replica(i, port, free_port(), free_port(), free_port(), self.work / f"replica-{i}"))

    def replica_command(self, r: Replica) -> list[str]:
        a = self.args
        cmd = [sys.executable, "-m", "llama_triton.serve.launcher", "serve", "--model-dir", a.model_dir,
               "--host", "127.0.0.1", "--port", str(r.port), "--triton-grpc-port", str(r.grpc_port),
               "--triton-http-port", str(r.http_port), "--triton-metrics-port", str(r.metrics_port),
               "--work-dir", str(r.work_dir), "--shutdown-grace", f"{a.shutdown_grace:g}"]
        return cmd + self.serve_args

    def start_replica(self, r: Replica) -> None:
        r.work_dir.mkdir(parents=True, exist_ok=True)
        if r.log_file is not None:
            r.log_file.close()
        # A new cluster starts a new log (its "serving" line is what wait_replicas looks for);
        # a restart appends to it.
        r.log_file = open(r.log_path, "ab" if r.restarts else "wb")
        r.log_file.write(f"\n==== replica {r.index} start {r.restarts} ====\n".encode())
        r.log_file.flush()
        r.proc = subprocess.Popen(self.replica_command(r), stdout=r.log_file, stderr=subprocess.STDOUT,
                                  start_new_session=True, preexec_fn=die_with(os.getpid()))

    def replica_serving(self, r: Replica) -> bool:
        return http_ok(f"http://127.0.0.1:{r.port}/health")

    def wait_replicas(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_note = 0.0
        pending = list(self.replicas)
        while pending and not self.stopping:
            for r in list(pending):
                if r.proc.poll() is not None:
                    tail = r.log_path.read_text(errors="replace")[-3000:]
                    raise LaunchError(f"replica {r.index} exited with code {r.proc.returncode}; "
                                      f"its log ({r.log_path}) ends:\n{tail}")
                if SERVING_LINE in r.log_path.read_bytes() and self.replica_serving(r):
                    log(f"replica {r.index} serves at http://127.0.0.1:{r.port}")
                    pending.remove(r)
            if time.monotonic() > deadline:
                raise LaunchError(f"replicas {[r.index for r in pending]} not serving after {timeout:.0f} s")
            if pending and time.monotonic() - last_note > 15:
                log(f"waiting for {len(pending)} replica(s) to load (logs: {self.work}/replica-*/replica.log) ...")
                last_note = time.monotonic()
            time.sleep(0.3)

    def api_keys(self) -> tuple[str, ...]:
        """The replicas' keys ($API_KEYS / $API_KEYS_FILE, as the frontend reads them), in a stable order."""
        from frontend.settings import load_api_keys
        return tuple(sorted(load_api_keys(os.environ.get("API_KEYS"), os.environ.get("API_KEYS_FILE"))))

    def start_router(self) -> None:
        a = self.args
        urls = [f"http://127.0.0.1:{r.port}" for r in self.replicas]
        cmd = router_command(self.smg, a.host, a.port, a.router_metrics_port, urls, policy=a.policy,
                             routing_key_header=a.routing_key_header, health_interval=a.health_check_interval,
                             health_failures=a.health_failure_threshold, api_keys=self.api_keys(),
                             shutdown_grace=a.shutdown_grace)
        if self.router_log is None:
            self.router_log = open(self.work / "router.log", "ab")
        self.router = subprocess.Popen(cmd, stdout=self.router_log, stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=die_with(os.getpid()))

    def wait_router(self, timeout: float = 120.0) -> None:
        """Ready once the router answers /health and lists the model (every replica registered)."""
        a = self.args
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            if self.router.poll() is not None:
                tail = (self.work / "router.log").read_text(errors="replace")[-3000:]
                raise LaunchError(f"smg exited with code {self.router.returncode}:\n{tail}")
            if http_ok(f"http://{a.host}:{a.port}/health") and self.router_workers() >= len(self.replicas):
                return
            time.sleep(0.3)
        if not self.stopping:
            raise LaunchError(f"the router did not register the replicas within {timeout:.0f} s")

    def router_workers(self) -> int:
        """Healthy workers SMG reports (its /workers admin route), 0 when unknown."""
        import json
        import urllib.request
        a = self.args
        keys = self.api_keys()
        req = urllib.request.Request(f"http://{a.host}:{a.port}/workers",
                                     headers={"Authorization": f"Bearer {keys[0]}"} if keys else {})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                body = json.loads(r.read())
        except Exception:
            return 0
        workers = body.get("workers", body) if isinstance(body, dict) else body
        return sum(1 for w in workers if isinstance(w, dict) and w.get("is_healthy", True))

    # ------------------------------------------------------------------ supervision

    def check(self) -> None:
        now = time.monotonic()
        for r in self.replicas:
            if r.proc.poll() is None:
                if r.awaiting_health and self.replica_serving(r):
                    log(f"replica {r.index} is back (restart {r.restarts}); the router's health check re-admits it")
                    r.awaiting_health, r.backoff = False, 1.0
                continue
            if r.restart_at is None:
                log(f"replica {r.index} exited with code {r.proc.returncode}; restarting in {r.backoff:.0f} s "
                    f"(the router routes around it meanwhile)")
                r.restart_at = now + r.backoff
                r.backoff = min(r.backoff * 2, MAX_RESTART_BACKOFF_S)
            elif now >= r.restart_at:
                r.restarts += 1
                self.start_replica(r)
                r.restart_at, r.awaiting_health = None, True
        if self.router.poll() is not None:
            log(f"smg exited with code {self.router.returncode}; restarting it")
            time.sleep(1.0)
            self.start_router()

    def stop(self, *_) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        # Router first (no new requests reach a draining replica), then every replica at once:
        # each drains its frontend (--shutdown-grace) and stops its tritonserver.
        if self.replicas and any(r.proc is not None for r in self.replicas):
            log(f"stopping: the router, then {len(self.replicas)} replica(s) (each drains for up to "
                f"{self.args.shutdown_grace:g} s)")
        if self.router is not None and self.router.poll() is None:
            self.router.send_signal(signal.SIGTERM)
            try:
                self.router.wait(10)
            except subprocess.TimeoutExpired:
                self.router.kill()
                self.router.wait()
        live = [r.proc for r in self.replicas if r.proc is not None and r.proc.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.args.shutdown_grace + 60
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in [self.router_log] + [r.log_file for r in self.replicas]:
            if f is not None:
                f.close()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self.stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.prepare()
            a = self.args
            log(f"starting {a.replicas} replica(s) (tritonserver + frontend each; logs in {self.work}/replica-*/)")
            for r in self.replicas:
                self.start_replica(r)
            self.wait_replicas(a.ready_timeout)
            if self.stopping:
                return 0
            log(f"starting Shepherd Model Gateway ({a.policy}) on {a.host}:{a.port} (log: {self.work}/router.log)")
            self.start_router()
            self.wait_router()
            if self.stopping:
                return 0
            log(f"replicas: {', '.join(f'http://127.0.0.1:{r.port}' for r in self.replicas)}; "
                f"router metrics: http://{a.host}:{a.router_metrics_port}/metrics")
            log(f"{CLUSTER_SERVING_LINE.decode()} http://{a.host}:{a.port}/v1")
            while not self.stopping:
                time.sleep(0.2)
                self.check()
            return 0
        except LaunchError as e:
            log(f"error: {e}")
            return 1
        finally:
            self.shutdown()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
