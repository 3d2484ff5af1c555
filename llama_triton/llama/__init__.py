"""The Llama forward pass in plain PyTorch and Hugging Face checkpoint loading."""
from .config import ModelConfig, RopeConfig
from .loader import load_model
from .model import AttentionMetadata, Llama

__all__ = ["AttentionMetadata", "Llama", "ModelConfig", "RopeConfig", "load_model"]
