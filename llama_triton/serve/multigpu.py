"""Multi-GPU serving: one `tritonserver` per rank under `mpirun` (TensorRT-LLM's leader mode).

An engine built for TP x PP runs as TP x PP MPI ranks, one GPU each. Every rank starts its own
`tritonserver` on the same model repository; rank 0 is the leader and the only one that serves:
it loads every model and owns the ports. The other ranks load only `tensorrt_llm` and never
return from its initialisation (they serve the leader's executor over MPI), so they get no
HTTP, gRPC or metrics endpoint at all. This is what TensorRT-LLM's
`scripts/launch_triton_server.py` does, written as a pure function the launcher can supervise.

* Each rank's Python backend needs its own shared-memory region prefix (`prefix{rank}_`),
  or the stubs of different servers on one host collide.
* `--allow-run-as-root`: containers usually run as root, which OpenMPI refuses otherwise.
* Across nodes, run the same per-rank command under Slurm (`srun --mpi=pmix`) or an MPI
  operator instead of this single-node mpirun line; see docs/GPU.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional, Union

from llama_triton.serve.tritonserver import TritonInstall, server_command

DECODER_MODEL = "tensorrt_llm"
BUILD_INFO = "build-info.json"


class MultiGpuError(RuntimeError):
    pass


def shm_prefix_arg(rank: int) -> str:
    return f"--backend-config=python,shm-region-prefix-name=prefix{rank}_"


def rank_command(install: Union[TritonInstall, str, Path], model_repository: Union[str, Path], rank: int, *,
                 grpc_port: int, http_port: int, metrics_port: int, bind_address: str = "127.0.0.1",
                 log_verbose: int = 0, decoder_models: tuple[str, ...] = (DECODER_MODEL,),
                 extra_args: Optional[list[str]] = None) -> list[str]:
    """One rank's tritonserver command line (no mpirun around it), e.g. for `srun` on Slurm."""
    inst = install if isinstance(install, TritonInstall) else TritonInstall(binary=Path(install))
    if rank == 0:
        cmd = server_command(inst, Path(model_repository), grpc_port=grpc_port, http_port=http_port,
                             metrics_port=metrics_port, bind_address=bind_address, log_verbose=log_verbose)
    else:
        cmd = [str(inst.binary), f"--model-repository={model_repository}", "--model-control-mode=explicit"]
        cmd += [f"--load-model={m}" for m in decoder_models]
        cmd += ["--allow-http=false", "--allow-grpc=false", "--allow-metrics=false",
                "--disable-auto-complete-config", f"--log-verbose={log_verbose}", "--exit-on-error=true"]
        if inst.backend_dir is not None:
            cmd.append(f"--backend-directory={inst.backend_dir}")
    return cmd + [shm_prefix_arg(rank)] + list(extra_args or [])


def mpirun_command(install: Union[TritonInstall, str, Path], model_repository: Union[str, Path], world_size: int,
                   grpc_port: int, http_port: int, metrics_port: int, *, bind_address: str = "127.0.0.1",
                   log_verbose: int = 0, mpirun: str = "mpirun", oversubscribe: bool = False,
                   decoder_models: tuple[str, ...] = (DECODER_MODEL,), mpirun_args: Optional[list[str]] = None,
                   extra_args: Optional[list[str]] = None) -> list[str]:
    """`mpirun --allow-run-as-root -n 1 <rank 0> : -n 1 <rank 1> : ...` for world_size ranks."""
    if world_size < 2:
        raise MultiGpuError(f"world size {world_size}: a single GPU needs no mpirun (use server_command)")
    cmd = [mpirun, "--allow-run-as-root"]
    if oversubscribe:
        cmd.append("--oversubscribe")
    cmd += list(mpirun_args or [])
    for rank in range(world_size):
        if rank:
            cmd.append(":")
        cmd += ["-n", "1"] + rank_command(install, model_repository, rank, grpc_port=grpc_port,
                                          http_port=http_port, metrics_port=metrics_port,
                                          bind_address=bind_address, log_verbose=log_verbose,
                                          decoder_models=decoder_models, extra_args=extra_args)
    return cmd


def repository_world_size(model_repository: Union[str, Path]) -> Optional[int]:
    """TP x PP recorded by `make engine` in the repository's build-info.json (None if absent)."""
    path = Path(model_repository) / BUILD_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
        return int(info.get("world_size") or int(info["tp"]) * int(info["pp"]))
    except (ValueError, KeyError, TypeError) as e:
        raise MultiGpuError(f"{path}: unreadable world size ({e})") from None


def resolve_world_size(requested: Optional[int], model_repository: Optional[Union[str, Path]]) -> int:
    """--world-size if given (it must match the engine), else the repository's, else 1."""
    recorded = repository_world_size(model_repository) if model_repository else None
    if requested is None:
        return recorded or 1
    if requested < 1:
        raise MultiGpuError(f"--world-size {requested}: must be at least 1")
    if recorded is not None and requested != recorded:
        raise MultiGpuError(f"--world-size {requested} does not match the engine in {model_repository}, "
                            f"built for {recorded} GPUs (TP x PP)")
    if requested > 1 and model_repository is None:
        raise MultiGpuError(f"--world-size {requested} needs --repository: a TensorRT-LLM repository built "
                            "for that many GPUs (`make engine`); the CPU decoder runs as one process")
    return requested


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's multi-GPU options (`llama-triton serve`)."""
    g = parser.add_argument_group("multi-GPU (TensorRT-LLM engines built for TP x PP > 1)")
    g.add_argument("--world-size", type=int, default=None,
                   help="GPUs (MPI ranks) the engine spans, TP x PP; default: the repository's "
                        "build-info.json, else 1. Above 1, tritonserver runs under mpirun, one per rank")
    g.add_argument("--mpirun", default="mpirun", help="the mpirun binary (OpenMPI, as in the NGC image)")


RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID")


def rank_from_env(env: Optional[dict] = None) -> int:
    """This process's MPI rank as the launcher (mpirun, srun --mpi=pmix) announces it."""
    env = os.environ if env is None else env
    for name in RANK_ENV:
        if env.get(name, "").isdigit():
            return int(env[name])
    raise MultiGpuError(f"no MPI rank in the environment ({', '.join(RANK_ENV)}); pass --rank")


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m llama_triton.serve.multigpu rank --repository R`: exec this rank's tritonserver. For
    launchers that start the same command on every rank: Slurm's `srun --mpi=pmix`, or one
    `mpirun --hostfile` across Kubernetes pods."""
    p = argparse.ArgumentParser(prog="python -m llama_triton.serve.multigpu", description=main.__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rank", help="exec the tritonserver command of this MPI rank")
    r.add_argument("--repository", required=True, help="the rendered model repository (from `make engine`)")
    r.add_argument("--rank", type=int, default=None, help="default: from the MPI launcher's environment")
    r.add_argument("--tritonserver", default=None, help="default: PATH, then /opt/tritonserver/bin")
    r.add_argument("--grpc-port", type=int, default=8001)
    r.add_argument("--http-port", type=int, default=8000)
    r.add_argument("--metrics-port", type=int, default=8002)
    r.add_argument("--bind-address", default="0.0.0.0", help="rank 0's endpoints (the frontend may run elsewhere)")
    r.add_argument("--print", action="store_true", help="print the command instead of running it")
    a = p.parse_args(argv)
    from llama_triton.serve.tritonserver import find_tritonserver

    try:
        rank = a.rank if a.rank is not None else rank_from_env()
        install = find_tritonserver(a.tritonserver, Path("var/run"))
    except (MultiGpuError, RuntimeError) as e:
        print(f"multigpu: {e}", file=sys.stderr)
        return 2
    cmd = rank_command(install, Path(a.repository).resolve(), rank, grpc_port=a.grpc_port, http_port=a.http_port,
                       metrics_port=a.metrics_port, bind_address=a.bind_address)
    if a.print:
        print(shlex.join(cmd))
        return 0
    os.environ.update(install.env)
    os.execv(cmd[0], cmd)
    return 1


if __name__ == "__main__":
    sys.exit(main())
