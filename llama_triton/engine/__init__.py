"""The CPU reference decoder: an in-flight batching engine over a paged KV cache.

`Engine` and `EngineConfig` are imported on first use (PEP 562): the frontend imports this package's
plain request types (`llama_triton.engine.types`), and importing the package must not load torch
and the model for it.
"""
from .types import (GUIDE_TYPES, DecoderEngine, GenerationRequest, OutputCallback, QueueFull, RequestError,
                    SamplingParams, SequenceOutput)

__all__ = ["GUIDE_TYPES", "DecoderEngine", "Engine", "EngineConfig", "GenerationRequest", "OutputCallback",
           "QueueFull", "RequestError", "SamplingParams", "SequenceOutput"]


def __getattr__(name: str):
    if name == "Engine":
        from .engine import Engine
        return Engine
    if name == "EngineConfig":
        from .config import EngineConfig
        return EngineConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
