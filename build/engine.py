#!/usr/bin/env python3
"""HF Llama checkpoint -> TensorRT-LLM engine -> filled Triton model repository (`make engine`).

    python build/engine.py --model path/to/Llama-2-70b-chat-hf --tp 4 --quant fp8 --out var/engines/70b-fp8
    python build/engine.py --model llama-2-70b --tp 8 --dry-run        # print commands and configs only

Runs inside the NGC image that ships the targeted TensorRT-LLM release (see docs/GPU.md):
checkpoint conversion or ModelOpt quantisation, `trtllm-build`, the xgrammar tokenizer info for
guided decoding, then the model repository (decoder="gpu") with build-info.json. Finished stages
are skipped on a re-run with the same command (--force redoes them). `--dry-run` needs neither a
GPU nor TensorRT-LLM and prints every command and every filled config.

    python build/engine.py tokenizer-info --model-dir DIR --out FILE   # stage 3 on its own
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))   # runs with the NGC image's python3, without installing the package

from llama_triton import defaults  # noqa: E402
from llama_triton.gpu.build import (DEFAULT_EXAMPLES_DIR, NGC_IMAGE, BuildError, BuildPlan,  # noqa: E402
                                       EngineSpec, format_command, plan_build, write_repository,
                                       xgrammar_tokenizer_info)
from llama_triton.gpu.plan import GPUS, KV_DTYPE_BYTES, QUANTS, PlanError, load_model_shape  # noqa: E402
from llama_triton.trtllm.tensor_contract import TRTLLM_RELEASE  # noqa: E402

STATE_FILE = ".build-state.json"


def log(msg: str) -> None:
    print(f"[engine] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="Hugging Face checkpoint directory (a known name such as llama-2-70b for --dry-run)")
    p.add_argument("--out", default=None, help="output folder (default: var/engines/<model>-tp<T>pp<P>-<quant>)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--quant", default="none", choices=QUANTS)
    p.add_argument("--kv-dtype", default=None, choices=sorted(KV_DTYPE_BYTES),
                   help="KV cache dtype (default: fp8 with fp8 weights, int8 with int4_awq, else the weights')")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16"), help="default: the checkpoint's")
    p.add_argument("--gpu", default=None, choices=sorted(GPUS),
                   help="check the layout against this GPU's memory first (the `make plan` figures)")
    p.add_argument("--max-batch-size", type=int, default=defaults.MAX_BATCH_SIZE)
    p.add_argument("--max-input-len", type=int, default=None, help="default: --max-seq-len")
    p.add_argument("--max-seq-len", type=int, default=None, help="default: the model's max_position_embeddings")
    p.add_argument("--max-num-tokens", type=int, default=defaults.TRTLLM_MAX_NUM_TOKENS, help="tokens per engine step")
    p.add_argument("--workers", type=int, default=None,
                   help="trtllm-build ranks built in parallel, one GPU each (default: TP x PP, at most the GPUs here)")
    p.add_argument("--convert-workers", type=int, default=1,
                   help="convert_checkpoint.py ranks converted in parallel (each holds weights in host memory)")
    p.add_argument("--trtllm-examples", default=os.environ.get("TRTLLM_EXAMPLES", DEFAULT_EXAMPLES_DIR),
                   help=f"TensorRT-LLM's examples/ folder for {TRTLLM_RELEASE} (env TRTLLM_EXAMPLES; "
                        f"default {DEFAULT_EXAMPLES_DIR})")
    p.add_argument("--trtllm-python", default="python3", help="the interpreter that imports tensorrt_llm")
    p.add_argument("--trtllm-build", default="trtllm-build")
    p.add_argument("--calib-dataset", default=None,
                   help="calibration data for quantisation: HF dataset name or local folder (default: cnn_dailymail)")
    p.add_argument("--calib-size", type=int, default=None, help="default: 512 for fp8, 32 for int4_awq")
    p.add_argument("--kv-cache-max-tokens", type=int, default=None,
                   help="cap the KV cache at this many tokens (max_tokens_in_paged_kv_cache; "
                        "default: unset, kv_cache_free_gpu_mem_fraction decides)")
    p.add_argument("--kv-cache-fraction", type=float, default=defaults.KV_CACHE_FREE_GPU_MEM_FRACTION, help="kv_cache_free_gpu_mem_fraction")
    p.add_argument("--deploy-dir", default=None,
                   help="where --out is mounted when serving, if not where it is now (paths in the configs)")
    p.add_argument("--deploy-model-dir", default=None,
                   help="where the HF checkpoint is mounted when serving (the tokenizer_dir in the configs)")
    p.add_argument("--dry-run", action="store_true", help="print every command and filled config; run nothing")
    p.add_argument("--force", action="store_true", help="rerun stages that finished before")
    p.add_argument("--allow-release-mismatch", action="store_true",
                   help=f"build with a TensorRT-LLM other than {TRTLLM_RELEASE} (its backend contract may differ: "
                        "llama_triton/trtllm/backend_contract.py)")
    return p.parse_args(argv)


def spec_from_args(a: argparse.Namespace, shape_name: str) -> EngineSpec:
    out = a.out or str(REPO_ROOT / "var" / "engines" / f"{shape_name}-tp{a.tp}pp{a.pp}-{a.quant}")
    return EngineSpec(
        model=a.model, out_dir=out, tp=a.tp, pp=a.pp, quant=a.quant, kv_dtype=a.kv_dtype, dtype=a.dtype,
        max_batch_size=a.max_batch_size, max_input_len=a.max_input_len, max_seq_len=a.max_seq_len,
        max_num_tokens=a.max_num_tokens, workers=a.workers, convert_workers=a.convert_workers,
        examples_dir=a.trtllm_examples, python=a.trtllm_python, trtllm_build=a.trtllm_build,
        tokenizer_python=sys.executable if not a.dry_run else "python3",
        engine_script=str(Path(__file__).resolve()) if not a.dry_run else "build/engine.py",
        calib_dataset=a.calib_dataset, calib_size=a.calib_size, kv_cache_max_tokens=a.kv_cache_max_tokens,
        kv_cache_free_gpu_mem_fraction=a.kv_cache_fraction, deploy_dir=a.deploy_dir,
        deploy_model_dir=a.deploy_model_dir, gpu=a.gpu)


# ---- dry run ----------------------------------------------------------------------------------

def dry_run_text(bp: BuildPlan) -> str:
    s = bp.spec
    lines = [f"# TensorRT-LLM engine build (dry run): TensorRT-LLM {TRTLLM_RELEASE}, image {NGC_IMAGE}",
             f"# model {bp.shape.name}: TP{s.tp} x PP{s.pp} = {s.world_size} GPU(s), weights "
             f"{bp.dtype if s.quant == 'none' else s.quant}, KV cache {bp.kv_dtype}, max_seq_len {bp.max_seq_len}",
             f"# output {bp.out}"]
    lines += [f"# note: {n}" for n in bp.notes]
    if bp.plan is not None:
        lines += ["#"] + ["# " + line for line in bp.plan.render().splitlines()]
    n = len(bp.stages) + 1
    for i, stage in enumerate(bp.stages, 1):
        lines += ["", f"## stage {i}/{n} {stage.name}: {stage.title}", format_command(stage.argv)]
    lines += ["", f"## stage {n}/{n} repository: render {bp.repository_dir} (decoder=gpu) "
                  f"and {bp.repository_dir}/build-info.json"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(bp, Path(tmp) / "model_repository")
        for path in sorted(repo.rglob("*")):
            if path.is_file() and path.suffix in (".pbtxt", ".json"):
                lines += ["", f"### {bp.repository_dir / path.relative_to(repo)}", path.read_text().rstrip()]
    lines += ["", "## serve it (in the NGC image)", format_command(bp.serve)]
    return "\n".join(lines)


# ---- real run ---------------------------------------------------------------------------------

def detect_trtllm_version(python: str) -> str:
    try:
        r = subprocess.run([python, "-c", "import tensorrt_llm; print(tensorrt_llm.__version__)"],
                           capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise BuildError(f"{python} not found: run inside {NGC_IMAGE} or pass --trtllm-python") from None
    if r.returncode != 0:
        raise BuildError(f"{python} cannot import tensorrt_llm (run inside {NGC_IMAGE}):\n{r.stderr[-2000:]}")
    lines = [x.strip() for x in r.stdout.splitlines() if x.strip()]
    return lines[-1] if lines else "unknown"


def gpu_count() -> int | None:
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return sum(1 for line in r.stdout.splitlines() if line.startswith("GPU ")) or None


def preflight(bp: BuildPlan, allow_mismatch: bool) -> str:
    s = bp.spec
    if not (Path(s.model) / "config.json").is_file():
        raise BuildError(f"--model {s.model}: a real build needs the Hugging Face checkpoint directory")
    script = Path(bp.stage("checkpoint").argv[1])
    if not script.is_file():
        raise BuildError(f"{script} not found. The Triton image has no TensorRT-LLM examples: clone them at the "
                         f"release tag (git clone -b {TRTLLM_RELEASE} --depth 1 "
                         "https://github.com/NVIDIA/TensorRT-LLM) and pass --trtllm-examples <clone>/examples")
    if shutil.which(s.trtllm_build) is None:
        raise BuildError(f"{s.trtllm_build} not on PATH: run inside {NGC_IMAGE}")
    version = detect_trtllm_version(s.python)
    if version.lstrip("v").split("+")[0] != TRTLLM_RELEASE.lstrip("v"):
        msg = (f"tensorrt_llm {version} here, but this repository targets {TRTLLM_RELEASE} (the backend's "
               "tensor contract, the engine's xgrammar for guides); use the matching image")
        if not allow_mismatch:
            raise BuildError(msg + " or pass --allow-release-mismatch")
        log(f"warning: {msg}")
    return version


def check_engine(bp: BuildPlan) -> None:
    cfg_path = bp.out / "engine" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    mapping = cfg.get("pretrained_config", {}).get("mapping", {})
    world = int(mapping.get("world_size") or int(mapping.get("tp_size", 1)) * int(mapping.get("pp_size", 1)))
    if world != bp.spec.world_size:
        raise BuildError(f"{cfg_path}: engine built for {world} GPUs, expected {bp.spec.world_size}")
    build = cfg.get("build_config", {})
    plugins = build.get("plugin_config", {})
    log(f"engine: world size {world}, max_batch_size {build.get('max_batch_size')}, max_seq_len "
        f"{build.get('max_seq_len')}, max_num_tokens {build.get('max_num_tokens')}, paged context FMHA "
        f"{plugins.get('use_paged_context_fmha')}, tokens per KV block {plugins.get('tokens_per_block')}")


def run_build(bp: BuildPlan, *, force: bool, allow_mismatch: bool) -> int:
    version = preflight(bp, allow_mismatch)
    log(f"tensorrt_llm {version}; output {bp.out}")
    bp.out.mkdir(parents=True, exist_ok=True)
    state_path = bp.out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() and not force else {}
    n = len(bp.stages) + 1
    rerun = force
    for i, stage in enumerate(bp.stages, 1):
        done = state.get(stage.name) == stage.argv and Path(stage.output).exists()
        if done and not rerun:
            log(f"stage {i}/{n} {stage.name}: done earlier with the same command, skipped")
            continue
        rerun = True                      # everything after a rebuilt stage is rebuilt too
        log(f"stage {i}/{n} {stage.name}: {stage.title}")
        print(format_command(stage.argv), flush=True)
        start = time.monotonic()
        rc = subprocess.call(stage.argv)
        minutes, seconds = divmod(int(time.monotonic() - start), 60)
        if rc != 0:
            log(f"stage {i}/{n} {stage.name} failed with exit code {rc} after {minutes}m{seconds:02d}s")
            return rc
        if not Path(stage.output).exists():
            log(f"stage {i}/{n} {stage.name} finished but wrote no {stage.output}")
            return 1
        state[stage.name] = stage.argv
        state_path.write_text(json.dumps(state, indent=2))
        log(f"stage {i}/{n} {stage.name}: done in {minutes}m{seconds:02d}s")
        if stage.name == "engine":
            check_engine(bp)
    log(f"stage {n}/{n} repository: {bp.repository_dir}")
    write_repository(bp, extra_info={"tensorrt_llm_version": version,
                                     "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    shutil.copy2(bp.repository_dir / "build-info.json", bp.out / "build-info.json")
    log("done. Serve it with:")
    print(format_command(bp.serve), flush=True)
    return 0


# ---- tokenizer-info subcommand ----------------------------------------------------------------

def tokenizer_info_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="engine.py tokenizer-info",
                                description="write the xgrammar tokenizer info JSON TensorRT-LLM's backend reads")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    info = xgrammar_tokenizer_info(a.model_dir)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, ensure_ascii=False))
    log(f"{out}: {len(info['encoded_vocab'])} tokens, stop token ids {info['stop_token_ids']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["tokenizer-info"]:
        try:
            return tokenizer_info_main(argv[1:])
        except BuildError as e:
            print(f"engine: {e}", file=sys.stderr)
            return 1
    a = parse_args(argv)
    try:
        shape = load_model_shape(a.model)
        spec = spec_from_args(a, shape.name)
        if not a.dry_run and spec.workers is None:
            gpus = gpu_count()
            spec.workers = min(spec.world_size, gpus) if gpus else None
        bp = plan_build(spec, shape)
    except PlanError as e:
        print(f"engine: TP{a.tp} x PP{a.pp} QUANT={a.quant} cannot work for {a.model}:", file=sys.stderr)
        for reason in e.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return 1
    except (BuildError, ValueError) as e:
        print(f"engine: {e}", file=sys.stderr)
        return 1
    if a.dry_run:
        print(dry_run_text(bp))
        return 0
    try:
        return run_build(bp, force=a.force, allow_mismatch=a.allow_release_mismatch)
    except BuildError as e:
        print(f"engine: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
