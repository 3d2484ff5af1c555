"""GPU sizing plan for a TensorRT-LLM deployment: weights, runtime reserve and KV cache per GPU.

Pure arithmetic on a checkpoint's config.json, importable without TensorRT-LLM. `make plan`
(build/plan.py) prints it; `make engine` (build/engine.py) runs its layout rules before it
spends hours converting a checkpoint.

How TensorRT-LLM places a Llama model on TP x PP GPUs (what the figures assume):

* Every linear layer (q, k, v, o, gate, up, down) is split TP ways; the layers are split PP ways.
* The token embedding is replicated on every TP rank of the first PP stage (TensorRT-LLM's
  default, without `--use_parallel_embedding`); the LM head is split TP ways on the last stage.
* Quantisation (ModelOpt) applies to the linear layers only; embedding, LM head and norms stay
  in the checkpoint dtype. INT4-AWQ adds one FP16 scale per 128 weights.
* The KV cache holds 2 (K and V) x layers x KV heads x head_dim values per token; each GPU holds
  its layers' share of its KV heads for every token.
* The backend gives `kv_cache_free_gpu_mem_fraction` (0.9 in our repository) of the memory
  left after weights and activations to the KV cache.

The runtime reserve is an estimate (CUDA context, cuBLAS workspaces, NCCL and all-reduce
buffers, decoder state, TensorRT's activation pool for `max_num_tokens`); `trtllm-build` prints
the engine's exact activation size and the backend logs the KV cache it allocated.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from llama_triton.defaults import KV_CACHE_FREE_GPU_MEM_FRACTION, MAX_BATCH_SIZE, TRTLLM_MAX_NUM_TOKENS
from llama_triton.llama.known_models import KNOWN_MODELS, known_model_key
from llama_triton.trtllm.tensor_contract import TRTLLM_RELEASE

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10
GB = 10 ** 9

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"      # <known model name>.json

QUANTS = ("none", "fp8", "int4_awq")
KV_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
# Which KV cache dtypes each weight quantisation can be built with (build/engine.py routes them).
KV_DTYPES_FOR_QUANT = {"none": ("fp16", "bf16", "int8", "fp8"), "fp8": ("fp8", "fp16", "bf16"),
                       "int4_awq": ("int8", "fp8", "fp16", "bf16")}
AWQ_GROUP_SIZE = 128
GPUS_PER_NODE = 8                       # HGX/DGX nodes: tensor parallelism stays inside one
RUNTIME_OVERHEAD_BYTES = 2 * GiB        # CUDA context, cuBLAS, NCCL/all-reduce, decoder buffers


@dataclass(frozen=True)
class GpuSpec:
    name: str
    memory_bytes: int                   # what nvidia-smi reports as total
    fp8: bool                           # FP8 tensor cores (Ada / Hopper and later)


GPUS = {
    "a100-80g": GpuSpec("A100-SXM4-80GB", 81920 * MiB, fp8=False),
    "h100-80g": GpuSpec("H100-SXM5-80GB", 81559 * MiB, fp8=True),
    "h200-141g": GpuSpec("H200-SXM-141GB", 143771 * MiB, fp8=True),
}


class PlanError(ValueError):
    """A layout that breaks a rule or cannot fit; `reasons` says why, one line each."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    dtype: str = "float16"              # the checkpoint's dtype: float16 | bfloat16 | float32

    @classmethod
    def from_config(cls, cfg: dict, name: str = "model") -> "ModelShape":
        try:
            hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
            shape = cls(
                name=name, hidden_size=hidden, num_layers=int(cfg["num_hidden_layers"]), num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                intermediate_size=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
                max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                dtype=str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16"))
        except KeyError as e:
            raise ValueError(f"{name}: config.json has no {e.args[0]!r}; is it a Llama checkpoint?") from None
        return shape

    # ---- parameter counts ---------------------------------------------------------------------
    @property
    def linear_params_per_layer(self) -> int:
        h, d = self.hidden_size, self.head_dim
        attn = h * self.num_heads * d * 2 + h * self.num_kv_heads * d * 2      # q, o; k, v
        return attn + 3 * h * self.intermediate_size                          # gate, up, down

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    @property
    def norm_params(self) -> int:
        return self.num_layers * 2 * self.hidden_size + self.hidden_size

    @property
    def num_params(self) -> int:
        return (self.num_layers * self.linear_params_per_layer + self.embedding_params
                + self.lm_head_params + self.norm_params)

    def kv_bytes_per_token(self, kv_dtype: str) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * KV_DTYPE_BYTES[kv_dtype]


def load_model_shape(model: str, configs_dir: Path = CONFIGS_DIR) -> ModelShape:
    """A known name (llama-2-7b, llama-2-70b, also as meta-llama/Llama-2-70b-chat-hf), a checkpoint
    directory, or a config.json file."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"{model}: no config.json in this directory")
        name = Path(model).resolve().name
    elif path.is_file():
        name = path.resolve().parent.name
    else:
        key = known_model_key(model)
        if key is None:
            raise ValueError(f"{model}: not a checkpoint directory, a config.json, or a known model "
                             f"({', '.join(sorted(KNOWN_MODELS))})")
        path, name = configs_dir / f"{key}.json", key
    return ModelShape.from_config(json.loads(path.read_text()), name=name)


def default_kv_dtype(quant: str, dtype: str = "float16") -> str:
    """FP8 weights keep an FP8 KV cache and INT4-AWQ an INT8 one (the published recipes);
    unquantised weights keep the checkpoint's 16-bit type."""
    if quant == "fp8":
        return "fp8"
    if quant == "int4_awq":
        return "int8"
    return "bf16" if dtype == "bfloat16" else "fp16"


def layout_errors(shape: ModelShape, tp: int, pp: int, quant: str = "none",
                  kv_dtype: Optional[str] = None) -> list[str]:
    """Rules that need no GPU: how TP and PP can split this model, and valid dtype choices."""
    errors = []
    if tp < 1 or pp < 1:
        errors.append(f"TP and PP must be at least 1 (got TP{tp} x PP{pp})")
        return errors
    if quant not in QUANTS:
        errors.append(f"QUANT={quant}: choose one of {', '.join(QUANTS)}")
    elif kv_dtype is not None and kv_dtype not in KV_DTYPES_FOR_QUANT[quant]:
        errors.append(f"KV_DTYPE={kv_dtype} cannot be built with QUANT={quant}; "
                      f"choose one of {', '.join(KV_DTYPES_FOR_QUANT[quant])}")
    if shape.num_kv_heads % tp:
        errors.append(f"TP{tp} does not divide the {shape.num_kv_heads} KV heads of {shape.name} "
                      f"(each GPU must hold whole KV heads): choose TP from {valid_tp_sizes(shape)}")
    elif shape.num_heads % tp:
        errors.append(f"TP{tp} does not divide the {shape.num_heads} attention heads of {shape.name}")
    if tp > GPUS_PER_NODE:
        errors.append(f"TP{tp} spans more than one {GPUS_PER_NODE}-GPU node: tensor parallelism "
                      f"all-reduces twice per layer and needs NVLink; split across nodes with PP "
                      f"(e.g. TP{GPUS_PER_NODE} x PP{max(1, tp // GPUS_PER_NODE)})")
    if shape.num_layers % pp:
        choices = [d for d in range(1, shape.num_layers + 1) if shape.num_layers % d == 0 and d <= 16]
        errors.append(f"PP{pp} does not divide the {shape.num_layers} layers of {shape.name}: "
                      f"choose PP from {choices}")
    return errors


@dataclass
class Plan:
    model: ModelShape
    gpu_key: str
    gpu: GpuSpec
    tp: int
    pp: int
    quant: str
    kv_dtype: str
    max_seq_len: int
    max_batch_size: int
    max_num_tokens: int
    kv_fraction: float
    num_params: int
    weight_bytes_total: int
    weight_bytes_per_gpu: int
    runtime_bytes: int
    activation_bytes: int
    kv_bytes_per_token: int             # whole model
    kv_bytes_per_token_per_gpu: int
    kv_cache_bytes_per_gpu: int
    kv_tokens: int
    concurrent_sequences: int
    warnings: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    @property
    def reserve_bytes(self) -> int:
        return self.runtime_bytes + self.activation_bytes

    @property
    def free_bytes_per_gpu(self) -> int:
        return self.gpu.memory_bytes - self.weight_bytes_per_gpu - self.reserve_bytes

    def kv_bytes_per(self, tokens: int) -> int:
        return self.kv_bytes_per_token * tokens

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = asdict(self.model)
        d["gpu"] = {"key": self.gpu_key, **asdict(self.gpu)}
        d.pop("gpu_key")
        d["world_size"] = self.world_size
        d["trtllm_release"] = TRTLLM_RELEASE
        return d

    def render(self) -> str:
        m, g = self.model, self.gpu
        kv32k = self.kv_bytes_per(32768)
        lines = [
            f"Sizing plan: {m.name} on {self.world_size} x {g.name} (TP{self.tp} x PP{self.pp}), "
            f"weights {_weights_label(self.quant, m.dtype)}, KV cache {self.kv_dtype}, max_seq_len {self.max_seq_len}",
            f"  target       TensorRT-LLM {TRTLLM_RELEASE}",
            f"  model        {m.num_layers} layers, hidden {m.hidden_size}, {m.num_heads} heads / "
            f"{m.num_kv_heads} KV heads (head_dim {m.head_dim}), FFN {m.intermediate_size}, vocab {m.vocab_size}",
            f"  parameters   {self.num_params / 1e9:.2f} B ({self.num_params:,})",
            f"  weights      {_gb(self.weight_bytes_total)} in total; per GPU {_gb(self.weight_bytes_per_gpu)}",
            f"  reserve      per GPU {_gib(self.reserve_bytes)}: runtime {_gib(self.runtime_bytes)} + activations "
            f"{_gib(self.activation_bytes)} (max_num_tokens {self.max_num_tokens}, "
            f"max_batch_size {self.max_batch_size})",
            f"  GPU memory   {_gib(g.memory_bytes)} per GPU; {_gib(self.free_bytes_per_gpu)} left after weights and "
            f"reserve; the KV cache gets {self.kv_fraction:.0%} of it: {_gib(self.kv_cache_bytes_per_gpu)} per GPU",
            f"  KV per token {_kib(self.kv_bytes_per_token)} in total "
            f"({_kib(self.kv_bytes_per_token_per_gpu)} per GPU); "
            f"{kv32k / GB:.2f} GB ({kv32k / GiB:.2f} GiB) per 32K tokens",
            f"  capacity     {self.kv_tokens:,} KV tokens; {self.concurrent_sequences:,} sequences of "
            f"{self.max_seq_len} tokens at once",
        ]
        lines += [f"  note         {w}" for w in self.warnings]
        return "\n".join(lines)


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB ({n / GiB:.2f} GiB)"


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


def _kib(n: int) -> str:
    return f"{n / KiB:.1f} KiB"


def _weights_label(quant: str, dtype: str) -> str:
    base = "bf16" if dtype == "bfloat16" else "fp16"
    return {"none": base, "fp8": "fp8 (ModelOpt)", "int4_awq": "int4-AWQ (ModelOpt)"}[quant]


def linear_bytes_per_weight(quant: str) -> float:
    if quant == "fp8":
        return 1.0
    if quant == "int4_awq":
        return 0.5 + 2.0 / AWQ_GROUP_SIZE
    return 2.0


def weight_bytes(shape: ModelShape, quant: str, tp: int = 1, pp: int = 1) -> tuple[int, int]:
    """(all GPUs together, the fullest GPU) in bytes. TensorRT-LLM keeps an LM head even for
    tied embeddings, so it is always counted."""
    lin = linear_bytes_per_weight(quant)
    h = shape.hidden_size
    total = (shape.num_layers * shape.linear_params_per_layer * lin
             + 2 * (2 * shape.embedding_params + shape.norm_params))
    stage_layers = (shape.num_layers // pp) * (shape.linear_params_per_layer * lin / tp + 2 * 2 * h)
    embedding = 2 * shape.embedding_params                      # replicated on each TP rank
    lm_head = 2 * math.ceil(shape.vocab_size / tp) * h + 2 * h  # split TP ways, plus the final norm
    per_gpu = stage_layers + embedding + lm_head if pp == 1 else stage_layers + max(embedding, lm_head)
    return int(round(total)), int(round(per_gpu))


def activation_bytes(shape: ModelShape, tp: int, max_num_tokens: int, max_batch_size: int) -> int:
    """TensorRT's activation pool, estimated: one layer's live tensors for `max_num_tokens`
    tokens in 16-bit (input, residual and output, fused QKV, fused gate-up and its product),
    plus FP32 logits for one token per sequence."""
    h, d = shape.hidden_size, shape.head_dim
    per_token = 3 * h + (shape.num_heads + 2 * shape.num_kv_heads) * d // tp + 3 * shape.intermediate_size // tp
    return max_num_tokens * per_token * 2 + max_batch_size * shape.vocab_size * 4


def kv_bytes_per_token_per_gpu(shape: ModelShape, kv_dtype: str, tp: int = 1, pp: int = 1) -> int:
    return 2 * (shape.num_layers // pp) * (shape.num_kv_heads // tp) * shape.head_dim * KV_DTYPE_BYTES[kv_dtype]


@dataclass(frozen=True)
class _Figures:
    weight_total: int
    weight_per_gpu: int
    activations: int
    reserve: int
    free: int
    kv_cache: int
    kv_per_gpu_token: int
    kv_tokens: int


def _figures(shape: ModelShape, spec: GpuSpec, tp: int, pp: int, quant: str, kv: str,
             max_batch_size: int, max_num_tokens: int, kv_fraction: float) -> _Figures:
    total, per_gpu = weight_bytes(shape, quant, tp, pp)
    act = activation_bytes(shape, tp, max_num_tokens, max_batch_size)
    reserve = RUNTIME_OVERHEAD_BYTES + act
    free = spec.memory_bytes - per_gpu - reserve
    kv_cache = int(max(free, 0) * kv_fraction)
    per_token = kv_bytes_per_token_per_gpu(shape, kv, tp, pp)
    return _Figures(total, per_gpu, act, reserve, free, kv_cache, per_token, kv_cache // per_token)


def make_plan(shape: ModelShape, gpu: str, tp: int = 1, pp: int = 1, quant: str = "none",
              kv_dtype: Optional[str] = None, max_seq_len: Optional[int] = None,
              max_batch_size: int = MAX_BATCH_SIZE, max_num_tokens: int = TRTLLM_MAX_NUM_TOKENS,
              kv_fraction: float = KV_CACHE_FREE_GPU_MEM_FRACTION) -> Plan:
    """Figures for one layout, or PlanError listing every reason it cannot work."""
    if gpu not in GPUS:
        raise PlanError([f"GPU={gpu}: choose one of {', '.join(GPUS)}"])
    spec = GPUS[gpu]
    errors = layout_errors(shape, tp, pp, quant, kv_dtype)
    if kv_dtype is not None and kv_dtype not in KV_DTYPE_BYTES:
        errors.append(f"KV_DTYPE={kv_dtype}: choose one of {', '.join(KV_DTYPE_BYTES)}")
    if errors:
        raise PlanError(errors)
    kv = kv_dtype or default_kv_dtype(quant, shape.dtype)
    max_seq_len = max_seq_len or shape.max_position_embeddings
    if not spec.fp8 and "fp8" in (quant, kv):
        errors.append(f"{spec.name} has no FP8 tensor cores (Ada or Hopper needed): "
                      "use QUANT=none or int4_awq, with KV_DTYPE=int8 or fp16")
    if max_seq_len > shape.max_position_embeddings:
        errors.append(f"MAX_SEQ_LEN={max_seq_len} is beyond the model's {shape.max_position_embeddings} "
                      "positions (max_position_embeddings)")
    f = _figures(shape, spec, tp, pp, quant, kv, max_batch_size, max_num_tokens, kv_fraction)
    if f.free < 0:
        errors.append(f"weights need {_gib(f.weight_per_gpu)} per GPU plus a {_gib(f.reserve)} runtime reserve = "
                      f"{_gib(f.weight_per_gpu + f.reserve)}, more than the {_gib(spec.memory_bytes)} of a "
                      f"{spec.name}{_fit_hint(shape, gpu, tp, pp, quant, max_seq_len)}")
    elif f.kv_tokens < max_seq_len:
        errors.append(f"after weights ({_gib(f.weight_per_gpu)}) and reserve ({_gib(f.reserve)}) a {spec.name} "
                      f"keeps {_gib(f.kv_cache)} for the KV cache = {f.kv_tokens:,} tokens, less than one "
                      f"sequence of {max_seq_len}{_fit_hint(shape, gpu, tp, pp, quant, max_seq_len)}")
    if errors:
        raise PlanError(errors)
    plan = Plan(model=shape, gpu_key=gpu, gpu=spec, tp=tp, pp=pp, quant=quant, kv_dtype=kv,
                max_seq_len=max_seq_len, max_batch_size=max_batch_size, max_num_tokens=max_num_tokens,
                kv_fraction=kv_fraction, num_params=shape.num_params, weight_bytes_total=f.weight_total,
                weight_bytes_per_gpu=f.weight_per_gpu, runtime_bytes=RUNTIME_OVERHEAD_BYTES,
                activation_bytes=f.activations, kv_bytes_per_token=shape.kv_bytes_per_token(kv),
                kv_bytes_per_token_per_gpu=f.kv_per_gpu_token, kv_cache_bytes_per_gpu=f.kv_cache,
                kv_tokens=f.kv_tokens, concurrent_sequences=f.kv_tokens // max_seq_len)
    if plan.concurrent_sequences < max_batch_size:
        plan.warnings.append(f"the KV cache holds {plan.concurrent_sequences} full-length sequences, fewer than "
                             f"max_batch_size {max_batch_size}: shorter requests share it, full-length ones queue")
    else:
        plan.warnings.append(f"max_batch_size {max_batch_size} caps the running sequences; the rest of the KV "
                             "cache keeps reusable prefixes (KV cache reuse)")
    if pp > 1:
        plan.warnings.append(f"PP{pp}: each token crosses {pp} pipeline stages; in-flight batching keeps them "
                             "busy with micro-batches, but a single stream is no faster than with TP alone")
    return plan


def valid_tp_sizes(shape: ModelShape) -> list[int]:
    return [t for t in range(1, GPUS_PER_NODE + 1)
            if shape.num_kv_heads % t == 0 and shape.num_heads % t == 0]


def _fit_hint(shape: ModelShape, gpu: str, tp: int, pp: int, quant: str, max_seq_len: int) -> str:
    """The smallest layouts that would fit, as advice (default sizes, same PP)."""
    options = []
    for q in dict.fromkeys((quant, "fp8", "int4_awq")):
        if q == "fp8" and not GPUS[gpu].fp8:
            continue
        for t in valid_tp_sizes(shape):
            if q == quant and t <= tp:
                continue
            f = _figures(shape, GPUS[gpu], t, pp, q, default_kv_dtype(q, shape.dtype),
                         MAX_BATCH_SIZE, TRTLLM_MAX_NUM_TOKENS, KV_CACHE_FREE_GPU_MEM_FRACTION)
            if f.free > 0 and f.kv_tokens >= max_seq_len:
                options.append(f"TP{t}" + ("" if q == quant else f" with QUANT={q}"))
                break
    return f"; try {' or '.join(options)}" if options else ""
