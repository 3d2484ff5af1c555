"""`llama-triton serve`: renders the model repository, starts tritonserver, then the frontend.

This module is the command line (`llama-triton serve`, `llama-triton cluster`). The launcher owns
every process of the replica: `Supervisor` (supervisor.py) starts tritonserver with the command
triton_launch.py builds, then the frontend, and restarts each of them when it dies, within a crash
budget (docs/OPERATIONS.md). `cluster` runs several such replicas behind a router (cluster.py).

`--frontend-workers N` runs N frontend processes on the same port (SO_REUSEPORT: the kernel
spreads connections over them). One Python process streams about 4,000 tokens/s per core
(benchmarks/serving_capacity.py), so a GPU node's output needs several. Their Prometheus metrics
are summed across workers through prometheus_client's multiprocess directory.

Triton's ports bind to 127.0.0.1 unless `--expose-triton` (triton_launch.py, docs/OPERATIONS.md,
"Secrets").
"""
from __future__ import annotations

import argparse
import os
import sys

from llama_triton import defaults
from llama_triton.defaults import MAX_BATCH_SIZE, MAX_QUEUE_SIZE
from llama_triton.serve import cluster, llmapi_launch, multigpu
from llama_triton.serve.common import DEFAULT_MODEL_DIR
from llama_triton.serve.supervisor import Supervisor


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already words it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "default" in text or action.default in (None, argparse.SUPPRESS)
                or isinstance(action, argparse._StoreTrueAction)):
            return text
        return f"{text} (default: %(default)s)".lstrip()


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
    cluster.add_parser(sub)     # `llama-triton cluster`: replicas behind a router (cluster.py)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return Supervisor(args).run()
    if args.command == "cluster":
        return cluster.Cluster(args).run()
    return 2


if __name__ == "__main__":
    sys.exit(main())
