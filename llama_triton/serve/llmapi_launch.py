"""Serving the LLM-API decoder (`llama-triton serve --decoder-io llmapi`): its options, its
repository settings and its multi-GPU launch command.

No engine is built: the repository's `tensorrt_llm/1/model.yaml` names the checkpoint directory
and TensorRT-LLM's LLM loads it (PyTorch backend). `--llm-api cpu` (the default) runs the CPU
engine through the LLM-shaped stand-in; `--llm-api tensorrt_llm` runs `tensorrt_llm.LLM` on the
GPUs, TP x PP of them.

Multi-GPU is the LLM API's own MPI launch, as upstream's LLM-API model is started
(triton_backend/scripts/launch_triton_server.py `--trtllm_llmapi_launch` and docs/llmapi.md in
tensorrtllm_backend): every rank runs `trtllm-llmapi-launch tritonserver ...`. That script runs
the command on rank 0 only, with the MPI variables cleared, and an MPI worker for the LLM on every
other rank (tensorrt_llm/llmapi/trtllm-llmapi-launch@020c89e: `mgmn_leader_node` /
`mgmn_worker_node`); the LLM in rank 0's tritonserver then reaches them through
TLLM_SPAWN_PROXY_PROCESS. So there is one tritonserver, not one per rank, unlike the engine path
(multigpu.py).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path
from typing import Optional

from llama_triton.defaults import KV_CACHE_FREE_GPU_MEM_FRACTION
from llama_triton.llama.known_models import HF_IDS, known_model_key
from llama_triton.serve.repository import LLM_APIS, RepositorySettings
from llama_triton.serve.tritonserver import NGC_BIN

LAUNCH = "trtllm-llmapi-launch"


class LlmApiLaunchError(ValueError):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The LLM-API decoder's options of `llama-triton serve`."""
    g = parser.add_argument_group("LLM-API decoder (--decoder-io llmapi: TensorRT-LLM's LLM, PyTorch backend)")
    g.add_argument("--llm-api", choices=LLM_APIS, default="cpu",
                   help="what runs behind it: cpu (the CPU engine through an LLM-shaped stand-in) or "
                        "tensorrt_llm (tensorrt_llm.LLM on GPUs, inside the NGC TensorRT-LLM image)")
    g.add_argument("--tp", type=int, default=1, help="tensor parallelism (model.yaml tensor_parallel_size)")
    g.add_argument("--pp", type=int, default=1, help="pipeline parallelism (model.yaml pipeline_parallel_size)")
    g.add_argument("--kv-cache-fraction", type=float, default=KV_CACHE_FREE_GPU_MEM_FRACTION,
                   help="GPU memory left after weights and activations that the KV cache takes "
                        "(kv_cache_config.free_gpu_memory_fraction)")
    g.add_argument("--llm-max-num-tokens", type=int, default=0,
                   help="tokens one engine iteration runs (LLM max_num_tokens; 0: 8192 on GPUs, the "
                        "prefill chunk on CPU)")
    g.add_argument("--dry-run", action="store_true",
                   help="render the repository, print model.yaml and the launch command, start nothing "
                        "(default: start the replica)")


def yaml_model(model_dir: str, *, dry_run: bool) -> str:
    """model.yaml's `model`: the checkpoint directory; in a dry run a known name may stand for its
    Hugging Face id (an LLM loads either)."""
    path = Path(model_dir)
    if (path / "config.json").is_file():
        return str(path.resolve())
    key = known_model_key(model_dir)
    if dry_run and key in HF_IDS:
        return HF_IDS[key]
    raise LlmApiLaunchError(f"model directory {model_dir} not found (or has no config.json)"
                            + ("; a dry run also takes llama-2-7b or llama-2-70b" if dry_run else ""))


def repository_settings(a: argparse.Namespace, *, dry_run: bool = False) -> RepositorySettings:
    if a.tp < 1 or a.pp < 1:
        raise LlmApiLaunchError(f"--tp {a.tp} --pp {a.pp}: both must be at least 1")
    if a.llm_api == "cpu" and a.tp * a.pp != 1:
        raise LlmApiLaunchError(f"--tp {a.tp} --pp {a.pp} needs --llm-api tensorrt_llm: the CPU stand-in runs "
                                "one engine process")
    if not 0 < a.kv_cache_fraction <= 1:
        raise LlmApiLaunchError(f"--kv-cache-fraction {a.kv_cache_fraction}: must be in (0, 1]")
    model = yaml_model(a.model_dir, dry_run=dry_run)
    return RepositorySettings(
        model_dir=model, decoder="llmapi", llm_api=a.llm_api, dtype=a.dtype, num_threads=a.decoder_threads,
        tensor_parallel_size=a.tp, pipeline_parallel_size=a.pp, kv_cache_free_gpu_mem_fraction=a.kv_cache_fraction,
        llmapi_max_num_tokens=a.llm_max_num_tokens, max_batch_size=a.max_batch_size,
        max_num_tokens=a.max_num_tokens, max_seq_len=a.max_seq_len, max_queue_size=a.max_queue_size)


def launch_command(server_cmd: list[str], world_size: int, *, mpirun: str = "mpirun") -> list[str]:
    """One GPU: the tritonserver command as is. More: `mpirun --allow-run-as-root -n N
    trtllm-llmapi-launch <tritonserver command>`, one process per GPU, rank 0 the server."""
    if world_size < 1:
        raise LlmApiLaunchError(f"world size {world_size}: must be at least 1")
    if world_size == 1:
        return list(server_cmd)
    return [mpirun, "--allow-run-as-root", "-n", str(world_size), LAUNCH] + list(server_cmd)


def dry_run_binary(explicit: Optional[str]) -> str:
    """The tritonserver a dry run names, without preparing anything: the NGC image's by default."""
    return explicit or shutil.which("tritonserver") or str(NGC_BIN)


def describe(model_yaml: Path, command: list[str], world_size: int) -> str:
    return "\n".join([
        f"# {model_yaml}",
        model_yaml.read_text().rstrip(),
        "",
        f"# launch ({world_size} GPU{'s' if world_size > 1 else ''}):",
        shlex.join(command),
    ])
