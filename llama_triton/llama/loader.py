"""Load a Hugging Face Llama checkpoint (safetensors, single file or sharded) into `Llama`.

Tensors are converted to the serving dtype once, here, as they are copied into the model's own
(fused) parameters: a bf16 or fp16 file served in bf16 is copied without conversion, and nothing is
converted per step. Problems name the file they come from (see `checkpoint.py` for the file set).
"""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open

from .checkpoint import CheckpointError, read_json_file, weight_files
from .config import ModelConfig
from .dtype import DTYPES, resolve_dtype
from .model import Llama

# tensor dtypes a Llama checkpoint may hold; anything else (int8, fp8, ...) is a quantized format
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# checkpoint projection -> (our fused parameter, shard index); shards are concatenated on dim 0
_PACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def checkpoint_files(model_dir: str) -> list[str]:
    return weight_files(model_dir)


def _shard_sizes(model: Llama, fused: str) -> list[int]:
    cfg = model.config
    if fused == "qkv_proj":
        return [cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim,
                cfg.num_key_value_heads * cfg.head_dim]
    return [cfg.intermediate_size, cfg.intermediate_size]


def _target(model: Llama, name: str) -> tuple[str, int | None]:
    """Checkpoint tensor name -> (our parameter name, shard index or None)."""
    name = name.removeprefix("model.")
    for proj, (fused, shard) in _PACKED.items():
        if f".{proj}." in name:
            return name.replace(f".{proj}.", f".{fused}."), shard
    return name, None


def load_weights(model: Llama, model_dir: str) -> None:
    params = dict(model.named_parameters())
    expected: dict[str, int] = {}
    for name in params:
        fused = name.split(".")[-2]
        expected[name] = len(_shard_sizes(model, fused)) if fused in ("qkv_proj", "gate_up_proj") else 1
    seen: dict[str, set[int]] = {name: set() for name in params}
    with torch.no_grad():
        files = checkpoint_files(model_dir)
        for path in files:
            try:
                handle = safe_open(path, framework="pt")
            except Exception as exc:  # safetensors raises its own error type for a bad header
                raise CheckpointError(f"{os.path.basename(path)} is not a readable safetensors file: {exc}") from None
            with handle as f:
                for key in f.keys():
                    if _IGNORED.match(key) or (key == "lm_head.weight" and model.config.tie_word_embeddings):
                        continue
                    name, shard = _target(model, key)
                    if name not in params:
                        raise CheckpointError(f"unexpected tensor {key!r} in {os.path.basename(path)}")
                    param, tensor = params[name], f.get_tensor(key)
                    if tensor.dtype not in _FLOAT_DTYPES:
                        raise CheckpointError(f"{key} in {os.path.basename(path)} is {tensor.dtype}; only float32, "
                                              "bfloat16 and float16 checkpoints load (no quantized formats)")
                    if shard is None:
                        dst = param
                    else:
                        sizes = _shard_sizes(model, name.split(".")[-2])
                        dst = param.narrow(0, sum(sizes[:shard]), sizes[shard])
                    if tuple(dst.shape) != tuple(tensor.shape):
                        raise CheckpointError(f"{key} in {os.path.basename(path)}: shape {tuple(tensor.shape)}, "
                                              f"config.json implies {tuple(dst.shape)}")
                    dst.copy_(tensor)  # converts to the serving dtype in the same pass
                    seen[name].add(shard or 0)
    missing = [n for n in params if len(seen[n]) != expected[n]]
    if missing:
        raise CheckpointError(f"the weight files in {model_dir} ({', '.join(os.path.basename(p) for p in files)}) "
                              f"lack: {', '.join(missing[:8])}")


def load_model(model_dir: str, dtype: str = "float32") -> Llama:
    """dtype: float32, bfloat16, float16 or auto (`dtype.resolve_dtype`): what weights and KV are held in."""
    dtype = resolve_dtype(dtype)
    try:
        cfg = ModelConfig.from_hf(read_json_file(model_dir, "config.json"))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"config.json in {model_dir}: {exc!r}") from None
    # Parameters are created on the meta device and materialised once in the serving dtype, so a
    # 7B model never exists in fp32 on the way to bf16.
    with torch.device("meta"):
        model = Llama(cfg).to(DTYPES[dtype])
    model.to_empty(device="cpu")
    model.tie_weights()
    load_weights(model, model_dir)
    return model.eval().requires_grad_(False)
