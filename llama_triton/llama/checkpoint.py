"""The file set of a Hugging Face Llama checkpoint directory, checked before anything loads.

What a checkpoint on the hub holds (meta-llama/Llama-2-7b-chat-hf, for one): config.json,
generation_config.json, model.safetensors (or model-0000i-of-0000n.safetensors with
model.safetensors.index.json), the same weights again as pytorch_model*.bin, tokenizer.json and/or
tokenizer.model (SentencePiece), tokenizer_config.json (which may carry the chat template),
special_tokens_map.json, and licence/readme files. We read the safetensors weights and ignore the
.bin copies; a checkpoint with only .bin or Meta's consolidated.*.pth weights is refused with the
conversion to use. Every problem names the file it is about: `inspect_checkpoint` runs at
`llama-triton serve` start, so a bad directory fails in a second, not inside Triton's model load.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be served; the message names the file at fault."""


def read_json_file(model_dir: str, name: str, *, required: bool = True) -> Optional[dict[str, Any]]:
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        if required:
            raise CheckpointError(f"{name} is missing from {model_dir}")
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{name} in {model_dir} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{name} in {model_dir} must hold a JSON object, not {type(data).__name__}")
    return data


def weight_files(model_dir: str) -> list[str]:
    """The safetensors files to read: the shards an index names, or model.safetensors."""
    index_name = "model.safetensors.index.json"
    index = read_json_file(model_dir, index_name, required=False)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_name} in {model_dir} has no 'weight_map' of tensor name -> file")
        names = sorted(set(weight_map.values()))
        for name in names:
            if not isinstance(name, str) or os.path.basename(name) != name:
                raise CheckpointError(f"{index_name} in {model_dir} names an odd shard file {name!r}")
            if not os.path.isfile(os.path.join(model_dir, name)):
                raise CheckpointError(f"{name} (named in {index_name}) is missing from {model_dir}")
        return [os.path.join(model_dir, n) for n in names]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    others = sorted(os.path.basename(p) for pattern in ("pytorch_model*.bin", "consolidated*.pth", "*.gguf")
                    for p in glob.glob(os.path.join(model_dir, pattern)))
    if others:
        raise CheckpointError(
            f"{model_dir} has weights only as {', '.join(others[:4])}: the CPU decoder reads safetensors "
            "(model.safetensors or model.safetensors.index.json with its shards); convert with "
            "transformers: LlamaForCausalLM.from_pretrained(dir).save_pretrained(dir)")
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {model_dir}")


@dataclass
class CheckpointFiles:
    model_dir: str
    weights: list[str]
    tokenizer: str                                 # tokenizer.json or tokenizer.model
    chat_template: Optional[str]                   # the file that carries it, if any
    eos_token_ids: tuple[int, ...] = ()            # generation_config.json's, else config.json's
    notes: list[str] = field(default_factory=list)


def _eos_ids(value: Any, source: str, model_dir: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise CheckpointError(f"{source} in {model_dir}: eos_token_id must be a token id or a list of them, "
                              f"got {value!r}")
    return tuple(values)


def inspect_checkpoint(model_dir: str) -> CheckpointFiles:
    """Checks the file set (not the tensors: the loader checks those) and says what will be used."""
    if not os.path.isdir(model_dir):
        raise CheckpointError(f"checkpoint directory {model_dir} not found")
    config = read_json_file(model_dir, "config.json")
    from .config import ModelConfig  # here: config.py imports nothing of ours, but keep this module light
    try:
        model_config = ModelConfig.from_hf(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json in {model_dir}: {exc!r}") from None
    weights = weight_files(model_dir)

    has_json = os.path.isfile(os.path.join(model_dir, "tokenizer.json"))
    has_spm = os.path.isfile(os.path.join(model_dir, "tokenizer.model"))
    if not (has_json or has_spm):
        raise CheckpointError(f"{model_dir} has no tokenizer: neither tokenizer.json nor tokenizer.model")
    if not has_json:
        try:
            import sentencepiece  # noqa: F401  (transformers needs it to read tokenizer.model)
        except ImportError:
            raise CheckpointError(f"{model_dir} has only tokenizer.model, which needs the sentencepiece "
                                  "package (pip install sentencepiece)") from None

    tokenizer_config = read_json_file(model_dir, "tokenizer_config.json", required=False) or {}
    chat_template = None
    if os.path.isfile(os.path.join(model_dir, "chat_template.jinja")):
        chat_template = "chat_template.jinja"
    elif "chat_template" in tokenizer_config:
        template = tokenizer_config["chat_template"]
        named = isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("template"), str)
                                                   for t in template)
        if not (isinstance(template, str) or named):
            raise CheckpointError(f"tokenizer_config.json in {model_dir}: chat_template must be a string or a "
                                  "list of {name, template} objects")
        chat_template = "tokenizer_config.json"

    generation = read_json_file(model_dir, "generation_config.json", required=False)
    eos = _eos_ids(generation.get("eos_token_id"), "generation_config.json", model_dir) if generation else ()
    eos = eos or model_config.eos_token_ids
    for token_id in eos:
        if token_id >= model_config.vocab_size:
            raise CheckpointError(f"eos_token_id {token_id} in {model_dir} is outside the vocabulary "
                                  f"({model_config.vocab_size} ids in config.json)")
    return CheckpointFiles(model_dir, weights, "tokenizer.json" if has_json else "tokenizer.model",
                           chat_template, eos)
