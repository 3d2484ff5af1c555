"""Paged KV cache: the preallocated tensor and the BlockManager that hands out its blocks.

The BlockManager holds metadata only (free ids, ref counts, the prefix key map). A full block
whose K/V are computed gets a block key; a later sequence with the same leading tokens and the same
cache salt takes those blocks instead of prefilling them. Freed blocks keep their key and stay
reusable until the free list hands them out again (LRU).

Block keys are SHA-256 over the sequence's cache salt, the key of the block before it and the
block's tokens (`block_key`), as vLLM has done by default since v0.10.2 after GHSA-rm76-4mrf-v9r8:
a key commits to the whole chain, so a crafted prompt cannot collide into another chain's blocks
(Python's `hash()` of int tuples is deterministic and 64-bit; collisions can be computed). The
salt keeps tenants apart: the frontend sends one per API key (docs/OPERATIONS.md, "Tenants"), and
two requests share a cached block only when their salts are equal. benchmarks/block_hash.py
measures what a key costs per token.
"""
from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Optional

import torch

from .sequence import Sequence

_NO_HASH = b""          # a block without a key (not full, or not computed yet)
_UNSALTED = b"\x00"     # a sequence without a salt; salted roots are 9 bytes (b"\x01" + uint64)


def allocate_kv_cache(num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int,
                      head_dim: int, dtype: torch.dtype) -> torch.Tensor:
    # [2 (K, V), layers, num_blocks, block_size, kv_heads, head_dim]
    return torch.zeros(2, num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype=dtype)


def copy_blocks(kv_cache: torch.Tensor, pairs: list[tuple[int, int]]) -> None:
    if pairs:
        src = torch.tensor([s for s, _ in pairs])
        dst = torch.tensor([d for _, d in pairs])
        kv_cache[:, :, dst] = kv_cache[:, :, src]


def salt_root(salt: Optional[int]) -> bytes:
    """What a sequence's first block key is chained to: its cache salt (uint64), or none."""
    return _UNSALTED if salt is None else b"\x01" + (salt % (1 << 64)).to_bytes(8, "little")


def block_key(root: bytes, parent: bytes, token_ids: tuple[int, ...]) -> bytes:
    """SHA-256(salt root, parent key, tokens as int32): the key of one full block.

    The root is hashed into every block, not only the first, so that a key never depends on where
    a chain starts being reused. Lengths are fixed (root 1 or 9 bytes, parent 0 or 32), so the
    concatenation is unambiguous."""
    h = hashlib.sha256(root)
    h.update(parent)
    h.update(array("i", token_ids).tobytes())
    return h.digest()


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash = _NO_HASH
        self.token_ids: Optional[tuple[int, ...]] = None


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_reuse: bool) -> None:
        self.block_size = block_size
        self.enable_prefix_reuse = enable_prefix_reuse
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # evicted from the front
        self.hash_to_block: dict[bytes, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids)

    def blocks_needed(self, num_tokens: int, num_forks: int = 1) -> int:
        """Blocks a sequence of num_tokens takes at admission, with its fork copies."""
        reserve = (num_forks - 1) if num_tokens % self.block_size else 0
        return -(-num_tokens // self.block_size) + reserve

    # admission
    def can_allocate(self, seq: Sequence) -> bool:
        matched = self._match(seq)
        revived = sum(1 for block_id, _ in matched if self.blocks[block_id].ref_count == 0)
        needed = self.blocks_needed(seq.num_tokens, seq.num_forks) - len(matched) + revived
        return needed <= len(self.free_ids)

    def allocate(self, seq: Sequence) -> int:
        """Gives seq blocks for all its tokens; returns the number of tokens served from the cache."""
        assert not seq.block_table
        for block_id, h in self._match(seq):
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_ids[block_id]
            block.ref_count += 1
            seq.block_table.append(block_id)
            seq.block_hashes.append(h)
        num_reused = len(seq.block_table) * self.block_size
        while len(seq.block_table) * self.block_size < seq.num_tokens:
            seq.block_table.append(self._take_free())
        reserve = self.blocks_needed(seq.num_tokens, seq.num_forks) - len(seq.block_table)
        seq.reserved_blocks = [self._take_free() for _ in range(reserve)]
        seq.num_computed_tokens = num_reused
        return num_reused

    def free(self, seq: Sequence) -> None:
        # last blocks first, so a prefix chain is evicted from its tail
        for block_id in reversed(seq.block_table + seq.reserved_blocks):
            block = self.blocks[block_id]
            block.ref_count -= 1
            assert block.ref_count >= 0
            if block.ref_count == 0:
                self.free_ids[block_id] = None
                if block.hash == _NO_HASH:
                    self.free_ids.move_to_end(block_id, last=False)
        seq.reset_cache_state()

    # decode
    def can_append(self, seq: Sequence) -> bool:
        return len(seq.block_table) * self.block_size >= seq.num_tokens or len(self.free_ids) > 0

    def append(self, seq: Sequence) -> None:
        if len(seq.block_table) * self.block_size < seq.num_tokens:
            seq.block_table.append(self._take_free())

    # n > 1: children share the prompt's full blocks and get a copy of its partial last block
    def fork(self, parent: Sequence, child: Sequence) -> Optional[tuple[int, int]]:
        num_full = parent.num_computed_tokens // self.block_size
        for block_id in parent.block_table[:num_full]:
            self.blocks[block_id].ref_count += 1
        child.block_table = parent.block_table[:num_full]
        child.block_hashes = list(parent.block_hashes)
        child.num_computed_tokens = parent.num_computed_tokens
        if num_full == len(parent.block_table):
            return None
        copy = parent.reserved_blocks.pop()
        child.block_table.append(copy)
        return parent.block_table[num_full], copy

    def register_computed(self, seq: Sequence) -> None:
        """Hashes the full blocks whose K/V the last forward pass completed."""
        if not self.enable_prefix_reuse:
            return
        bs, root = self.block_size, salt_root(seq.cache_salt)
        for i in range(len(seq.block_hashes), seq.num_computed_tokens // bs):
            token_ids = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = block_key(root, seq.block_hashes[-1] if seq.block_hashes else _NO_HASH, token_ids)
            block = self.blocks[seq.block_table[i]]
            block.hash, block.token_ids = h, token_ids
            self.hash_to_block[h] = block.block_id
            seq.block_hashes.append(h)

    def _match(self, seq: Sequence) -> list[tuple[int, bytes]]:
        """Cached blocks for the leading full blocks of seq, never the block of its last token."""
        if not self.enable_prefix_reuse:
            return []
        bs, h, matched, root = self.block_size, _NO_HASH, [], salt_root(seq.cache_salt)
        for i in range((seq.num_tokens - 1) // bs):
            token_ids = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = block_key(root, h, token_ids)
            block_id = self.hash_to_block.get(h)
            # The token check is a second line: with SHA-256 keys it never fails in practice.
            if block_id is None or self.blocks[block_id].token_ids != token_ids:
                break
            matched.append((block_id, h))
        return matched

    def _take_free(self) -> int:
        block_id, _ = self.free_ids.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash != _NO_HASH:
            if self.hash_to_block.get(block.hash) == block_id:
                del self.hash_to_block[block.hash]
            block.hash, block.token_ids = _NO_HASH, None
        block.ref_count = 1
        return block_id
