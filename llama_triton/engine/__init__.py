"""The CPU reference decoder: an in-flight batching engine over a paged KV cache."""
from .config import EngineConfig
from .engine import Engine
from .types import (GUIDE_TYPES, GenerationRequest, OutputCallback, QueueFull, RequestError, SamplingParams,
                    SequenceOutput)

__all__ = ["GUIDE_TYPES", "Engine", "EngineConfig", "GenerationRequest", "OutputCallback", "QueueFull",
           "RequestError", "SamplingParams", "SequenceOutput"]
