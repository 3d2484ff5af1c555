"""This box's sustainable memory read bandwidth, and the decode roofline it sets for a model.

A decode step at c=1 multiplies one row by every weight matrix: it must read all the weights
once, so tokens/s can be at most bandwidth / weight bytes per token. The bandwidth is measured
the way the decoder reads: torch (the same OpenMP thread pool, `threads` threads) streaming a buffer far
larger than the last-level cache with several kernels (a sum, a dot product, matrix-vector
products in float32 and bfloat16), interleaved passes; the fastest kernel's best pass is the
bandwidth, every kernel's best is reported beside it.

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


# Streaming reads of the whole buffer. No one kernel reads fastest everywhere: on a 2-core AMD
# EPYC (Zen 1) torch's sum read 11-13.6 GB/s on one thread while MKL's gemv streamed the decoder's
# weights at 14.9, so the bandwidth is the fastest of several, the decoder's own matrix-vector
# products over the same bytes among them (float32 and bfloat16: the fast one depends on the CPU).
KERNELS = ("sum float32", "dot float32", "mv float32", "mv bfloat16")
_ROW = 4096


def _kernels(buf):
    import torch
    halves = buf.view(2, -1)
    f32 = buf.view(-1, _ROW)
    bf16 = buf.view(torch.bfloat16).view(-1, _ROW)
    x32, x16 = torch.ones(_ROW), torch.ones(_ROW, dtype=torch.bfloat16)
    return {"sum float32": lambda: buf.sum(), "dot float32": lambda: torch.dot(halves[0], halves[1]),
            "mv float32": lambda: torch.mv(f32, x32), "mv bfloat16": lambda: torch.mv(bf16, x16)}


def read_bandwidth(threads: int, buffer_mib: Optional[int] = None, passes: int = 5) -> dict[str, Any]:
    """GB/s (1e9 bytes) of streaming reads with `threads` torch threads: the best of `passes`
    rounds over KERNELS, each round running every kernel once (interleaved)."""
    import torch
    llc = last_level_cache_bytes()
    if buffer_mib is None:
        buffer_mib = max(MIN_BUFFER_MIB, (llc or 0) * LLC_MULTIPLE // 2**20)
    buffer_mib -= buffer_mib % 16          # whole rows of _ROW floats
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        buf = torch.ones(buffer_mib * 2**20 // 4, dtype=torch.float32)   # written once: every page resident
        kernels = _kernels(buf)
        rates: dict[str, list[float]] = {k: [] for k in kernels}
        with torch.inference_mode():
            for fn in kernels.values():
                fn()                                                     # thread pool and first-call set-up
            for _ in range(passes):
                for name, fn in kernels.items():
                    t0 = time.perf_counter()
                    fn()
                    rates[name].append(buf.numel() * 4 / (time.perf_counter() - t0) / 1e9)
        del buf, kernels
    finally:
        torch.set_num_threads(before)
    best = {k: round(max(v), 2) for k, v in rates.items()}
    fastest = max(best, key=best.get)
    return {"gb_s": best[fastest], "kernel": fastest, "gb_s_median": round(statistics.median(rates[fastest]), 2),
            "gb_s_by_kernel": best, "threads": threads, "buffer_mib": buffer_mib,
            "last_level_cache_mib": round(llc / 2**20, 1) if llc else None,
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def weight_bytes_per_token(model_dir: str, dtype: str) -> int:
    """Bytes of weights one decode step reads: every linear layer and the LM head (the embedding
    table is read one row per token, the norms are a few KB)."""
    from llama_triton.llama.checkpoint import read_json_file
    from llama_triton.llama.config import ModelConfig
    from llama_triton.llama.dtype import DTYPES, resolve_dtype
    import torch
    element = torch.empty(0, dtype=DTYPES[resolve_dtype(dtype)]).element_size()
    return ModelConfig.from_hf(read_json_file(model_dir, "config.json")).macs_per_token * element


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
