"""`llama-triton cluster`: N replicas on this machine behind Shepherd Model Gateway (SMG).

Each replica is a whole `llama-triton serve` (its own tritonserver and frontend, on its own
ports); SMG, an existing Rust LLM router (`smg` on PyPI, the `cluster` extra), listens on
--host:--port and routes to them. Nothing of ours sits in the token path: SMG proxies the
OpenAI requests straight to the replicas' frontends. docs/SCALE-OUT.md describes the topology.

The router process also holds the cluster's front door (llama_triton/serve/router_front.py): it
takes --host:--port and sends stored responses by id, conversations and the operator endpoints to a
replica, which SMG would answer from its own (empty) state, and everything else to SMG, which then
listens on loopback behind it.

Routing (SMG's own mechanisms, chosen in docs/SCALE-OUT.md):
- `--policy cache_aware` (default): SMG keeps a prefix tree over each replica's prompt text, so
  a conversation's next turn, and requests that share a system prompt, land where the prefix is
  already in the KV cache. That is also what gives clients that send `prompt_cache_key` only in
  the body their affinity: requests sharing a key share a prefix.
- Explicit pinning: a client sends its key in the `X-Prompt-Cache-Key` header (SMG's sticky
  routing key, `--routing-key-override`); SMG pins the key to one replica for as long as it is
  used and that replica is healthy.

Keys (docs/OPERATIONS.md, "Tenants"): clients' keys ($API_KEYS / $API_KEYS_FILE) are checked by
SMG, each as a tenant of its own, and again by every replica; they never administer the router.
SMG's control plane (/workers, /wasm, /v1/tokenizers, /flush_cache, ...) takes only the admin key
(--router-admin-key-file, or one generated into <work-dir>/keys/router-admin-key), and SMG calls
the replicas with a worker key of its own that the replicas accept. No key is ever on a command
line: SMG runs in-process from key files (llama_triton/serve/router_launch.py), the replicas read
theirs from the environment. A changed $API_KEYS_FILE is reloaded by the replicas themselves, and
the router is swapped for one with the new keys (SMG cannot reload them).

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
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

from llama_triton.serve.common import DEFAULT_MODEL_DIR, SERVING_LINE, LaunchError, free_port, http_ok, log, port_free

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
    c.add_argument("--router-admin-key-file", default=os.environ.get("ROUTER_ADMIN_KEY_FILE"),
                   help="SMG's control-plane key(s), `ID:KEY` per line ($ROUTER_ADMIN_KEY_FILE; default: one "
                        "generated into <work-dir>/keys/router-admin-key); client keys never administer the router")
    c.add_argument("--work-dir", default="var/cluster", help="per-replica work dirs and logs")
    c.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get on SIGTERM/SIGINT (passed to every replica)")
    c.add_argument("--ready-timeout", type=float, default=600.0)
    c.add_argument("serve_args", nargs=argparse.REMAINDER,
                   help="-- then options for every replica's `llama-triton serve` (e.g. --decoder-kind zero_cost)")
    return c


def check_smg() -> None:
    """SMG runs inside this Python (router_launch.py), so this environment must have it."""
    try:
        import smg.launch_router  # noqa: F401
    except ImportError:
        raise LaunchError("Shepherd Model Gateway is not installed: pip install -e '.[cluster]'") from None


def smg_flags(host: str, port: int, metrics_port: int, worker_urls: list[str], policy: str = "cache_aware",
              routing_key_header: str = ROUTING_KEY_HEADER, health_interval: int = 2, health_failures: int = 1,
              shutdown_grace: float = 30.0) -> list[str]:
    """`smg launch`'s flags for our replicas (every flag is SMG's own; see docs/SCALE-OUT.md). No key
    is among them: router_launch.py adds those from files."""
    return ["--host", host, "--port", str(port), "--worker-urls", *worker_urls,
            "--policy", policy,
            # A client's key in this header pins its requests to one replica, on any policy.
            "--routing-key-override", "--routing-key-headers", routing_key_header.lower(),
            # cache_aware otherwise diverts one cache miss in four to a replica that joined in the
            # last minute, which splits conversations right after a start or a restart.
            "--worker-warmup-secs", "0",
            "--health-check-interval-secs", str(health_interval),
            "--health-failure-threshold", str(health_failures), "--health-success-threshold", "1",
            "--prometheus-host", host, "--prometheus-port", str(metrics_port),
            # SMG keeps no history of its own: stored responses are the replicas' (one PostgreSQL
            # store), and its own conversation and response routes sit behind the front door
            # (router_front.py), which sends them to a replica. With `none` nothing that still
            # reaches SMG can be stored there either.
            "--history-backend", "none",
            "--shutdown-grace-period-secs", str(max(1, int(shutdown_grace))),
            "--log-level", "warn"]


@dataclass(frozen=True)
class RouterKeys:
    """The files router_launch.py reads its keys from (tenant_keys: None when clients need no key)."""
    admin: Path
    worker: Optional[Path] = None
    tenants: Optional[Path] = None


def router_command(keys: RouterKeys, flags: list[str], wait_for_ports: bool = False) -> list[str]:
    """SMG in-process (llama_triton/serve/router_launch.py): key files on the command line, never keys."""
    cmd = [sys.executable, "-m", "llama_triton.serve.router_launch", "--admin-key-file", str(keys.admin)]
    if wait_for_ports:
        cmd.append("--wait-for-ports")
    if keys.worker is not None:
        cmd += ["--worker-key-file", str(keys.worker)]
    if keys.tenants is not None:
        cmd += ["--tenant-keys-file", str(keys.tenants)]
    return cmd + ["--", *flags]


def write_secret(path: Path, text: str) -> None:
    """A file only this user can read, written whole (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


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
        self.retired_routers: list[subprocess.Popen] = []     # draining after a key swap
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
        check_smg()
        self.work.mkdir(parents=True, exist_ok=True)
        self.prepare_keys()
        for i in range(a.replicas):
            port = a.replica_base_port + i if a.replica_base_port else free_port()
            if not port_free("127.0.0.1", port):
                raise LaunchError(f"replica {i}'s port {port} is in use (--replica-base-port {a.replica_base_port})")
            self.replicas.append(Replica(i, port, free_port(), free_port(), free_port(), self.work / f"replica-{i}"))

    def prepare_keys(self) -> None:
        """The router's key files, and the replicas' environment: every client key plus SMG's worker key.

        The client keys come from $API_KEYS and $API_KEYS_FILE; SMG reads the same two (its tenants)
        and the replicas read them too, so a rotated $API_KEYS_FILE reaches everyone."""
        keys_dir = self.work / "keys"
        a = self.args
        if a.router_admin_key_file:
            admin = Path(a.router_admin_key_file)
            if not admin.is_file():
                raise LaunchError(f"--router-admin-key-file {admin}: not a file")
        else:
            admin = keys_dir / "router-admin-key"
            if not admin.is_file():
                write_secret(admin, f"admin:{secrets.token_urlsafe(32)}\n")
            log(f"SMG's control plane takes the admin key in {admin} (client keys cannot administer it)")
        self.client_keys_file = os.environ.get("API_KEYS_FILE") or None
        self.replica_env = dict(os.environ)
        worker = None
        # With a keys file, even one without keys yet: keys added later must find SMG able to call
        # the replicas.
        if self.client_keys_file or self.client_key_ids():
            worker = keys_dir / "router-worker-key"
            key = secrets.token_urlsafe(32)
            write_secret(worker, key + "\n")
            # The replicas accept SMG's own calls (model discovery) under the id "router".
            self.replica_env["API_KEYS"] = ",".join(x for x in (os.environ.get("API_KEYS", ""), f"router:{key}") if x)
        self.router_keys = RouterKeys(admin, worker, Path(self.client_keys_file) if self.client_keys_file else None)
        self.keys_stamp = self.client_keys_stamp()

    def client_key_ids(self) -> list[str]:
        from frontend.tenancy.tenants import KeysInvalid, parse_keys
        text = None
        if os.environ.get("API_KEYS_FILE"):
            try:
                text = Path(os.environ["API_KEYS_FILE"]).read_text()
            except OSError as e:
                raise LaunchError(f"$API_KEYS_FILE {os.environ['API_KEYS_FILE']}: {e.strerror}") from None
        try:
            return sorted(set(parse_keys(os.environ.get("API_KEYS"), text).values()))
        except KeysInvalid as e:
            raise LaunchError(str(e)) from None

    def client_keys_stamp(self):
        if not self.client_keys_file:
            return None
        try:
            st = Path(self.client_keys_file).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def admin_key(self) -> str:
        line = next(ln.strip() for ln in self.router_keys.admin.read_text().splitlines()
                    if ln.strip() and not ln.strip().startswith("#"))
        return line.partition(":")[2] or line

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
                                  start_new_session=True, env=self.replica_env,
                                  preexec_fn=die_with(os.getpid()))

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

    def start_router(self) -> None:
        a = self.args
        urls = [f"http://127.0.0.1:{r.port}" for r in self.replicas]
        flags = smg_flags(a.host, a.port, a.router_metrics_port, urls, policy=a.policy,
                          routing_key_header=a.routing_key_header, health_interval=a.health_check_interval,
                          health_failures=a.health_failure_threshold, shutdown_grace=a.shutdown_grace)
        if self.router_log is None:
            self.router_log = open(self.work / "router.log", "ab")
        # --wait-for-ports: after a swap or a crash the old router may still hold the ports.
        self.router = subprocess.Popen(router_command(self.router_keys, flags, wait_for_ports=True),
                                       stdout=self.router_log, stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=die_with(os.getpid()))

    def swap_router(self) -> None:
        """New keys for SMG, which cannot reload them: the old router drains (SIGTERM, its own
        graceful shutdown; streams in flight finish on it) while a new one with the new keys, loaded
        meanwhile, binds the ports as soon as the old one lets go of them. Connections that arrive
        in that moment are refused (docs/OPERATIONS.md, "Rotating keys")."""
        old = self.router
        if old is not None and old.poll() is None:
            old.send_signal(signal.SIGTERM)
            self.retired_routers.append(old)
        log("the clients' keys file changed: the replicas reload it; starting a router with the new keys")
        self.start_router()

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
        req = urllib.request.Request(f"http://{a.host}:{a.port}/workers",
                                     headers={"Authorization": f"Bearer {self.admin_key()}"})
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
        stamp = self.client_keys_stamp()
        if stamp != self.keys_stamp and stamp is not None:
            self.keys_stamp = stamp
            try:
                self.client_key_ids()
            except LaunchError as e:
                log(f"the clients' keys file changed but cannot be used; the router keeps its keys: {e}")
            else:
                self.swap_router()
        self.retired_routers = [p for p in self.retired_routers if p.poll() is None]

    def stop(self, *_) -> None:
        self.stopping = True

    def shutdown(self) -> None:
        # Router first (no new requests reach a draining replica), then every replica at once:
        # each drains its frontend (--shutdown-grace) and stops its tritonserver.
        if self.replicas and any(r.proc is not None for r in self.replicas):
            log(f"stopping: the router, then {len(self.replicas)} replica(s) (each drains for up to "
                f"{self.args.shutdown_grace:g} s)")
        for router in [self.router, *self.retired_routers]:
            if router is not None and router.poll() is None:
                router.send_signal(signal.SIGTERM)
                try:
                    router.wait(10)
                except subprocess.TimeoutExpired:
                    router.kill()
                    router.wait()
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
            if a.replicas > 1 and not os.environ.get("LLAMA_TRITON_RESPONSES_STORE", "").startswith("postgres"):
                log("stored responses (/v1/responses) stay on the replica that made them (SQLite each); set "
                    "$LLAMA_TRITON_RESPONSES_STORE to a PostgreSQL URL to share them (docs/SCALE-OUT.md)")
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
