"""Load a Hugging Face Llama checkpoint (safetensors, single file or sharded) into `Llama`."""
from __future__ import annotations

import json
import os
import re

import torch
from safetensors import safe_open

from .config import ModelConfig
from .model import Llama

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# checkpoint projection -> (our fused parameter, shard index); shards are concatenated on dim 0
_PACKED = {
    "q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def checkpoint_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, n) for n in names]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")


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
        for path in checkpoint_files(model_dir):
            with safe_open(path, framework="pt") as f:
                for key in f.keys():
                    if _IGNORED.match(key) or (key == "lm_head.weight" and model.config.tie_word_embeddings):
                        continue
                    name, shard = _target(model, key)
                    if name not in params:
                        raise ValueError(f"unexpected tensor {key!r} in {os.path.basename(path)}")
                    param, tensor = params[name], f.get_tensor(key)
                    if shard is None:
                        dst = param
                    else:
                        sizes = _shard_sizes(model, name.split(".")[-2])
                        dst = param.narrow(0, sum(sizes[:shard]), sizes[shard])
                    if tuple(dst.shape) != tuple(tensor.shape):
                        raise ValueError(f"{key}: checkpoint shape {tuple(tensor.shape)}, model expects {tuple(dst.shape)}")
                    dst.copy_(tensor.to(param.dtype))
                    seen[name].add(shard or 0)
    missing = [n for n in params if len(seen[n]) != expected[n]]
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks weights for: {', '.join(missing[:8])}")


def load_model(model_dir: str, dtype: str = "float32") -> Llama:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    cfg = ModelConfig.from_model_dir(model_dir)
    with torch.device("meta"):
        model = Llama(cfg).to(DTYPES[dtype])
    model.to_empty(device="cpu")
    model.tie_weights()
    load_weights(model, model_dir)
    return model.eval().requires_grad_(False)
