"""The model side of one engine step: the KV cache tensor, and the packed forward pass over the
scheduled sequences' new tokens (llama_triton/llama/model.py). The engine (engine.py) owns the
scheduling; this is the only code that turns sequences into tensors."""
from __future__ import annotations

import torch

from ..llama.model import AttentionMetadata, Llama
from .kv_cache import allocate_kv_cache, copy_blocks
from .sequence import Sequence


class ModelRunner:
    """Owns the model and the KV tensor; the only code that turns sequences into tensors."""

    def __init__(self, model: Llama, num_blocks: int, block_size: int) -> None:
        cfg = model.config
        self.model = model
        self.block_size = block_size
        self.kv_cache = allocate_kv_cache(cfg.num_hidden_layers, num_blocks, block_size,
                                          cfg.num_key_value_heads, cfg.head_dim, model.embed_tokens.weight.dtype)

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], num_new_tokens: list[int]) -> torch.Tensor:
        """Computes each seq's next num_new tokens; logits [N, vocab] of the seqs that reach their last token."""
        input_ids, chunks, last_rows, row = [], [], [], 0
        for seq, num_new in zip(seqs, num_new_tokens):
            start = seq.num_computed_tokens
            input_ids.extend(seq.token_ids[start:start + num_new])
            chunks.append((start, num_new, seq.block_table))
            row += num_new
            if start + num_new == seq.num_tokens:
                last_rows.append(row - 1)
        meta = AttentionMetadata.build(chunks, self.block_size)
        hidden = self.model(torch.tensor(input_ids, dtype=torch.long), meta, self.kv_cache)
        return self.model.compute_logits(hidden[last_rows])

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        copy_blocks(self.kv_cache, pairs)
