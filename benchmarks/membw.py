"""This box's sustainable memory read bandwidth, and the decode roofline it sets for a model.

A decode step at c=1 multiplies one row by every weight matrix: it must read all the weights
once, so tokens/s can be at most bandwidth / weight bytes per token. The bandwidth is measured
the way the decoder reads: torch (the same OpenMP thread pool, `threads` threads) reducing a
float32 buffer far larger than the last-level cache, several passes, best and median reported.

    .venv/bin/python -m benchmarks.membw [--threads N] [--buffer-mib M]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MIN_BUFFER_MIB = 1024
LLC_MULTIPLE = 64       # the buffer is at least this many times the last-level cache


def last_level_cache_bytes() -> Optional[int]:
    """Largest cache of cpu0 from sysfs (Linux); None elsewhere."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes = []
    for index in base.glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes) if sizes else None


def read_bandwidth(threads: int, buffer_mib: Optional[int] = None, passes: int = 7) -> dict[str, Any]:
    """GB/s (1e9 bytes) of a streaming read with `threads` torch threads."""
    import torch
    llc = last_level_cache_bytes()
    if buffer_mib is None:
        buffer_mib = max(MIN_BUFFER_MIB, (llc or 0) * LLC_MULTIPLE // 2**20)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(buffer_mib * 2**20 // 4, dtype=torch.float32)   # written once: every page resident
        buf.sum()                                                        # warm the thread pool
        seconds = []
        for _ in range(passes):
            t0 = time.perf_counter()
            buf.sum()
            seconds.append(time.perf_counter() - t0)
        nbytes = buf.numel() * 4
        del buf
    finally:
        torch.set_num_threads(before)
    rates = sorted(nbytes / s / 1e9 for s in seconds)
    return {"gb_s": round(rates[-1], 2), "gb_s_median": round(statistics.median(rates), 2),
            "gb_s_passes": [round(r, 2) for r in rates], "threads": threads, "buffer_mib": buffer_mib,
            "last_level_cache_mib": round(llc / 2**20, 1) if llc else None,
            "kernel": "torch.Tensor.sum over float32", "load_average": [round(x, 2) for x in os.getloadavg()]}


def weight_bytes_per_token(model_dir: str, dtype: str) -> int:
    """Bytes of weights one decode step reads: every linear layer and the LM head (the embedding
    table is read one row per token, the norms are a few KB)."""
    from llama_triton.llama.config import ModelConfig
    from llama_triton.llama.dtype import DTYPES, resolve_dtype
    import torch
    element = torch.empty(0, dtype=DTYPES[resolve_dtype(dtype)]).element_size()
    return ModelConfig.from_model_dir(model_dir).macs_per_token * element


def roofline(bandwidth: dict[str, Any], model_dir: str, dtype: str, c1: Optional[dict]) -> dict[str, Any]:
    """The weight-read limit and where ours at c=1 stands: decode tok/s is 1,000 / TPOT p50 (the
    time per output token after the first, the decode step as the client sees it); end to end
    (output tok/s of the run, prefill included) alongside."""
    from llama_triton.llama.dtype import resolve_dtype
    per_token = weight_bytes_per_token(model_dir, dtype)
    limit = bandwidth["gb_s"] * 1e9 / per_token
    out: dict[str, Any] = {"bandwidth_gb_s": bandwidth["gb_s"], "threads": bandwidth["threads"],
                           "dtype": resolve_dtype(dtype), "weight_bytes_per_token": per_token,
                           "roofline_tok_s": round(limit, 3), "c1_tpot_p50_ms": None, "c1_decode_tok_s": None,
                           "fraction": None, "c1_output_tok_s": None, "c1_output_fraction": None}
    tpot = ((c1 or {}).get("tpot_ms") or {}).get("p50")
    if tpot:
        out.update(c1_tpot_p50_ms=tpot, c1_decode_tok_s=round(1000 / tpot, 3), fraction=round(1000 / tpot / limit, 3))
    if c1 and c1.get("output_tokens_per_s"):
        out.update(c1_output_tok_s=c1["output_tokens_per_s"],
                   c1_output_fraction=round(c1["output_tokens_per_s"] / limit, 3))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--buffer-mib", type=int, default=None)
    args = ap.parse_args(argv)
    print(json.dumps(read_bandwidth(args.threads, args.buffer_mib), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
