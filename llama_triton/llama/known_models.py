"""The Llama checkpoints known by name, for what must work without their weights: the GPU sizing
plan (their shapes ship as llama_triton/gpu/configs/<name>.json) and the LLM-API decoder's dry run
(which may name their Hugging Face checkpoint instead of a local directory)."""
from __future__ import annotations

from typing import Optional

KNOWN_MODELS = ("llama-2-7b", "llama-2-70b")
HF_IDS = {"llama-2-7b": "meta-llama/Llama-2-7b-chat-hf", "llama-2-70b": "meta-llama/Llama-2-70b-chat-hf"}


def known_model_key(model: str) -> Optional[str]:
    """`model`'s known name (meta-llama/Llama-2-70b-chat-hf is llama-2-70b), or None."""
    key = model.strip().lower().rsplit("/", 1)[-1]
    for suffix in ("-hf", "-chat"):
        key = key[: -len(suffix)] if key.endswith(suffix) else key
    return key if key in KNOWN_MODELS else None
