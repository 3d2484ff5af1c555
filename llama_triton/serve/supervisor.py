"""`llama-triton serve`'s supervisor: the replica's processes (tritonserver and the frontend
workers), their restarts and their crash budget (docs/OPERATIONS.md).

`Supervisor` waits until Triton's models are ready before starting the frontend, then

* restarts tritonserver with backoff when it dies, when one of its Python backend stubs dies (the
  CPU decoder runs in the `tensorrt_llm` stub; Triton keeps the model "ready" without it), or when
  a frontend reports the decoder broken (GPU: an executor that fails every request); the frontend
  keeps running, answers 503 meanwhile and serves again as soon as the models are back;
* restarts a frontend worker that died, alone, with backoff: tritonserver and the other workers
  are untouched;
* gives up on a process that dies more than `--max-restarts` times within `--restart-window`
  seconds: it says so loudly, stops the replica and exits with status 3;

and on SIGINT/SIGTERM drains the frontend first (it stops accepting, in-flight requests get
`--shutdown-grace` seconds, then the rest are cancelled), then stops Triton.

What it decides with:

* `RestartPolicy`: the delay before restarting a process that died (at once the first time, then
  1 s, doubling up to 30 s; back to "at once" after a minute of running), and a crash budget: a
  process that dies more than `max_crashes` times within `window` seconds is not restarted again.
* `decoder_processes`: the Python backend stubs under tritonserver (the CPU decoder runs in the
  `tensorrt_llm` stub). Triton keeps a model "ready" after its stub died and answers every
  request with "Stub process '<model>_0_0' is not healthy."; the supervisor watches their pids
  and restarts tritonserver when one is gone.
* the decoder-failure file (llama_triton/failure_file.py): how a frontend tells it that the decoder
  is broken although its process lives (the GPU case: TensorRT-LLM's executor fails every request
  after a CUDA error while Triton reports the model ready).

The frontend workers of a replica share $LLAMA_TRITON_HASH_SECRET (generated here unless set): what
they salt the prefix cache and hash `user` with (frontend/tenancy/tenants.py), so all workers salt alike.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

from frontend.tenancy import admission
from llama_triton.failure_file import failure_report
from llama_triton.serve import triton_launch
from llama_triton.serve.common import SERVING_LINE, LaunchError, http_ok, log, loud
from llama_triton.serve.repository import TemplateError
from llama_triton.serve.tritonserver import TritonNotFound

HASH_SECRET_ENV = "LLAMA_TRITON_HASH_SECRET"   # = frontend.tenancy.tenants.HASH_SECRET_ENV
EXIT_GAVE_UP = 3            # exit status when a process used up its crash budget

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


class Supervisor:
    """One replica (`llama-triton serve`): starts tritonserver and the frontend workers, restarts
    each one that dies or breaks, and drains them on SIGTERM (`run`)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stopping = False
        self.triton: subprocess.Popen | None = None
        self.frontends: list[Optional[subprocess.Popen]] = []
        self.env = dict(os.environ)
        # One per replica, kept across frontend restarts: every worker salts the prefix cache alike.
        self.hash_secret = os.environ.get(HASH_SECRET_ENV) or secrets.token_urlsafe(32)
        # The Python backend stub runs the first python3 on PATH: make it ours.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.restarts = 0
        self.frontend_policies: list[RestartPolicy] = []
        self.frontend_due: list[float] = []
        self.triton_state = "running"             # running | waiting (backoff) | starting
        self.triton_due = self.triton_started = self.triton_down_at = 0.0
        self.triton_ready_wall = 0.0
        self.stubs: dict[int, str] = {}
        self.decoder_dead_since: Optional[float] = None
        self.triton_policy = RestartPolicy("tritonserver", args.max_restarts, args.restart_window)

    def prepare(self) -> list[str]:
        """Checks the options, renders the repository; tritonserver's command line (triton_launch.py)."""
        if self.args.frontend_workers < 1:
            raise LaunchError(f"--frontend-workers must be at least 1, got {self.args.frontend_workers}")
        cmd, install_env = triton_launch.command(self.args)
        self.env.update(install_env)
        return cmd

    def tokenizer_dir(self) -> Path:
        """The frontend's tokenizer and chat template: --model-dir, or what a rendered repository names."""
        a = self.args
        model_dir = Path(a.model_dir)
        if (model_dir / "config.json").is_file() or not a.repository:
            return model_dir.resolve()
        pre = Path(a.repository) / "preprocessing" / "config.pbtxt"
        m = re.search(r'key: "tokenizer_dir" value: \{ string_value: "([^"]+)"', pre.read_text()) if pre.exists() else None
        if not m:
            raise LaunchError(f"pass --model-dir: {pre} names no tokenizer_dir")
        return Path(m.group(1))

    def start_triton(self, cmd: list[str]) -> None:
        self.triton = subprocess.Popen(cmd, env=self.env, start_new_session=True)

    def reap_triton_group(self) -> None:
        """After tritonserver died: end what is left of its process group (Python backend stubs)."""
        if self.triton is None:
            return
        try:
            os.killpg(self.triton.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def wait_triton_ready(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.args.triton_http_port}/v2/health/ready"
        deadline = time.monotonic() + timeout
        last_note = 0.0
        while time.monotonic() < deadline and not self.stopping:
            if self.triton.poll() is not None:
                raise LaunchError(f"tritonserver exited with code {self.triton.returncode} while loading models")
            if http_ok(url):
                return
            if time.monotonic() - last_note > 10:
                log("waiting for Triton models to load ...")
                last_note = time.monotonic()
            time.sleep(0.25)
        if not self.stopping:
            raise LaunchError(f"Triton models not ready after {timeout:.0f} s")

    def frontend_command(self) -> tuple[list[str], dict]:
        """The frontend worker command (without its --ready-file) and environment."""
        a = self.args
        cmd = [sys.executable, "-m", "frontend", "--host", a.host, "--port", str(a.port),
               "--triton-grpc", f"127.0.0.1:{a.triton_grpc_port}",
               "--triton-http", f"127.0.0.1:{a.triton_http_port}",
               "--triton-metrics", f"127.0.0.1:{a.triton_metrics_port}",
               "--max-tokens-cap", str(a.max_tokens_cap), "--shutdown-grace", f"{a.shutdown_grace:g}",
               # how a frontend tells us the decoder is broken though its process lives (supervisor.py)
               "--decoder-failure-file", str(self.failure_file)]
        cmd += ["--model-dir", str(self.tokenizer_dir())]
        if a.served_model_name:
            cmd += ["--served-model-name", a.served_model_name]
        if a.otlp_traces_endpoint:
            cmd += ["--otlp-traces-endpoint", a.otlp_traces_endpoint]
        extra = [x for x in a.frontend_args if x != "--"]
        env = dict(self.env)
        env[HASH_SECRET_ENV] = self.hash_secret       # the environment, never the command line
        if "--responses-store" not in extra and not env.get("LLAMA_TRITON_RESPONSES_STORE"):
            # Stored responses (/v1/responses) outlive a frontend restart and are shared by the workers.
            cmd += ["--responses-store", f"sqlite:{(Path(a.work_dir) / 'responses.sqlite3').resolve()}"]
        if a.frontend_workers > 1:
            cmd += ["--reuse-port"]
            # prometheus_client reads this at import: every worker writes its samples there and
            # /metrics, from whichever worker answers, sums them all.
            env["PROMETHEUS_MULTIPROC_DIR"] = str((self.state_dir / "metrics").resolve())
        return cmd + extra, env

    @property
    def state_dir(self) -> Path:
        return Path(self.args.work_dir) / "frontend"

    @property
    def failure_file(self) -> Path:
        return (self.state_dir / "decoder-failed").resolve()

    @property
    def admission_file(self) -> Path:
        return (self.state_dir / "admission").resolve()

    def spawn_frontend(self, i: int) -> None:
        cmd, env = self.frontend_command()
        ready = self.state_dir / f"ready-{i}"
        ready.unlink(missing_ok=True)
        cmd = cmd[:3] + ["--ready-file", str(ready)] + cmd[3:]     # cmd[:3]: python -m frontend
        if self.args.frontend_workers > 1:
            # One 429 gate for the replica: the workers count their open decoder requests together.
            cmd += ["--admission-file", str(self.admission_file), "--admission-slot", str(i)]
        self.frontends[i] = subprocess.Popen(cmd, env=env)
        self.frontend_policies[i].started(time.monotonic())

    def start_frontend(self) -> None:
        """Starts the frontend worker(s) and returns once every one of them is listening."""
        a = self.args
        shutil.rmtree(self.state_dir, ignore_errors=True)
        (self.state_dir / "metrics").mkdir(parents=True)
        if a.frontend_workers > 1:
            admission.create_file(self.admission_file, a.frontend_workers)
        self.frontends = [None] * a.frontend_workers
        self.frontend_policies = [RestartPolicy(f"frontend worker {i}", a.max_restarts, a.restart_window)
                                  for i in range(a.frontend_workers)]
        self.frontend_due = [0.0] * a.frontend_workers
        for i in range(a.frontend_workers):
            self.spawn_frontend(i)
        ready = [self.state_dir / f"ready-{i}" for i in range(a.frontend_workers)]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.check_frontends()
            if all(f.exists() for f in ready) and http_ok(f"http://{a.host}:{a.port}/health"):
                return
            time.sleep(0.2)
        raise LaunchError("frontend did not become healthy within 120 s")

    def check_frontends(self) -> None:
        """At start-up a frontend that exits is an error (bad options, port taken): no restarts."""
        for proc in self.frontends:
            if proc is not None and proc.poll() is not None:
                raise LaunchError(f"frontend exited with code {proc.returncode}")

    def supervise_frontends(self, now: float) -> None:
        """Restarts a worker that died, alone and after its backoff; the others keep serving."""
        for i, proc in enumerate(self.frontends):
            if proc is not None and proc.poll() is not None:
                policy = self.frontend_policies[i]
                delay = policy.crashed(now)          # raises CrashLoop past the budget
                loud(f"frontend worker {i} (pid {proc.pid}) exited with code {proc.returncode}; restarting it "
                     f"in {delay:.0f} s ({policy.recent_crashes} of at most {policy.max_crashes} restarts "
                     f"within {policy.window:.0f} s; tritonserver and the other workers are untouched)")
                self.frontends[i] = None
                self.frontend_due[i] = now + delay
                if self.args.frontend_workers > 1:
                    # Its "live" gauges (requests in flight, open streams) would otherwise stay summed in.
                    from prometheus_client import multiprocess
                    multiprocess.mark_process_dead(proc.pid, str((self.state_dir / "metrics").resolve()))
                    # Its decoder streams ended with it: its places in the 429 gate are free again.
                    admission.clear_slot(self.admission_file, i)
            elif proc is None and now >= self.frontend_due[i]:
                self.spawn_frontend(i)
                log(f"frontend worker {i} restarted (pid {self.frontends[i].pid})")

    def stop(self, *_):
        self.stopping = True

    def shutdown(self) -> None:
        # Frontend first: it stops accepting, lets in-flight requests finish (--shutdown-grace),
        # cancels the rest, then exits; Triton after it, so cancelled requests reach the decoder.
        frontend_wait = self.args.shutdown_grace + 15
        for procs, grace in ((self.frontends, frontend_wait), ([self.triton], 30)):
            live = [p for p in procs if p is not None and p.poll() is None]
            for proc in live:
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for proc in live:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.triton is not None:
            self.reap_triton_group()

    # ---- tritonserver and its decoder processes ----------------------------------------------
    def triton_ready(self, now: float) -> None:
        self.triton_state = "running"
        self.triton_ready_wall = time.time()
        self.triton_policy.started(now)
        self.stubs = decoder_processes(self.triton.pid)
        self.decoder_dead_since = None

    def triton_failure(self, now: float) -> Optional[str]:
        """Why the running tritonserver must be restarted, or None."""
        if self.triton.poll() is not None:
            return f"tritonserver exited with code {self.triton.returncode}"
        gone = dead(self.stubs)
        if gone:
            if self.decoder_dead_since is None:
                self.decoder_dead_since = now
                names = ", ".join(f"{m} (pid {pid})" for pid, m in gone.items())
                loud(f"decoder process died: Python backend stub of {names}; Triton still calls the model "
                     f"ready but cannot serve it")
            if now - self.decoder_dead_since >= self.args.decoder_restart_delay:
                return "a decoder process (Python backend stub) died"
            return None
        report = failure_report(self.failure_file, self.triton_ready_wall)
        if report is not None:
            return f"a frontend reported the decoder broken: {report}"
        return None

    def supervise_triton(self, now: float, cmd: list[str]) -> None:
        a = self.args
        if self.triton_state == "running":
            why = self.triton_failure(now)
            if why is None:
                return
            self.triton_crashed(now, why)
        elif self.triton_state == "waiting":
            if now >= self.triton_due:
                self.restarts += 1
                self.failure_file.unlink(missing_ok=True)
                self.start_triton(cmd)
                self.triton_state, self.triton_started = "starting", now
        elif self.triton_state == "starting":
            if self.triton.poll() is not None:
                self.triton_crashed(now, f"tritonserver exited with code {self.triton.returncode} while loading models")
            elif http_ok(f"http://127.0.0.1:{a.triton_http_port}/v2/health/ready", timeout=0.5):
                self.triton_ready(now)
                log(f"tritonserver is back (restart {self.restarts}, {now - self.triton_down_at:.1f} s after it "
                    f"failed)")
            elif now - self.triton_started > a.ready_timeout:
                self.triton_crashed(now, f"Triton models not ready after {a.ready_timeout:.0f} s")

    def triton_crashed(self, now: float, why: str) -> None:
        delay = self.triton_policy.crashed(now)      # raises CrashLoop past the budget
        if self.triton.poll() is None:
            # Alive but useless (a dead stub, a broken executor, stuck loading): SIGKILL, not SIGTERM,
            # since Triton would wait for in-flight requests the dead decoder never finishes.
            self.triton.kill()
            self.triton.wait()
        self.reap_triton_group()
        loud(f"{why}; restarting in {delay:.0f} s ({self.triton_policy.recent_crashes} of at most "
             f"{self.triton_policy.max_crashes} restarts within {self.triton_policy.window:.0f} s)")
        if self.triton_state != "starting":
            self.triton_down_at = now
        self.triton_state, self.triton_due = "waiting", now + delay

    def run(self) -> int:
        if self.args.dry_run:
            return triton_launch.dry_run(self.args)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGTERM, self.stop)
        try:
            cmd = self.prepare()
            log("starting tritonserver (the first start copies the server and loads the model) ...")
            self.start_triton(cmd)
            self.wait_triton_ready(self.args.ready_timeout)
            if self.stopping:
                return 0
            workers = self.args.frontend_workers
            log(f"Triton models ready; starting the frontend ({workers} worker{'s' if workers > 1 else ''})")
            self.start_frontend()
            self.triton_ready(time.monotonic())
            log(f"{SERVING_LINE.decode()} http://{self.args.host}:{self.args.port}/v1")
            while not self.stopping:
                time.sleep(0.2)
                now = time.monotonic()
                self.supervise_frontends(now)
                self.supervise_triton(now, cmd)
            return 0
        except CrashLoop as e:
            loud(f"{e}. Stopping the replica: whatever supervises it should replace it.")
            return EXIT_GAVE_UP
        except (LaunchError, TritonNotFound, TemplateError) as e:
            log(f"error: {e}")
            return 1
        finally:
            self.shutdown()
