"""What a SHA-256 prefix-cache block key costs per token (llama_triton/engine/kv_cache.py, issue 25).

The CPU decoder keys each full KV block by SHA-256(cache salt, parent key, the block's tokens);
it used Python's `hash()` of an int tuple, which is deterministic and can be made to collide. This
times both key functions on the same blocks, and the BlockManager's whole prefix lookup
(`can_allocate` + `allocate` + `register_computed` + `free`, i.e. a prompt admitted, computed and
finished) on a long prompt, per prompt token. Best of --repeats, one thread, nothing else running
in the process. Seconds on two cores.

    .venv/bin/python -m benchmarks.block_hash [--prompt-len 4096] [--block-sizes 16 32 64] [--repeats 9]
"""
from __future__ import annotations

import argparse
import random
import time

from benchmarks.common import bar_chart, log, machine_info, write_json
from llama_triton.engine.kv_cache import BlockManager, block_key, salt_root
from llama_triton.engine.sequence import Sequence

NAME = "block_hash"


def tuple_hash_chain(blocks: list[tuple[int, ...]]) -> None:
    """The key function the cache used before: hash((parent, tokens))."""
    h = -1
    for b in blocks:
        h = hash((h, b))


def sha256_chain(blocks: list[tuple[int, ...]]) -> None:
    root, h = salt_root(0x1234_5678_9ABC_DEF0), b""
    for b in blocks:
        h = block_key(root, h, b)


def best_ns(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        best = min(best, time.perf_counter_ns() - t0)
    return best


def admit_compute_finish(bm: BlockManager, tokens: list[int], salt: int, seq_id: int) -> int:
    seq = Sequence(seq_id, f"r{seq_id}", 0, tokens, len(tokens), cache_salt=salt)
    assert bm.can_allocate(seq)
    reused = bm.allocate(seq)
    seq.num_computed_tokens = seq.num_tokens
    bm.register_computed(seq)
    bm.free(seq)
    return reused


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt-len", type=int, default=4096)
    p.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    rng = random.Random(25)
    tokens = [rng.randrange(32000) for _ in range(a.prompt_len)]
    rows = []
    for bs in a.block_sizes:
        blocks = [tuple(tokens[i:i + bs]) for i in range(0, a.prompt_len - bs + 1, bs)]
        n = len(blocks) * bs
        old = best_ns(lambda: tuple_hash_chain(blocks), a.repeats) / n
        new = best_ns(lambda: sha256_chain(blocks), a.repeats) / n
        # The whole lookup path: a miss (first admission registers every block), then a hit.
        seq_ids = iter(range(10 ** 9))

        def miss():
            bm = BlockManager(a.prompt_len // bs + 8, bs, enable_prefix_reuse=True)
            admit_compute_finish(bm, tokens, 7, next(seq_ids))
        bm_hit = BlockManager(a.prompt_len // bs + 8, bs, enable_prefix_reuse=True)
        admit_compute_finish(bm_hit, tokens, 7, next(seq_ids))
        miss_ns = best_ns(miss, a.repeats) / a.prompt_len
        hit_ns = best_ns(lambda: admit_compute_finish(bm_hit, tokens, 7, next(seq_ids)), a.repeats) / a.prompt_len
        rows.append({"block_size": bs, "tuple_hash_ns_per_token": round(old, 2), "sha256_ns_per_token": round(new, 2),
                     "sha256_over_tuple_hash": round(new / old, 2),
                     "block_manager_miss_ns_per_token": round(miss_ns, 1),
                     "block_manager_hit_ns_per_token": round(hit_ns, 1)})
        log(f"block size {bs}: key tuple-hash {old:.1f} ns/token, SHA-256 {new:.1f} ns/token ({new / old:.1f}x); "
            f"whole admission {miss_ns:.0f} ns/token (miss), {hit_ns:.0f} (hit)")
    write_json(NAME, {"machine": machine_info(), "config": vars(a), "results": rows})
    labels = [f"bs {r['block_size']}\n{k}" for r in rows for k in ("hash()", "SHA-256")]
    values = [v for r in rows for v in (r["tuple_hash_ns_per_token"], r["sha256_ns_per_token"])]
    bar_chart(NAME, f"{NAME}.png", f"Prefix-cache block key, ns per prompt token ({a.prompt_len}-token prompt)",
              labels, values, "ns / token", annotate="{:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
