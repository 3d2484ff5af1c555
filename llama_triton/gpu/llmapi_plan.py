"""Sizing the LLM-API decoder: TensorRT-LLM's LLM (PyTorch backend) on TP x PP GPUs.

`make plan BACKEND=llmapi` (build/plan.py --backend llmapi). There is no engine build and no
quantisation step on this path: the LLM loads the checkpoint as it is stored, so the weights'
format is the checkpoint's, read from its files:

* a ModelOpt export (`hf_quant_config.json`: `quantization.quant_algo` FP8 or W4A16_AWQ, and
  `kv_cache_quant_algo` FP8 or INT8), which is how NVIDIA publishes pre-quantized checkpoints;
* or config.json's `quantization_config` (`quant_method` fp8, awq with 4 bits, modelopt with a
  `quant_algo`, or compressed-tensors with 8-bit float weights).

Then the arithmetic is the engine path's (llama_triton/gpu/plan.py): linear layers in the stored
format, embedding and LM head in 16 bits, the KV cache at `free_gpu_memory_fraction` of what is
left after weights and the reserve. The reserve is that module's estimate; the PyTorch backend
measures its activations with a profiling forward pass at max_num_tokens before it sizes the KV
cache, and logs what it allocated.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from llama_triton.gpu.plan import Plan, PlanError, make_plan

LLMAPI_RELEASE = "1.2.1"
# ModelOpt quant_algo -> our quantisation names (plan.QUANTS); KV algos -> plan.KV_DTYPE_BYTES keys.
MODELOPT_WEIGHTS = {"FP8": "fp8", "W4A16_AWQ": "int4_awq", "W4A8_AWQ": "int4_awq"}
MODELOPT_KV = {"FP8": "fp8", "INT8": "int8"}


@dataclass(frozen=True)
class CheckpointFormat:
    quant: str                      # none | fp8 | int4_awq
    kv_dtype: Optional[str]         # what the checkpoint asks for, None: the model's 16-bit type
    source: str                     # where it was read, for the plan's header


def checkpoint_format(model: str) -> Optional[CheckpointFormat]:
    """The stored format of a checkpoint directory; None for a name or a bare config.json."""
    path = Path(model)
    if not path.is_dir():
        return None
    hf_quant = path / "hf_quant_config.json"
    if hf_quant.is_file():
        q = json.loads(hf_quant.read_text()).get("quantization", {})
        return _modelopt(q.get("quant_algo"), q.get("kv_cache_quant_algo"), "hf_quant_config.json")
    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    qc = cfg.get("quantization_config")
    if not qc:
        return CheckpointFormat("none", None, "config.json (not quantized)")
    method = str(qc.get("quant_method", "")).lower()
    where = f"config.json quantization_config (quant_method {method})"
    if method == "modelopt":
        return _modelopt(qc.get("quant_algo"), qc.get("kv_cache_quant_algo"), where)
    if method == "fp8":
        return CheckpointFormat("fp8", None, where)
    if method == "awq" and int(qc.get("bits", qc.get("w_bit", 0)) or 0) == 4:
        return CheckpointFormat("int4_awq", None, where)
    if method == "compressed-tensors":
        weights = [g.get("weights", {}) for g in (qc.get("config_groups") or {}).values()]
        if weights and all(w.get("num_bits") == 8 and w.get("type") == "float" for w in weights):
            return CheckpointFormat("fp8", None, where)
    raise PlanError([f"{model}: {where} is a format this plan does not size (fp8, 4-bit AWQ or none)"])


def _modelopt(algo: Optional[str], kv_algo: Optional[str], where: str) -> CheckpointFormat:
    if algo is not None and algo not in MODELOPT_WEIGHTS:
        raise PlanError([f"{where}: quant_algo {algo} is not one this plan sizes ({', '.join(MODELOPT_WEIGHTS)})"])
    if kv_algo is not None and kv_algo not in MODELOPT_KV:
        raise PlanError([f"{where}: kv_cache_quant_algo {kv_algo} is not one this plan sizes "
                         f"({', '.join(MODELOPT_KV)})"])
    return CheckpointFormat(MODELOPT_WEIGHTS.get(algo, "none"), MODELOPT_KV.get(kv_algo),
                            f"{where}: quant_algo {algo}, kv_cache_quant_algo {kv_algo}")


@dataclass
class LlmApiPlan:
    plan: Plan
    stored: str                     # how the weights' format was decided

    def render(self) -> str:
        # The engine path's figures, under this path's target (its own target line says engines).
        body = [line for line in self.plan.render().splitlines() if not line.startswith("  target")]
        return "\n".join(body[:1] + [
            f"  target       TensorRT-LLM {LLMAPI_RELEASE} LLM API (PyTorch backend): no engine build, "
            "the checkpoint loads as stored",
            f"  checkpoint   {self.stored}",
        ] + body[1:])

    def to_dict(self) -> dict:
        d = self.plan.to_dict()
        d["backend"] = "llmapi"
        d["trtllm_release"] = LLMAPI_RELEASE
        d["checkpoint_format"] = self.stored
        return d


def make_llmapi_plan(model: str, shape, gpu: str, tp: int = 1, pp: int = 1, quant: str = "auto",
                     kv_dtype: Optional[str] = None, **limits) -> LlmApiPlan:
    """`quant` "auto": the checkpoint's format. Given explicitly for a checkpoint directory it must
    be the stored one (the LLM does not quantize when it loads); for a known name it says which
    pre-quantized checkpoint is meant."""
    stored = checkpoint_format(model)
    if stored is None:
        q = "none" if quant == "auto" else quant
        source = f"{q} weights: QUANT={q} says which checkpoint of {model} is meant (no files to read)"
        kv = kv_dtype
    else:
        if quant not in ("auto", stored.quant):
            raise PlanError([f"QUANT={quant}, but {model} stores {stored.quant} weights ({stored.source}): the "
                             "LLM API loads a checkpoint as stored; quantize it with ModelOpt first, or leave "
                             "QUANT unset"])
        if kv_dtype is not None and stored.kv_dtype is not None and kv_dtype != stored.kv_dtype:
            raise PlanError([f"KV_DTYPE={kv_dtype}, but {model} asks for a {stored.kv_dtype} KV cache ({stored.source})"])
        q, kv, source = stored.quant, kv_dtype or stored.kv_dtype, stored.source
    return LlmApiPlan(make_plan(shape, gpu, tp, pp, q, kv, **limits), source)
