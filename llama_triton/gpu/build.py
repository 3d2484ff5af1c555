"""Command lines that turn a Hugging Face Llama checkpoint into a served TensorRT-LLM engine.

Pure construction, importable and testable without TensorRT-LLM or a GPU; build/engine.py runs
the stages (or prints them with --dry-run). Four stages, for one named TensorRT-LLM release
(`TRTLLM_RELEASE`, v1.2.1, the last release line with this TensorRT-engine path; the flags below
were re-read there: tensorrt_llm/commands/build.py and plugin/plugin.py, the Llama converter
examples/models/core/llama/convert_checkpoint.py and examples/quantization/quantize.py, docs/GPU.md):

1. checkpoint   HF -> TensorRT-LLM checkpoint, split TP x PP ways:
                `convert_checkpoint.py` (FP16/BF16 weights, optionally INT8 KV cache), or
                ModelOpt's `quantize.py` (FP8 or INT4-AWQ weights, FP8/INT8 KV cache)
2. engine       `trtllm-build`: paged KV cache, in-flight batching plugins, paged context FMHA
                (needed for KV reuse and chunked context), the engine's size limits
3. tokenizer    the xgrammar tokenizer info JSON the C++ backend needs for guided decoding
4. repository   `render_repository(decoder="gpu")` plus build-info.json recording the release
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from llama_triton import defaults
from llama_triton.gpu.plan import (GPUS_PER_NODE, ModelShape, Plan, PlanError, default_kv_dtype,
                                   layout_errors, make_plan)
from llama_triton.serve.repository import RepositorySettings, render_repository
from llama_triton.trtllm.backend_contract import NGC_IMAGE, TRTLLM_RELEASE  # noqa: F401 - NGC_IMAGE re-exported
# TensorRT-LLM's examples folder: where the TensorRT-LLM release images keep it. The Triton
# image does not ship the examples; clone the matching tag and pass its examples/ folder.
DEFAULT_EXAMPLES_DIR = "/app/tensorrt_llm/examples"
# v0.18 and later (1.2.1 too) keep the Llama converter under models/core/; before, it was in llama/.
CONVERT_SCRIPTS = ("models/core/llama/convert_checkpoint.py", "llama/convert_checkpoint.py")
QUANTIZE_SCRIPT = "quantization/quantize.py"
CALIB_SIZE = {"fp8": 512, "int4_awq": 32}       # the published Llama recipes
AWQ_BLOCK_SIZE = 128

CHECKPOINT_DIR, ENGINE_DIR = "trtllm_checkpoint", "engine"
TOKENIZER_INFO, REPOSITORY_DIR, BUILD_INFO = "xgrammar_tokenizer_info.json", "model_repository", "build-info.json"


class BuildError(ValueError):
    pass


@dataclass
class EngineSpec:
    model: str                              # HF checkpoint dir (a known name only for dry runs)
    out_dir: str
    tp: int = 1
    pp: int = 1
    quant: str = "none"                     # none | fp8 | int4_awq
    kv_dtype: Optional[str] = None          # fp16 | bf16 | fp8 | int8 (default: by quant)
    dtype: Optional[str] = None             # float16 | bfloat16 (default: the checkpoint's)
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_input_len: Optional[int] = None     # default: max_seq_len
    max_seq_len: Optional[int] = None       # default: the model's max_position_embeddings
    max_num_tokens: int = defaults.TRTLLM_MAX_NUM_TOKENS   # tokens per engine step (chunked context splits longer prompts)
    workers: Optional[int] = None           # trtllm-build ranks built in parallel, one GPU each
    convert_workers: int = 1                # convert_checkpoint.py ranks in parallel (host memory!)
    examples_dir: str = DEFAULT_EXAMPLES_DIR
    python: str = "python3"                 # the interpreter that has tensorrt_llm
    trtllm_build: str = "trtllm-build"
    tokenizer_python: str = "python3"       # runs build/engine.py tokenizer-info (needs transformers)
    engine_script: str = "build/engine.py"
    calib_dataset: Optional[str] = None     # HF dataset name or local dir (default: cnn_dailymail)
    calib_size: Optional[int] = None
    kv_cache_max_tokens: Optional[int] = None   # default: unset, the memory fraction decides
    kv_cache_free_gpu_mem_fraction: float = defaults.KV_CACHE_FREE_GPU_MEM_FRACTION
    deploy_dir: Optional[str] = None        # where out_dir is seen when serving (default: out_dir)
    deploy_model_dir: Optional[str] = None  # where the HF dir is seen when serving (default: model)
    gpu: Optional[str] = None               # run the sizing plan for this GPU first

    @property
    def world_size(self) -> int:
        return self.tp * self.pp


@dataclass
class Stage:
    name: str
    title: str
    argv: list[str]
    output: str                             # exists once the stage has run


@dataclass
class BuildPlan:
    spec: EngineSpec
    shape: ModelShape
    dtype: str
    kv_dtype: str
    max_seq_len: int
    max_input_len: int
    out: Path
    stages: list[Stage]
    repository: RepositorySettings
    build_info: dict
    serve: list[str] = field(default_factory=list)
    plan: Optional[Plan] = None
    notes: list[str] = field(default_factory=list)

    @property
    def repository_dir(self) -> Path:
        return self.out / REPOSITORY_DIR

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


def resolve_dtype(spec: EngineSpec, shape: ModelShape) -> str:
    dtype = spec.dtype or shape.dtype
    if dtype in ("float32", "auto"):
        return "float16"                    # what convert_checkpoint.py's `auto` does with fp32 sources
    if dtype not in ("float16", "bfloat16"):
        raise BuildError(f"DTYPE={dtype}: choose float16 or bfloat16")
    return dtype


def convert_script(examples_dir: str) -> str:
    """The Llama converter inside `examples_dir`: the layout found there, else the targeted release's."""
    root = Path(examples_dir)
    for rel in CONVERT_SCRIPTS:
        if (root / rel).is_file():
            return str(root / rel)
    return str(root / CONVERT_SCRIPTS[0])


def checkpoint_command(spec: EngineSpec, dtype: str, kv: str, ckpt: Path) -> tuple[str, list[str]]:
    """HF -> TensorRT-LLM checkpoint. Quantisation and any FP8 KV cache go through ModelOpt
    (`quantize.py`, calibrated scales); plain and INT8-KV conversions through the converter."""
    use_modelopt = spec.quant != "none" or kv == "fp8"
    if not use_modelopt:
        argv = [spec.python, convert_script(spec.examples_dir), "--model_dir", spec.model,
                "--output_dir", str(ckpt), "--dtype", dtype,
                "--tp_size", str(spec.tp), "--pp_size", str(spec.pp), "--workers", str(spec.convert_workers)]
        if kv == "int8":
            argv += ["--int8_kv_cache"]
            if spec.calib_dataset:
                argv += ["--calib_dataset", spec.calib_dataset]
        return "convert_checkpoint.py", argv
    qformat = {"none": "full_prec", "fp8": "fp8", "int4_awq": "int4_awq"}[spec.quant]
    argv = [spec.python, str(Path(spec.examples_dir) / QUANTIZE_SCRIPT), "--model_dir", spec.model,
            "--output_dir", str(ckpt), "--dtype", dtype, "--qformat", qformat]
    if spec.quant == "int4_awq":
        argv += ["--awq_block_size", str(AWQ_BLOCK_SIZE)]
    if kv in ("fp8", "int8"):
        argv += ["--kv_cache_dtype", kv]
    argv += ["--calib_size", str(spec.calib_size or CALIB_SIZE.get(spec.quant, 512))]
    if spec.calib_dataset:
        argv += ["--calib_dataset", spec.calib_dataset]
    argv += ["--tp_size", str(spec.tp), "--pp_size", str(spec.pp)]
    return "quantize.py (ModelOpt)", argv


TOKENS_PER_BLOCK = defaults.GPU_TOKENS_PER_BLOCK   # KV cache block size of the engines we build


def build_command(spec: EngineSpec, kv: str, ckpt: Path, engine: Path, max_input_len: int,
                  max_seq_len: int) -> list[str]:
    workers = spec.workers or min(spec.world_size, GPUS_PER_NODE)
    argv = [spec.trtllm_build, "--checkpoint_dir", str(ckpt), "--output_dir", str(engine),
            # In-flight batching: the attention and GEMM plugins in the model's dtype.
            "--gemm_plugin", "auto", "--gpt_attention_plugin", "auto",
            "--kv_cache_type", "paged", "--remove_input_padding", "enable", "--context_fmha", "enable",
            # KV reuse across requests and chunked context both need paged context FMHA.
            "--use_paged_context_fmha", "enable",
            "--max_batch_size", str(spec.max_batch_size), "--max_input_len", str(max_input_len),
            "--max_seq_len", str(max_seq_len), "--max_num_tokens", str(spec.max_num_tokens),
            "--max_beam_width", "1", "--workers", str(workers),
            # Stated, not left to the release default: the frontend turns the backend's
            # kv_cache_reused_blocks into cached tokens with it (the config's tokens_per_block).
            "--tokens_per_block", str(TOKENS_PER_BLOCK)]
    if spec.quant == "fp8" and kv == "fp8":
        argv += ["--use_fp8_context_fmha", "enable"]    # Hopper: FP8 attention over the FP8 KV cache
    return argv


def plan_build(spec: EngineSpec, shape: ModelShape) -> BuildPlan:
    """Every stage's command line and the filled repository settings; raises BuildError or
    PlanError when the layout cannot work."""
    errors = layout_errors(shape, spec.tp, spec.pp, spec.quant, spec.kv_dtype)
    if errors:
        raise PlanError(errors)
    dtype = resolve_dtype(spec, shape)
    kv = spec.kv_dtype or default_kv_dtype(spec.quant, dtype)
    if kv in ("fp16", "bf16") and kv != default_kv_dtype("none", dtype):
        other = "bfloat16" if kv == "bf16" else "float16"
        raise BuildError(f"KV_DTYPE={kv} with {dtype} weights: a 16-bit KV cache has the weights' dtype "
                         f"(use KV_DTYPE={default_kv_dtype('none', dtype)} or DTYPE={other})")
    max_seq_len = spec.max_seq_len or shape.max_position_embeddings
    max_input_len = spec.max_input_len or max_seq_len
    if max_input_len > max_seq_len:
        raise BuildError(f"MAX_INPUT_LEN={max_input_len} is larger than MAX_SEQ_LEN={max_seq_len}")
    if max_seq_len > shape.max_position_embeddings:
        raise BuildError(f"MAX_SEQ_LEN={max_seq_len} is beyond the model's {shape.max_position_embeddings} positions")
    plan = None
    if spec.gpu:
        plan = make_plan(shape, spec.gpu, spec.tp, spec.pp, spec.quant, kv, max_seq_len,
                         spec.max_batch_size, spec.max_num_tokens, spec.kv_cache_free_gpu_mem_fraction)

    out = Path(spec.out_dir).resolve()
    ckpt, engine, tok_info = out / CHECKPOINT_DIR, out / ENGINE_DIR, out / TOKENIZER_INFO
    tool, ckpt_argv = checkpoint_command(spec, dtype, kv, ckpt)
    model_is_dir = Path(spec.model).is_dir()
    stages = [
        Stage("checkpoint", f"HF checkpoint -> TensorRT-LLM checkpoint, {spec.tp}x{spec.pp} ranks ({tool})",
              ckpt_argv, str(ckpt / "config.json")),
        Stage("engine", f"trtllm-build: {spec.world_size} rank engine(s)",
              build_command(spec, kv, ckpt, engine, max_input_len, max_seq_len), str(engine / "config.json")),
        Stage("tokenizer", "xgrammar tokenizer info for guided decoding",
              [spec.tokenizer_python, spec.engine_script, "tokenizer-info", "--model-dir", spec.model,
               "--out", str(tok_info)], str(tok_info)),
    ]

    deploy = Path(spec.deploy_dir) if spec.deploy_dir else out
    if spec.deploy_model_dir:
        tokenizer_dir = spec.deploy_model_dir
    else:
        tokenizer_dir = str(Path(spec.model).resolve()) if model_is_dir else spec.model
    # max_tokens_in_paged_kv_cache (the template's max_num_tokens): left empty unless asked for.
    # The backend then reads it as unset (it logs that) and sizes the KV cache from
    # kv_cache_free_gpu_mem_fraction alone; blocks beyond the running sequences keep reusable
    # prefixes. A number caps the cache at min(number, fraction-derived size).
    kv_cap = spec.kv_cache_max_tokens
    settings = RepositorySettings(
        model_dir=tokenizer_dir, decoder="gpu", decoder_io="gpu",
        triton_max_batch_size=spec.max_batch_size, max_batch_size=spec.max_batch_size,
        max_seq_len=max_seq_len,
        engine_dir=str(deploy / ENGINE_DIR), xgrammar_tokenizer_info_path=str(deploy / TOKENIZER_INFO),
        kv_cache_free_gpu_mem_fraction=spec.kv_cache_free_gpu_mem_fraction,
        tokens_per_block=TOKENS_PER_BLOCK, pipeline_parallel_size=spec.pp,
        extra={"max_num_tokens": kv_cap if kv_cap else ""})

    serve = ["llama-triton", "serve", "--repository", str(deploy / REPOSITORY_DIR), "--model-dir", tokenizer_dir]
    if spec.world_size > 1:
        serve += ["--world-size", str(spec.world_size)]
    # Frontend options: the context limit is the engine's (its config does not state it).
    serve += ["--", "--model-dir", tokenizer_dir, "--max-context", str(max_seq_len)]
    info = {
        "trtllm_release": TRTLLM_RELEASE,
        "ngc_image": NGC_IMAGE,
        "model": spec.model,
        "model_name": shape.name,
        "tp": spec.tp, "pp": spec.pp, "world_size": spec.world_size,
        "quant": spec.quant, "dtype": dtype, "kv_cache_dtype": kv,
        "engine": {"max_batch_size": spec.max_batch_size, "max_input_len": max_input_len,
                   "max_seq_len": max_seq_len, "max_num_tokens": spec.max_num_tokens, "max_beam_width": 1},
        "repository": {"engine_dir": settings.engine_dir, "tokenizer_dir": tokenizer_dir,
                       "xgrammar_tokenizer_info_path": settings.xgrammar_tokenizer_info_path,
                       "max_tokens_in_paged_kv_cache": kv_cap,
                       "kv_cache_free_gpu_mem_fraction": spec.kv_cache_free_gpu_mem_fraction},
        "commands": {s.name: shlex.join(s.argv) for s in stages},
        "serve": shlex.join(serve),
    }
    if plan is not None:
        info["plan"] = plan.to_dict()
    bp = BuildPlan(spec=spec, shape=shape, dtype=dtype, kv_dtype=kv, max_seq_len=max_seq_len,
                   max_input_len=max_input_len, out=out, stages=stages, repository=settings,
                   build_info=info, serve=serve, plan=plan)
    if not model_is_dir:
        bp.notes.append(f"MODEL={spec.model} is not a checkpoint directory: the commands show it where the "
                        "Hugging Face directory goes (a real build needs the directory)")
    if spec.quant != "none" or kv == "fp8":
        bp.notes.append("ModelOpt calibration loads the whole FP16 model onto the GPUs of the build machine "
                        "(70B: about 140 GB of weights; the FP8 recipe peaks above 210 GB, i.e. 4 x 80 GB)")
    return bp


def write_repository(bp: BuildPlan, dest: Optional[Path] = None, extra_info: Optional[dict] = None) -> Path:
    """Renders the GPU model repository and writes build-info.json at its root (Triton ignores
    files there) and beside it."""
    dest = Path(dest) if dest is not None else bp.repository_dir
    render_repository(bp.repository, dest)
    info = dict(bp.build_info, **(extra_info or {}))
    text = json.dumps(info, indent=2, sort_keys=False) + "\n"
    (dest / BUILD_INFO).write_text(text)
    return dest


def format_command(argv: list[str]) -> str:
    """Shell-quoted, one `--option value` group per line, ready to paste."""
    lead = 0
    while lead < len(argv) and not argv[lead].startswith("--"):
        lead += 1
    groups: list[list[str]] = [argv[:lead]]
    for a in argv[lead:]:
        if a.startswith("--"):
            groups.append([a])
        else:
            groups[-1].append(a)
    return " \\\n    ".join(shlex.join(g) for g in groups if g)


# ---- the xgrammar tokenizer info ------------------------------------------------------------

def stop_token_ids(model_dir: str, tokenizer) -> list[int]:
    """The tokenizer's EOS plus generation_config.json's eos_token_id(s), in that order."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen = Path(model_dir) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        for i in (eos if isinstance(eos, list) else [eos]):
            if i is not None:
                ids.append(int(i))
    return list(dict.fromkeys(ids))


def xgrammar_tokenizer_info(model_dir: str) -> dict:
    """What TensorRT-LLM's C++ backend reads from `xgrammar_tokenizer_info_path`: the vocabulary
    as stored in tokenizer.json (index = token id), the serialised fast tokenizer (xgrammar
    detects the vocabulary type and prefix-space rule from it) and the stop token ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise BuildError(f"{model_dir}: guided decoding needs a fast tokenizer (tokenizer.json)")
    vocab = tok.get_vocab()
    size = max(vocab.values()) + 1
    encoded: list[Optional[str]] = [None] * size
    for token, i in vocab.items():
        encoded[i] = token
    missing = [i for i, t in enumerate(encoded) if t is None]
    if missing:
        raise BuildError(f"{model_dir}: the vocabulary has no token for ids {missing[:5]}...")
    stops = stop_token_ids(model_dir, tok)
    if not stops:
        raise BuildError(f"{model_dir}: no EOS token id in the tokenizer or generation_config.json")
    return {"encoded_vocab": encoded, "tokenizer_str": backend.to_str(), "stop_token_ids": stops}
