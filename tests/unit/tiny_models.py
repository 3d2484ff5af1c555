"""The unit tests' tiny random Llama and torch thread setting, shared by the engine test modules."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import transformers


def tiny_llama(vocab_size: int = 1000) -> transformers.LlamaForCausalLM:
    """2 layers, GQA (4 heads, 2 KV heads), seeded; initializer_range 0.1 spreads the logits out,
    so greedy argmax has no near-ties."""
    cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.1)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny matmuls: torch's thread pool only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
