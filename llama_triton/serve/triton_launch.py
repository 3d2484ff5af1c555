"""The tritonserver command of one replica (`llama-triton serve`): the checks before anything
starts, the rendered repository, Triton's security and trace options, and the LLM-API decoder's
dry run. The supervisor (supervisor.py) starts and restarts what `command` returns.

Triton's ports bind to 127.0.0.1 unless `--expose-triton`, which binds them on all interfaces and
keeps Triton's administrative protocols (model loading, shared memory, trace, logging, statistics)
off the network: tritonserver 2.51 takes the key that unlocks them only on its command line
(`--grpc-restricted-protocol`, `--http-restricted-api`), so the launcher gives it a key generated for
each start and never shown anywhere else (docs/OPERATIONS.md, "Secrets").
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

from llama_triton.llama.checkpoint import CheckpointError, inspect_checkpoint
from llama_triton.serve import llmapi_launch, multigpu
from llama_triton.serve.common import LaunchError, log, port_free
from llama_triton.serve.repository import RepositorySettings, render_repository
from llama_triton.serve.tritonserver import (ADMIN_HEADER, ADMIN_PROTOCOLS, GRPC_ADMIN_METADATA, TritonInstall,
                                             find_tritonserver, restricted_args, server_command)

ADMIN_KEY_ENV = "LLAMA_TRITON_ADMIN_KEY"      # no longer read (see security_args)
ZERO_COST_WARNING = ("WARNING: --decoder-kind zero_cost: THE DECODER RUNS NO MODEL. Every answer is made-up "
                     "tokens; this stack only measures the serving path (frontend + Triton).")


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


def security_args(a: argparse.Namespace) -> list[str]:
    """Loopback: nothing. --expose-triton: admin protocols behind a key no one is given.

    tritonserver reads that key only from its command line, where any local user can read it,
    so no operator's key goes there: a random one, new for each start, never logged. Over the
    network the admin protocols are therefore closed (docs/OPERATIONS.md, "Secrets")."""
    if not a.expose_triton:
        return []
    if os.environ.get(ADMIN_KEY_ENV):
        log(f"--expose-triton: ${ADMIN_KEY_ENV} is not used: tritonserver would take it only on its command "
            f"line; its admin protocols stay closed to the network")
    log(f"--expose-triton: Triton listens on all interfaces; its admin protocols "
        f"({', '.join(ADMIN_PROTOCOLS)}) are closed to the network (they answer only a key generated for "
        f"this start, sent as '{ADMIN_HEADER}' / '{GRPC_ADMIN_METADATA}', and never shown)")
    return restricted_args(secrets.token_urlsafe(24))


def command(a: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """Checks the options, the checkpoint and the ports, renders the repository (unless
    --repository), and returns tritonserver's command line and the environment its install needs."""
    model_dir = Path(a.model_dir)
    if a.repository is None and not (model_dir / "config.json").is_file():
        raise LaunchError(f"model directory {model_dir} not found (or has no config.json); "
                          "run `make model` or pass --model-dir")
    if a.repository is None and not (a.decoder_io == "llmapi" and a.llm_api == "tensorrt_llm"):
        # (TensorRT-LLM's LLM loads its checkpoints itself, pre-quantized ones included.)
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
    if a.decoder_io == "llmapi":
        return _llmapi_command(a, install, work, bind), dict(install.env)
    return _engine_command(a, install, work, bind), dict(install.env)


def _engine_command(a: argparse.Namespace, install: TritonInstall, work: Path, bind: str) -> list[str]:
    """The CPU decoder or an engine repository (rendered from --model-dir unless --repository)."""
    if a.repository:
        repo = Path(a.repository).resolve()
        if not repo.is_dir():
            raise LaunchError(f"model repository {repo} not found")
    else:
        repo = render_repository(RepositorySettings(
            model_dir=str(Path(a.model_dir).resolve()), decoder_io=a.decoder_io, decoder_kind=a.decoder_kind, dtype=a.dtype,
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
                                       extra_args=security_args(a)
                                       + triton_trace_args(a.otlp_traces_endpoint))
    return server_command(install, repo, grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                          metrics_port=a.triton_metrics_port, bind_address=bind,
                          extra_args=security_args(a) + triton_trace_args(a.otlp_traces_endpoint))


def _llmapi_command(a: argparse.Namespace, install: TritonInstall, work: Path, bind: str) -> list[str]:
    """The LLM-API decoder: render its repository (no engine), one tritonserver, under
    `mpirun ... trtllm-llmapi-launch` for TP x PP > 1 (llama_triton/serve/llmapi_launch.py)."""
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
                         extra_args=security_args(a))
    world = a.tp * a.pp
    if world > 1 and shutil.which(a.mpirun) is None:
        raise LaunchError(f"--tp {a.tp} --pp {a.pp} needs mpirun, and {a.mpirun!r} was not found "
                          "(the NGC TensorRT-LLM image has OpenMPI's mpirun on PATH)")
    return llmapi_launch.launch_command(cmd, world, mpirun=a.mpirun)


def dry_run(a: argparse.Namespace) -> int:
    """`--dry-run` (LLM-API decoder): render, print model.yaml and the launch command."""
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
    cmd = server_command(TritonInstall(binary=Path(llmapi_launch.dry_run_binary(a.tritonserver))), repo,
                         grpc_port=a.triton_grpc_port, http_port=a.triton_http_port,
                         metrics_port=a.triton_metrics_port, bind_address=bind)
    world = a.tp * a.pp
    print(llmapi_launch.describe(repo / "tensorrt_llm" / "1" / "model.yaml",
                                 llmapi_launch.launch_command(cmd, world, mpirun=a.mpirun), world))
    return 0
