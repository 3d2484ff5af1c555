"""The Llama forward pass in plain PyTorch and Hugging Face checkpoint loading.

Exports resolve on first use, so that `llama_triton.llama.checkpoint` (the launcher's check of a
checkpoint's files) and `.config` import without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ModelConfig": ".config", "RopeConfig": ".config", "load_model": ".loader",
            "AttentionMetadata": ".model", "Llama": ".model"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
