"""Renders the Triton model repository from `model_repository/*/config.pbtxt.tmpl`.

Substitution is strict: a `${key}` with no value, a value no template uses, or any `${...}`
left after rendering is an error. TensorRT-LLM's own fill_template.py leaves unknown keys as
literal `${...}`, which its backend then silently reads as "unset" (reference notes section 2).
"""
from __future__ import annotations

import json
import re
import shutil
import string
from dataclasses import dataclass, field
from pathlib import Path

from llama_triton import defaults
from llama_triton.defaults import MAX_BATCH_SIZE, MAX_QUEUE_SIZE
from llama_triton.trtllm.tensor_contract import Tensor, decoder_io

TEMPLATE_ROOT = Path(__file__).resolve().parents[2] / "model_repository"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
DECODER_TEMPLATES = {"cpu": "tensorrt_llm", "gpu": "tensorrt_llm_gpu", "llmapi": "tensorrt_llm_llmapi"}
LLM_APIS = ("cpu", "tensorrt_llm")      # what runs behind the LLM-API decoder (llmapi_engine.py)


class TemplateError(ValueError):
    pass


def render_text(template: str, values: dict[str, object], *, source: str = "template") -> str:
    wanted = set(PLACEHOLDER.findall(template))
    missing = sorted(wanted - values.keys())
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join(missing)}")
    text = string.Template(template).substitute({k: str(v) for k, v in values.items()})
    left = PLACEHOLDER.findall(text)
    if left or "${" in text:
        raise TemplateError(f"{source}: unfilled placeholder left after rendering: {left or '${'}")
    return text


def _dims(t: Tensor) -> str:
    return ", ".join(str(d) for d in t.dims)


def _tensor_block(tensors: tuple[Tensor, ...], *, inputs: bool) -> str:
    lines = []
    for t in tensors:
        extra = ""
        if inputs and t.optional:
            extra += " optional: true"
        if inputs and t.reshape_scalar:
            extra += " reshape: { shape: [ ] }"
        if inputs and t.ragged:
            extra += " allow_ragged_batch: true"
        lines.append(f'  {{ name: "{t.name}" data_type: {t.dtype} dims: [ {_dims(t)} ]{extra} }}')
    return ",\n".join(lines)


def ensemble_blocks(inputs: tuple[Tensor, ...], outputs: tuple[Tensor, ...]) -> dict[str, str]:
    """The ensemble's extra inputs/outputs and the decoder step's maps, from the decoder's lists."""
    ens_inputs, in_map, ens_outputs, out_map, post_map = [], [], [], [], []
    for t in inputs:
        if t.from_preprocessing:
            in_map.append(f'      input_map {{ key: "{t.name}" value: "_{t.from_preprocessing}" }}')
        elif t.ensemble_name:
            ens_inputs.append(f'  {{ name: "{t.ensemble_name}" data_type: {t.dtype} '
                              f'dims: [ {_dims(t)} ] optional: true }}')
            in_map.append(f'      input_map {{ key: "{t.name}" value: "{t.ensemble_name}" }}')
    for t in outputs:
        if t.ensemble_name:
            ens_outputs.append(f'  {{ name: "{t.ensemble_name}" data_type: {t.dtype} dims: [ {_dims(t)} ] }}')
        if t.ensemble_name or t.to_postprocessing:
            value = t.ensemble_name or f"_{t.name}"
            out_map.append(f'      output_map {{ key: "{t.name}" value: "{value}" }}')
            if t.to_postprocessing:
                post_map.append(f'      input_map {{ key: "{t.to_postprocessing}" value: "{value}" }}')
    return {"ensemble_inputs": ",\n".join(ens_inputs), "ensemble_outputs": ",\n".join(ens_outputs),
            "decoder_input_map": "\n".join(in_map), "decoder_output_map": "\n".join(out_map),
            "postprocessing_input_map": "\n".join(post_map)}


@dataclass
class RepositorySettings:
    model_dir: str                       # HF checkpoint dir (tokenizer; CPU decoder weights)
    decoder: str = "cpu"                 # which `tensorrt_llm` template: cpu | gpu
    decoder_io: str | None = None        # which tensor list it declares (default: same as decoder)
    decoder_kind: str = "llama"          # CPU decoder variant: llama | zero_cost
    dtype: str = defaults.DTYPE          # CPU decoder weights and KV: auto | bfloat16 | float32
    num_threads: int = 0                 # CPU decoder torch threads; 0: by model size
    matmul: str = "auto"                 # CPU decoder linear-layer kernels (llama_triton/llama/linear.py)
    triton_max_batch_size: int = MAX_BATCH_SIZE
    max_batch_size: int = MAX_BATCH_SIZE  # running sequences in the decoder
    max_num_tokens: int = defaults.MAX_NUM_TOKENS   # CPU: KV cache capacity in tokens
    max_seq_len: int = defaults.MAX_SEQ_LEN
    max_queue_size: int = MAX_QUEUE_SIZE
    prefill_chunk_size: int = defaults.PREFILL_CHUNK_SIZE   # prompt tokens per engine step (defaults.py: why)
    enable_kv_cache_reuse: bool = True
    exclude_input_in_output: bool = True
    preprocessing_instance_count: int = 1
    stream_state_idle_seconds: int = defaults.STREAM_STATE_IDLE_S
    add_special_tokens: bool = True
    # GPU only
    engine_dir: str = ""
    xgrammar_tokenizer_info_path: str = ""
    batch_scheduler_policy: str = "guaranteed_no_evict"
    kv_cache_free_gpu_mem_fraction: float = defaults.KV_CACHE_FREE_GPU_MEM_FRACTION
    enable_chunked_context: bool = True
    max_queue_delay_microseconds: int = 0
    # KV block size, stated in both configs: the frontend reports cached prompt tokens on GPU as
    # kv_cache_reused_blocks x tokens_per_block (gpu/build.py renders the GPU engines' own).
    tokens_per_block: int = defaults.TOKENS_PER_BLOCK
    # The engine's pipeline-parallel stages (GPU config only; the frontend's gate counts PP x batch),
    # and the LLM-API decoder's (its model.yaml).
    pipeline_parallel_size: int = 1
    # LLM-API decoder only (decoder="llmapi": its 1/model.yaml holds the LLM's arguments)
    llm_api: str = "cpu"                 # cpu: the CPU engine through the LLM-shaped stand-in | tensorrt_llm
    tensor_parallel_size: int = 1
    llmapi_model: str = ""               # model.yaml `model`: checkpoint dir or Hugging Face id (default model_dir)
    llmapi_max_num_tokens: int = 0       # tokens per iteration; 0: prefill_chunk_size on cpu, 8192 on a GPU
    llmapi_kv_cache_max_tokens: int = 0  # GPU: cap the KV cache (0: free_gpu_memory_fraction alone sizes it)
    extra: dict[str, object] = field(default_factory=dict)

    def values(self) -> dict[str, object]:
        # The LLM-API decoder declares the CPU decoder's tensor list (min_p and top-N log-probs work)
        # less the scheduling inputs (tensor_contract.SCHEDULING_INPUTS).
        io_name = self.decoder_io or self.decoder
        inputs, outputs = decoder_io(io_name)
        v: dict[str, object] = {
            "tokenizer_dir": self.model_dir, "model_dir": self.model_dir,
            "triton_max_batch_size": self.triton_max_batch_size,
            "max_batch_size": self.max_batch_size, "max_num_tokens": self.max_num_tokens,
            "max_seq_len": self.max_seq_len, "max_queue_size": self.max_queue_size,
            "prefill_chunk_size": self.prefill_chunk_size,
            "enable_kv_cache_reuse": str(self.enable_kv_cache_reuse).lower(),
            "exclude_input_in_output": str(self.exclude_input_in_output).lower(),
            "preprocessing_instance_count": self.preprocessing_instance_count,
            "stream_state_idle_seconds": self.stream_state_idle_seconds,
            "add_special_tokens": str(self.add_special_tokens).lower(),
            "decoder_kind": self.decoder_kind,
            "dtype": self.dtype,
            "num_threads": self.num_threads,
            "matmul": self.matmul,
            "decoder_inputs": _tensor_block(inputs, inputs=True),
            "decoder_outputs": _tensor_block(outputs, inputs=False),
            "engine_dir": self.engine_dir,
            "xgrammar_tokenizer_info_path": self.xgrammar_tokenizer_info_path,
            "batch_scheduler_policy": self.batch_scheduler_policy,
            "kv_cache_free_gpu_mem_fraction": self.kv_cache_free_gpu_mem_fraction,
            "enable_chunked_context": str(self.enable_chunked_context).lower(),
            "max_queue_delay_microseconds": self.max_queue_delay_microseconds,
            "tokens_per_block": self.tokens_per_block,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            # The CPU decoder rendered with TensorRT-LLM's tensor list also behaves like it
            # (llama_triton/backend/trtllm_emulation.py).
            "emulate_tensorrt_llm": str(self.decoder == "cpu" and io_name == "gpu").lower(),
        }
        v.update(ensemble_blocks(inputs, outputs))
        if self.decoder == "llmapi":
            v.update(self.llmapi_values())
        v.update(self.extra)
        return v

    def llmapi_values(self) -> dict[str, object]:
        """The LLM-API decoder's config parameters and model.yaml (LLM arguments)."""
        if self.llm_api not in LLM_APIS:
            raise TemplateError(f"llm_api {self.llm_api!r}: choose one of {', '.join(LLM_APIS)}")
        if self.tensor_parallel_size < 1 or self.pipeline_parallel_size < 1:
            raise TemplateError("tensor_parallel_size and pipeline_parallel_size must be at least 1")
        on_cpu = self.llm_api == "cpu"
        if on_cpu:
            # No GPU memory to take a fraction of: the KV cache is max_num_tokens, as the CPU decoder's.
            kv = f"  max_tokens: {self.max_num_tokens}"
        else:
            kv = f"  free_gpu_memory_fraction: {self.kv_cache_free_gpu_mem_fraction}"
            if self.llmapi_kv_cache_max_tokens:
                kv += f"\n  max_tokens: {self.llmapi_kv_cache_max_tokens}"
        per_step = self.llmapi_max_num_tokens or (self.prefill_chunk_size if on_cpu else defaults.TRTLLM_MAX_NUM_TOKENS)
        return {
            "llm_api": self.llm_api,
            "llmapi_model": json.dumps(self.llmapi_model or self.model_dir),   # a YAML string, quoted
            "llmapi_dtype": self.dtype,
            "tensor_parallel_size": self.tensor_parallel_size,
            "pipeline_parallel_size": self.pipeline_parallel_size,
            "llmapi_max_num_tokens": per_step,
            "llmapi_kv_cache_size": kv,
        }


MODELS = ("preprocessing", "tensorrt_llm", "postprocessing", "ensemble")


def render_repository(settings: RepositorySettings, out_dir: Path, *,
                      template_root: Path = TEMPLATE_ROOT) -> Path:
    """Writes a complete model repository to `out_dir` (replacing what was there)."""
    if settings.decoder not in DECODER_TEMPLATES:
        raise TemplateError(f"unknown decoder {settings.decoder!r}; choose from {sorted(DECODER_TEMPLATES)}")
    values = settings.values()
    used: set[str] = set()
    rendered: dict[str, str] = {}
    version_files: dict[str, dict[str, str]] = {}   # model -> rendered 1/<name> (from 1/<name>.tmpl)
    for model in MODELS:
        src = DECODER_TEMPLATES[settings.decoder] if model == "tensorrt_llm" else model
        tmpl_path = template_root / src / "config.pbtxt.tmpl"
        template = tmpl_path.read_text()
        keys = set(PLACEHOLDER.findall(template))
        used |= keys
        rendered[model] = render_text(template, {k: values[k] for k in keys if k in values},
                                      source=str(tmpl_path.relative_to(template_root.parent)))
        for extra_tmpl in sorted((template_root / src / "1").glob("*.tmpl")):
            text = extra_tmpl.read_text()
            keys = set(PLACEHOLDER.findall(text))
            used |= keys
            version_files.setdefault(model, {})[extra_tmpl.name[: -len(".tmpl")]] = render_text(
                text, {k: values[k] for k in keys if k in values},
                source=str(extra_tmpl.relative_to(template_root.parent)))
    unknown = sorted(set(settings.extra) - used)
    if unknown:
        raise TemplateError(f"values no template uses: {', '.join(unknown)}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    for model, text in rendered.items():
        src = DECODER_TEMPLATES[settings.decoder] if model == "tensorrt_llm" else model
        version_dir = out_dir / model / "1"
        version_dir.mkdir(parents=True)
        (out_dir / model / "config.pbtxt").write_text(text)
        src_model_py = template_root / src / "1" / "model.py"
        if src_model_py.exists():
            shutil.copy2(src_model_py, version_dir / "model.py")
        for name, body in version_files.get(model, {}).items():
            (version_dir / name).write_text(body)
    return out_dir
