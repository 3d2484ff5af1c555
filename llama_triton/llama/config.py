"""Model hyper-parameters read from a Hugging Face `config.json` (Llama family)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0                             # linear, dynamic, llama3
    low_freq_factor: float = 1.0                    # llama3
    high_freq_factor: float = 4.0                   # llama3
    original_max_position_embeddings: Optional[int] = None  # llama3

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"unsupported rope type {self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}")
        if self.theta <= 0 or self.factor <= 0:
            raise ValueError("rope_theta and the rope scaling factor must be positive")
        if self.rope_type == "llama3" and self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "RopeConfig":
        """Both layouts: transformers 5 `rope_parameters` and the older `rope_theta` + `rope_scaling`."""
        params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type == "default":
            return cls(theta=theta)
        if "factor" not in params:
            raise ValueError(f"rope type {rope_type!r} needs a scaling factor")
        original = params.get("original_max_position_embeddings", hf.get("max_position_embeddings"))
        return cls(
            rope_type=rope_type,
            theta=theta,
            factor=float(params["factor"]),
            low_freq_factor=float(params.get("low_freq_factor", 1.0)),
            high_freq_factor=float(params.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=int(original) if original is not None else None,
        )


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: Optional[int] = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.head_dim % 2:
            raise ValueError("head_dim must be even for rotary embeddings")

    @property
    def macs_per_token(self) -> int:
        """Multiply-adds of the linear layers per token (attention over the context not counted)."""
        qkv_out = (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
        per_layer = self.hidden_size * (qkv_out + self.num_attention_heads * self.head_dim
                                        + 3 * self.intermediate_size)
        return self.num_hidden_layers * per_layer + self.hidden_size * self.vocab_size

    @classmethod
    def from_hf(cls, hf: dict[str, Any]) -> "ModelConfig":
        if hf.get("model_type") != "llama":
            raise ValueError(f"expected model_type 'llama', got {hf.get('model_type')!r}")
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}; Llama uses silu")
        num_heads = int(hf["num_attention_heads"])
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            vocab_size=int(hf["vocab_size"]),
            hidden_size=int(hf["hidden_size"]),
            intermediate_size=int(hf["intermediate_size"]),
            num_hidden_layers=int(hf["num_hidden_layers"]),
            num_attention_heads=num_heads,
            num_key_value_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hf["hidden_size"] // num_heads),
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope=RopeConfig.from_hf(hf),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=bool(hf.get("attention_bias", False)),
            mlp_bias=bool(hf.get("mlp_bias", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )
