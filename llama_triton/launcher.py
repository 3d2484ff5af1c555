"""`llama-triton serve`: renders the model repository, starts tritonserver, then the frontend.

The launcher owns both processes: it waits until Triton's models are ready before starting the
frontend, restarts a crashed tritonserver with backoff (the frontend keeps running and answers
503 meanwhile, and serves again as soon as the models are back), and on SIGINT/SIGTERM drains the
frontend first (it stops accepting, in-flight requests get `--shutdown-grace` seconds, then the
rest are cancelled), then stops Triton.

`--frontend-workers N` runs N frontend processes on the same port (SO_REUSEPORT: the kernel
spreads connections over them). One Python process streams about 4,000 tokens/s per core
(benchmarks/serving_capacity.py), so a GPU node's output needs several. Their Prometheus metrics
are summed across workers through prometheus_client's multiprocess directory.

Triton's ports bind to 127.0.0.1 unless `--expose-triton`, which binds them on all interfaces and
puts Triton's administrative protocols (model loading, shared memory, trace, logging, statistics)
behind a key: $LLAMA_TRITON_ADMIN_KEY, or one generated and printed once at start-up.
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from llama_triton import multigpu
from llama_triton.repository import RepositorySettings, TemplateError, render_repository
from llama_triton.tritonserver import (ADMIN_HEADER, ADMIN_PROTOCOLS, GRPC_ADMIN_METADATA, TritonNotFound,
                                       find_tritonserver, restricted_args, server_command)

DEFAULT_MODEL_DIR = "var/models/llama2-tiny"
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")
ADMIN_KEY_ENV = "LLAMA_TRITON_ADMIN_KEY"
MAX_RESTART_BACKOFF_S = 30.0
# Logged once every frontend worker listens: what a supervising process waits for (served_stack.py).
SERVING_LINE = b"serving the OpenAI API at"


class LaunchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[llama-triton] {msg}", file=sys.stderr, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-triton", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the OpenAI API on a model (CPU reference decoder by default)")
    s.add_argument("--model-dir", default=os.environ.get("LLAMA_TRITON_MODEL_DIR", DEFAULT_MODEL_DIR),
                   help="Hugging Face Llama checkpoint directory (weights, tokenizer, chat template)")
    s.add_argument("--served-model-name", default=None, help="name in /v1/models (default: the directory name)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    s.add_argument("--triton-grpc-port", type=int, default=8001)
    s.add_argument("--triton-http-port", type=int, default=8000)
    s.add_argument("--triton-metrics-port", type=int, default=8002)
    s.add_argument("--expose-triton", action="store_true",
                   help="bind Triton's ports on all interfaces (default: loopback only); Triton's admin "
                        f"protocols then need the header '{ADMIN_HEADER}' with ${ADMIN_KEY_ENV} (or a key "
                        "generated and printed once)")
    s.add_argument("--tritonserver", default=None, help="path of the tritonserver binary")
    s.add_argument("--work-dir", default="var/run", help="where the rendered repository and server copy go")
    s.add_argument("--repository", default=None,
                   help="serve an already rendered model repository (e.g. from `make engine`)")
    s.add_argument("--decoder-io", choices=("cpu", "gpu"), default="cpu",
                   help="tensor list the CPU decoder declares (gpu: refuse what TensorRT-LLM cannot do)")
    s.add_argument("--decoder-kind", choices=("llama", "zero_cost"), default="llama")
    s.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default=os.environ.get("LLAMA_TRITON_DTYPE", "auto"),
                   help="CPU decoder weights and KV cache (auto: bfloat16 on CPUs with AVX512-BF16 or AMX)")
    s.add_argument("--decoder-threads", type=int, default=0,
                   help="CPU decoder torch threads (0: 1 for tiny models, every core for real sizes)")
    s.add_argument("--max-batch-size", type=int, default=64)
    s.add_argument("--max-num-tokens", type=int, default=65536, help="KV cache capacity in tokens")
    s.add_argument("--max-seq-len", type=int, default=4096)
    s.add_argument("--max-queue-size", type=int, default=256)
    s.add_argument("--max-tokens-cap", type=int, default=16384, help="largest max_tokens the API grants")
    s.add_argument("--ready-timeout", type=float, default=300.0)
    s.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM/SIGINT before they are cancelled")
    s.add_argument("--frontend-workers", type=int, default=int(os.environ.get("FRONTEND_WORKERS", "1")),
                   help="frontend processes sharing --port (SO_REUSEPORT); about one per 4,000 streamed tokens/s")
    multigpu.add_arguments(s)   # --world-size, --mpirun (llama_triton/multigpu.py)
    s.add_argument("frontend_args", nargs=argparse.REMAINDER, help="-- then extra frontend options")
    return p


class Supervisor:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.stopping = False
        self.triton: subprocess.Popen | None = None
        self.frontends: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        # The Python backend stub runs the first python3 on PATH: make it ours.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), self.env.get("PATH", "")])
        self.restarts = 0

    def triton_security_args(self) -> list[str]:
        """Loopback: nothing. --expose-triton: admin protocols behind a key (env or generated)."""
        if not self.args.expose_triton:
            return []
        key = os.environ.get(ADMIN_KEY_ENV)
        where = (f"the HTTP header '{ADMIN_HEADER}' (gRPC metadata '{GRPC_ADMIN_METADATA}')")
        if key:
            log(f"--expose-triton: Triton listens on all interfaces; its admin protocols "
                f"({', '.join(ADMIN_PROTOCOLS)}) need {where} set to ${ADMIN_KEY_ENV}")
        else:
            key = secrets.token_urlsafe(24)
            log(f"--expose-triton: Triton listens on all interfaces; its admin protocols "
                f"({', '.join(ADMIN_PROTOCOLS)}) need {where} set to {key} "
                f"(generated for this run; set ${ADMIN_KEY_ENV} to choose it)")
        try:
            return restricted_args(key)
        except ValueError as e:
            raise LaunchError(f"${ADMIN_KEY_ENV}: {e}") from None

    def prepare(self) -> list[str]:
        a = self.args
        if a.frontend_workers < 1:
            raise LaunchError(f"--frontend-workers must be at least 1, got {a.frontend_workers}")
        model_dir = Path(a.model_dir)
        if a.repository is None and not (model_dir / "config.json").is_file():
            raise LaunchError(f"model directory {model_dir} not found (or has no config.json); "
                              "run `make model` or pass --model-dir")
        if a.repository is None:
            from llama_triton.llama.checkpoint import CheckpointError, inspect_checkpoint
            try:
                inspect_checkpoint(str(model_dir))  # a bad file set fails here, naming the file
            except CheckpointError as e:
                raise LaunchError(str(e)) from None
        bind = "0.0.0.0" if a.expose_triton else "127.0.0.1"
        for name, host, port in (("--port", a.host, a.port), ("--triton-grpc-port", bind, a.triton_grpc_port),
                                 ("--triton-http-port", bind, a.triton_http_port),
                                 ("--triton-metrics-port", bind, a.triton_metrics_port)):
            if not port_free(host, port):
                raise LaunchError(f"port {port} ({name}) is already in use on {host}")
        work = Path(a.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        install = find_tritonserver(a.tritonserver, work)
        self.env.update(install.env)
        if a.repository:
            repo = Path(a.repository).resolve()
            if not repo.is_dir():
                raise LaunchError(f"model repository {repo} not found")
        else:
            repo = render_repository(RepositorySettings(
                model_dir=str(model_dir.resolve()), decoder_io=a.decoder_io, decoder_kind=a.decoder_kind, dtype=a.dtype,
                num_threads=a.decoder_threads,
                max_batch_size=a.max_batch_size, max_num_tokens=a.max_num_tokens, max_seq_len=a.max_seq_len,
                max_queue_size=a.max_queue_size), work / "model_repository").resolve()
        log(f"tritonserver from {install.source}: {install.binary}")
        log(f"model repository: {repo}")
        # Multi-GPU (llama_triton/multigpu.py): one tritonserver per rank under mpirun; rank 0 serves.
        try:
            world_size = multigpu.resolve_world_size(getattr(a, "world_size", None), repo if a.repository else None)
        except multigpu.MultiGpuError as e:
            raise LaunchError(str(e)) from None
        if world_size > 1:
            mpirun = getattr(a, "mpirun", "mpirun")
            if shutil.which(mpirun) is None:
                raise LaunchError(f"--world-size {world_size} needs mpirun, and {mpirun!r} was not found "
                                  "(the NGC TensorRT-LLM image has OpenMPI's mpirun on PATH)")
            log(f"{world_size} ranks under {mpirun}: rank 0 serves, the others run the engine's other GPUs")
            return multigpu.mpirun_command(install, repo, world_size, a.triton_grpc_port, a.triton_http_port,
                                           a.triton_metrics_port, bind_address=bind, mpirun=mpirun,
                                           extra_args=self.triton_security_args())
        return server_command(install, repo, grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                              metrics_port=a.triton_metrics_port, bind_address=bind,
                              extra_args=self.triton_security_args())

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

    def start_frontend(self) -> None:
        """Starts the frontend worker(s) and returns once every one of them is listening."""
        a = self.args
        cmd = [sys.executable, "-m", "frontend", "--host", a.host, "--port", str(a.port),
               "--triton-grpc", f"127.0.0.1:{a.triton_grpc_port}",
               "--triton-http", f"127.0.0.1:{a.triton_http_port}",
               "--max-tokens-cap", str(a.max_tokens_cap), "--shutdown-grace", f"{a.shutdown_grace:g}"]
        cmd += ["--model-dir", str(self.tokenizer_dir())]
        if a.served_model_name:
            cmd += ["--served-model-name", a.served_model_name]
        extra = [x for x in a.frontend_args if x != "--"]
        state = Path(a.work_dir) / "frontend"
        shutil.rmtree(state, ignore_errors=True)
        (state / "metrics").mkdir(parents=True)
        env = dict(self.env)
        if a.frontend_workers > 1:
            cmd += ["--reuse-port"]
            # prometheus_client reads this at import: every worker writes its samples there and
            # /metrics, from whichever worker answers, sums them all.
            env["PROMETHEUS_MULTIPROC_DIR"] = str((state / "metrics").resolve())
        ready = []
        for i in range(a.frontend_workers):
            ready.append(state / f"ready-{i}")
            self.frontends.append(subprocess.Popen(cmd + ["--ready-file", str(ready[-1])] + extra, env=env))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.check_frontends()
            if all(f.exists() for f in ready) and http_ok(f"http://{a.host}:{a.port}/health"):
                return
            time.sleep(0.2)
        raise LaunchError("frontend did not become healthy within 120 s")

    def check_frontends(self) -> None:
        for proc in self.frontends:
            if proc.poll() is not None:
                raise LaunchError(f"frontend exited with code {proc.returncode}")

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

    def run(self) -> int:
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
            log(f"{SERVING_LINE.decode()} http://{self.args.host}:{self.args.port}/v1")
            backoff = 1.0
            while not self.stopping:
                time.sleep(0.2)
                self.check_frontends()
                if self.triton.poll() is not None:
                    log(f"tritonserver exited with code {self.triton.returncode}; restarting in {backoff:.0f} s")
                    self.reap_triton_group()
                    deadline = time.monotonic() + backoff
                    while time.monotonic() < deadline and not self.stopping:
                        time.sleep(0.1)
                    if self.stopping:
                        break
                    self.restarts += 1
                    self.start_triton(cmd)
                    try:
                        self.wait_triton_ready(self.args.ready_timeout)
                        if not self.stopping:
                            log(f"tritonserver is back (restart {self.restarts})")
                        backoff = 1.0
                    except LaunchError as e:
                        log(str(e))
                        backoff = min(backoff * 2, MAX_RESTART_BACKOFF_S)
                        if self.triton.poll() is None:   # hung while loading: end it, the loop restarts it
                            self.triton.kill()
                            self.triton.wait()
            return 0
        except (LaunchError, TritonNotFound, TemplateError) as e:
            log(f"error: {e}")
            return 1
        finally:
            self.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return Supervisor(args).run()
    return 2


if __name__ == "__main__":
    sys.exit(main())
