"""Prefix-cache block keys (llama_triton/engine/kv_cache.py): SHA-256 chains, scoped by a cache salt.

Issue 25: blocks were keyed by Python's `hash()` of int tuples, which is deterministic and can be
made to collide, and a match checked only the block's own tokens, not its chain; the cache was
also shared by every tenant. These tests drive the BlockManager directly (no model)."""
from __future__ import annotations

import pytest

from llama_triton.engine import kv_cache
from llama_triton.engine.kv_cache import BlockManager
from llama_triton.engine.sequence import Sequence

BS = 4


def computed(bm: BlockManager, seq_id: int, tokens: list[int], salt=None) -> Sequence:
    """A sequence admitted, fully prefilled and registered, then finished: its blocks stay cached."""
    kw = {} if salt is None else {"cache_salt": salt}
    seq = Sequence(seq_id, f"r{seq_id}", 0, tokens, len(tokens), **kw)
    bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.register_computed(seq)
    bm.free(seq)
    return seq


def reused(bm: BlockManager, seq_id: int, tokens: list[int], salt=None) -> int:
    kw = {} if salt is None else {"cache_salt": salt}
    seq = Sequence(seq_id, f"r{seq_id}", 0, tokens, len(tokens), **kw)
    assert bm.can_allocate(seq)
    n = bm.allocate(seq)
    bm.free(seq)
    return n


A, B, C = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]


def test_colliding_tuple_hashes_never_share_a_block(monkeypatch):
    # Every Python tuple hash the cache could compute made equal: keys built on hash() collide, and
    # a prompt starting with block B would take the block B that was computed after A (wrong
    # positions, wrong context). SHA-256 keys commit to the chain, so nothing is shared.
    monkeypatch.setattr(kv_cache, "hash", lambda _obj: 42, raising=False)
    bm = BlockManager(16, BS, enable_prefix_reuse=True)
    computed(bm, 1, A + B + [0])
    assert reused(bm, 2, B + B + [0]) == 0
    assert reused(bm, 3, C + B + [0]) == 0
    assert reused(bm, 4, A + B + [0]) == 8          # the same chain still is


def test_the_salt_scopes_the_cache():
    bm = BlockManager(32, BS, enable_prefix_reuse=True)
    computed(bm, 1, A + B + C + [0], salt=111)
    assert reused(bm, 2, A + B + C + [0], salt=222) == 0        # another tenant: nothing
    assert reused(bm, 3, A + B + C + [0]) == 0                  # unsalted: nothing
    assert reused(bm, 4, A + B + [7, 7], salt=111) == 8          # the same tenant: its prefix
    computed(bm, 5, A + B + C + [0], salt=222)
    assert reused(bm, 6, A + B + C + [0], salt=222) == 12
    assert reused(bm, 7, A + B + C + [0], salt=111) == 12       # both copies live side by side


def test_block_keys_commit_to_salt_parent_and_tokens():
    block_key, salt_root = kv_cache.block_key, kv_cache.salt_root
    root = salt_root(5)
    k1 = block_key(root, b"", tuple(A))
    assert len(k1) == 32
    assert block_key(root, b"", tuple(A)) == k1
    assert block_key(salt_root(6), b"", tuple(A)) != k1
    assert block_key(salt_root(None), b"", tuple(A)) != k1
    assert block_key(root, k1, tuple(A)) != k1
    assert block_key(root, b"", tuple(B)) != k1
    # token ids are fixed-width: no two token lists share an encoding
    assert block_key(root, b"", (1, 256)) != block_key(root, b"", (256, 1))
    assert salt_root(0) != salt_root(None) and salt_root(-1) == salt_root((1 << 64) - 1)


@pytest.mark.parametrize("salt", [None, 3])
def test_forked_children_keep_the_salt(salt):
    bm = BlockManager(16, BS, enable_prefix_reuse=True)
    kw = {} if salt is None else {"cache_salt": salt}
    parent = Sequence(1, "r", 0, A + B + [0], 9, num_forks=2, **kw)
    bm.allocate(parent)
    parent.num_computed_tokens = parent.num_tokens
    bm.register_computed(parent)
    child = Sequence(2, "r", 1, A + B + [0], 9, **kw)
    bm.fork(parent, child)
    assert child.block_hashes == parent.block_hashes
    bm.free(parent)
    bm.free(child)
    assert reused(bm, 3, A + B + [0], salt=salt) == 8
