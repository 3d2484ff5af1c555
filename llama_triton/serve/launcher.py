"""`llama-triton serve`: renders the model repository, starts tritonserver, then the frontend.

The launcher owns every process of the replica (llama_triton/serve/supervisor.py, docs/OPERATIONS.md):
it waits until Triton's models are ready before starting the frontend, then

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

`--frontend-workers N` runs N frontend processes on the same port (SO_REUSEPORT: the kernel
spreads connections over them). One Python process streams about 4,000 tokens/s per core
(benchmarks/serving_capacity.py), so a GPU node's output needs several. Their Prometheus metrics
are summed across workers through prometheus_client's multiprocess directory.

Triton's ports bind to 127.0.0.1 unless `--expose-triton`, which binds them on all interfaces and
keeps Triton's administrative protocols (model loading, shared memory, trace, logging, statistics)
off the network: tritonserver 2.51 takes the key that unlocks them only on its command line
(`--grpc-restricted-protocol`, `--http-restricted-api`), so the launcher gives it a key generated for
each start and never shown anywhere else (docs/OPERATIONS.md, "Secrets").

The frontend workers of a replica share $LLAMA_TRITON_HASH_SECRET (generated here unless set): what
they salt the prefix cache and hash `user` with (frontend/tenants.py), so all workers salt alike.
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
from typing import Optional

from frontend import admission
from llama_triton import defaults
from llama_triton.defaults import MAX_BATCH_SIZE, MAX_QUEUE_SIZE
from llama_triton.serve import llmapi_launch, multigpu
from llama_triton.serve.supervisor import CrashLoop, RestartPolicy, dead, decoder_processes, failure_report
from llama_triton.serve.repository import RepositorySettings, TemplateError, render_repository
from llama_triton.serve.tritonserver import (ADMIN_HEADER, ADMIN_PROTOCOLS, GRPC_ADMIN_METADATA, TritonNotFound,
                                       find_tritonserver, restricted_args, server_command)

DEFAULT_MODEL_DIR = "var/models/llama2-tiny"
MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")
ADMIN_KEY_ENV = "LLAMA_TRITON_ADMIN_KEY"      # no longer read (see triton_security_args)
HASH_SECRET_ENV = "LLAMA_TRITON_HASH_SECRET"   # = frontend.tenants.HASH_SECRET_ENV
EXIT_GAVE_UP = 3            # exit status when a process used up its crash budget
# Logged once every frontend worker listens: what a supervising process waits for (served_stack.py).
SERVING_LINE = b"serving the OpenAI API at"


class LaunchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[llama-triton] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> None:
    """A failure of the replica's own processes: one line an operator's log search finds."""
    print(f"[llama-triton] ERROR {msg}", file=sys.stderr, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


ZERO_COST_WARNING = ("WARNING: --decoder-kind zero_cost: THE DECODER RUNS NO MODEL. Every answer is made-up "
                     "tokens; this stack only measures the serving path (frontend + Triton).")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already words it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, argparse.SUPPRESS)
                or isinstance(action, argparse._StoreTrueAction)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


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
    s = sub.add_parser("serve", help="serve the OpenAI API on a model (CPU reference decoder by default)",
                       formatter_class=DefaultsHelpFormatter)
    s.add_argument("--model-dir", default=os.environ.get("LLAMA_TRITON_MODEL_DIR", DEFAULT_MODEL_DIR),
                   help="Hugging Face Llama checkpoint directory (weights, tokenizer, chat template)")
    s.add_argument("--served-model-name", default=None, help="name in /v1/models (default: the directory name)")
    s.add_argument("--host", default=defaults.HOST, help="the frontend's address")
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", defaults.PORT)), help="the frontend's port ($PORT)")
    s.add_argument("--triton-grpc-port", type=int, default=defaults.TRITON_GRPC_PORT, help="Triton's gRPC port (the frontend's decoder link)")
    s.add_argument("--triton-http-port", type=int, default=defaults.TRITON_HTTP_PORT, help="Triton's HTTP port (health, model config)")
    s.add_argument("--triton-metrics-port", type=int, default=defaults.TRITON_METRICS_PORT, help="Triton's Prometheus metrics port")
    s.add_argument("--expose-triton", action="store_true",
                   help="bind Triton's ports on all interfaces (default: loopback only); Triton's admin "
                        "protocols then answer only a key generated for each start and never shown")
    s.add_argument("--tritonserver", default=None,
                   help="path of the tritonserver binary (default: PATH, then the NGC image's, then the pytriton wheel's)")
    s.add_argument("--work-dir", default="var/run", help="where the rendered repository and server copy go")
    s.add_argument("--repository", default=None,
                   help="serve an already rendered model repository (e.g. from `make engine`; "
                        "default: render one from --model-dir into --work-dir)")
    s.add_argument("--decoder-io", choices=("cpu", "gpu", "llmapi"), default="cpu",
                   help="the decoder behind the `tensorrt_llm` model: cpu (the CPU decoder), gpu (it declares "
                        "and answers as TensorRT-LLM's C++ backend), llmapi (TensorRT-LLM's LLM API, PyTorch "
                        "backend, with the CPU decoder's tensors; --llm-api picks what runs behind it)")
    s.add_argument("--decoder-kind", choices=("llama", "zero_cost"), default="llama",
                   help="the CPU decoder: llama runs the model; zero_cost runs NO model and streams made-up tokens, "
                        "to measure the serving path alone (benchmarks)")
    s.add_argument("--dtype", choices=("auto", "bfloat16", "float32"), default=os.environ.get("LLAMA_TRITON_DTYPE", defaults.DTYPE),
                   help="CPU decoder weights and KV cache (auto: bfloat16 on CPUs with AVX512-BF16 or AMX)")
    s.add_argument("--decoder-threads", type=int, default=0,
                   help="CPU decoder torch threads (0: 1 for tiny models, every core for real sizes)")
    s.add_argument("--decoder-matmul", choices=("auto", "plain", "swapped", "prepacked"), default="auto",
                   help="CPU decoder linear-layer kernels (llama_triton/llama/linear.py; prepacked: oneDNN's "
                        "blocked weights, faster batches, slower single sequences)")
    s.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE, help="sequences the decoder runs at once")
    s.add_argument("--max-num-tokens", type=int, default=defaults.MAX_NUM_TOKENS, help="KV cache capacity in tokens")
    s.add_argument("--max-seq-len", type=int, default=defaults.MAX_SEQ_LEN, help="prompt + output tokens per sequence")
    s.add_argument("--max-queue-size", type=int, default=MAX_QUEUE_SIZE,
                   help="requests waiting for a batch slot before the decoder answers queue full (HTTP 429)")
    s.add_argument("--max-tokens-cap", type=int, default=defaults.MAX_TOKENS_CAP, help="largest max_tokens the API grants")
    s.add_argument("--ready-timeout", type=float, default=300.0, help="seconds Triton's models get to load")
    s.add_argument("--shutdown-grace", type=float, default=defaults.SHUTDOWN_GRACE_S,
                   help="seconds in-flight requests get to finish on SIGTERM/SIGINT before they are cancelled")
    s.add_argument("--frontend-workers", type=int, default=int(os.environ.get("FRONTEND_WORKERS", "1")),
                   help="frontend processes sharing --port (SO_REUSEPORT); about one per 4,000 streamed tokens/s")
    s.add_argument("--max-restarts", type=int, default=5,
                   help="a process (tritonserver, a frontend worker) that dies more often than this within "
                        "--restart-window seconds is not restarted: the launcher stops and exits with status 3")
    s.add_argument("--restart-window", type=float, default=300.0,
                   help="seconds over which --max-restarts is counted")
    s.add_argument("--decoder-restart-delay", type=float, default=0.0,
                   help="seconds between seeing a decoder (Python backend stub) process die and restarting "
                        "tritonserver; the frontend ends the open requests on its own meanwhile")
    s.add_argument("--otlp-traces-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                   help="send OpenTelemetry traces over OTLP/HTTP to this URL (e.g. http://collector:4318/v1/traces): "
                        "the frontend's spans, and Triton's own (its OpenTelemetry trace mode) for the same requests, "
                        "in one trace (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else off)")
    multigpu.add_arguments(s)   # --world-size, --mpirun (llama_triton/serve/multigpu.py)
    llmapi_launch.add_arguments(s)   # --llm-api, --tp, --pp, ... (llama_triton/serve/llmapi_launch.py)
    s.add_argument("frontend_args", nargs=argparse.REMAINDER, help="-- then extra frontend options")
    from llama_triton.serve import cluster   # `llama-triton cluster`: replicas behind a router (cluster.py)
    cluster.add_parser(sub)
    return p


def triton_trace_args(endpoint: Optional[str]) -> list[str]:
    """Triton's OpenTelemetry trace mode, exporting to the frontend's endpoint. `rate=0`: Triton
    traces only the requests that arrive with a trace context (the frontend's, when it traces),
    which it samples whatever the rate (docs/user_guide/trace.md "OpenTelemetry Context
    Propagation"; src/tracer.cc:295-320 at v2.51.0)."""
    if not endpoint:
        return []
    return ["--trace-config", "mode=opentelemetry", "--trace-config", "rate=0", "--trace-config", "count=-1",
            "--trace-config", "level=TIMESTAMPS", "--trace-config", f"opentelemetry,url={endpoint}",
            "--trace-config", "opentelemetry,resource=service.name=llama-triton-tritonserver"]


class Supervisor:
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
        self.frontend_restarts = 0
        self.frontend_policies: list[RestartPolicy] = []
        self.frontend_due: list[float] = []
        self.triton_state = "running"             # running | waiting (backoff) | starting
        self.triton_due = self.triton_started = self.triton_down_at = 0.0
        self.triton_ready_wall = 0.0
        self.stubs: dict[int, str] = {}
        self.decoder_dead_since: Optional[float] = None
        self.triton_policy = RestartPolicy("tritonserver", args.max_restarts, args.restart_window)

    def triton_security_args(self) -> list[str]:
        """Loopback: nothing. --expose-triton: admin protocols behind a key no one is given.

        tritonserver reads that key only from its command line, where any local user can read it,
        so no operator's key goes there: a random one, new for each start, never logged. Over the
        network the admin protocols are therefore closed (docs/OPERATIONS.md, "Secrets")."""
        if not self.args.expose_triton:
            return []
        if os.environ.get(ADMIN_KEY_ENV):
            log(f"--expose-triton: ${ADMIN_KEY_ENV} is not used: tritonserver would take it only on its command "
                f"line; its admin protocols stay closed to the network")
        log(f"--expose-triton: Triton listens on all interfaces; its admin protocols "
            f"({', '.join(ADMIN_PROTOCOLS)}) are closed to the network (they answer only a key generated for "
            f"this start, sent as '{ADMIN_HEADER}' / '{GRPC_ADMIN_METADATA}', and never shown)")
        return restricted_args(secrets.token_urlsafe(24))

    def prepare(self) -> list[str]:
        a = self.args
        if a.frontend_workers < 1:
            raise LaunchError(f"--frontend-workers must be at least 1, got {a.frontend_workers}")
        model_dir = Path(a.model_dir)
        if a.repository is None and not (model_dir / "config.json").is_file():
            raise LaunchError(f"model directory {model_dir} not found (or has no config.json); "
                              "run `make model` or pass --model-dir")
        if a.repository is None and not (a.decoder_io == "llmapi" and a.llm_api == "tensorrt_llm"):
            # (TensorRT-LLM's LLM loads its checkpoints itself, pre-quantized ones included.)
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
        if a.decoder_io == "llmapi":
            return self.prepare_llmapi(install, work, bind)
        if a.repository:
            repo = Path(a.repository).resolve()
            if not repo.is_dir():
                raise LaunchError(f"model repository {repo} not found")
        else:
            repo = render_repository(RepositorySettings(
                model_dir=str(model_dir.resolve()), decoder_io=a.decoder_io, decoder_kind=a.decoder_kind, dtype=a.dtype,
                num_threads=a.decoder_threads, matmul=a.decoder_matmul,
                max_batch_size=a.max_batch_size, max_num_tokens=a.max_num_tokens, max_seq_len=a.max_seq_len,
                max_queue_size=a.max_queue_size), work / "model_repository").resolve()
        log(f"tritonserver from {install.source}: {install.binary}")
        log(f"model repository: {repo}")
        if a.decoder_kind == "zero_cost" and not a.repository:
            log(ZERO_COST_WARNING)
        # Multi-GPU (llama_triton/serve/multigpu.py): one tritonserver per rank under mpirun; rank 0 serves.
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
                                           extra_args=self.triton_security_args()
                                           + triton_trace_args(a.otlp_traces_endpoint))
        return server_command(install, repo, grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                              metrics_port=a.triton_metrics_port, bind_address=bind,
                              extra_args=self.triton_security_args() + triton_trace_args(a.otlp_traces_endpoint))

    def prepare_llmapi(self, install, work: Path, bind: str) -> list[str]:
        """The LLM-API decoder: render its repository (no engine), one tritonserver, under
        `mpirun ... trtllm-llmapi-launch` for TP x PP > 1 (llama_triton/serve/llmapi_launch.py)."""
        a = self.args
        if a.repository:
            repo = Path(a.repository).resolve()
            if not (repo / "tensorrt_llm" / "1" / "model.yaml").is_file():
                raise LaunchError(f"{repo} has no tensorrt_llm/1/model.yaml: not an LLM-API repository")
        else:
            try:
                settings = llmapi_launch.repository_settings(a)
            except llmapi_launch.LlmApiLaunchError as e:
                raise LaunchError(str(e)) from None
            repo = render_repository(settings, work / "model_repository").resolve()
        log(f"tritonserver from {install.source}: {install.binary}")
        log(f"model repository: {repo} (LLM-API decoder, {a.llm_api})")
        cmd = server_command(install, repo, grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                             metrics_port=a.triton_metrics_port, bind_address=bind,
                             extra_args=self.triton_security_args())
        world = a.tp * a.pp
        if world > 1 and shutil.which(a.mpirun) is None:
            raise LaunchError(f"--tp {a.tp} --pp {a.pp} needs mpirun, and {a.mpirun!r} was not found "
                              "(the NGC TensorRT-LLM image has OpenMPI's mpirun on PATH)")
        return llmapi_launch.launch_command(cmd, world, mpirun=a.mpirun)

    def dry_run(self) -> int:
        """`--dry-run` (LLM-API decoder): render, print model.yaml and the launch command."""
        a = self.args
        if a.decoder_io != "llmapi":
            log("error: --dry-run is for --decoder-io llmapi")
            return 2
        try:
            settings = llmapi_launch.repository_settings(a, dry_run=True)
        except llmapi_launch.LlmApiLaunchError as e:
            log(f"error: {e}")
            return 1
        repo = render_repository(settings, Path(a.work_dir) / "model_repository").resolve()
        bind = "0.0.0.0" if a.expose_triton else "127.0.0.1"
        from llama_triton.serve.tritonserver import TritonInstall
        cmd = server_command(TritonInstall(binary=Path(llmapi_launch.dry_run_binary(a.tritonserver))), repo,
                             grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                             metrics_port=a.triton_metrics_port, bind_address=bind)
        world = a.tp * a.pp
        print(llmapi_launch.describe(repo / "tensorrt_llm" / "1" / "model.yaml",
                                     llmapi_launch.launch_command(cmd, world, mpirun=a.mpirun), world))
        return 0

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
                self.frontend_restarts += 1
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
            return self.dry_run()
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return Supervisor(args).run()
    if args.command == "cluster":
        from llama_triton.serve.cluster import Cluster
        return Cluster(args).run()
    return 2


if __name__ == "__main__":
    sys.exit(main())
