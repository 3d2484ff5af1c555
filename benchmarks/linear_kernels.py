"""The decoder's linear-layer kernels side by side on the 1.1B model's weight shapes.

For each weight shape of TinyLlama (qkv 2560x2048, o 2048x2048, gate/up 11264x2048, down
2048x5632, LM head 32000x2048) and row count (1: one decoding sequence; 8: c=8 decoding; 128: a
prefill chunk), the kernels of llama_triton/llama/linear.py:

  mv         torch.mv on the dense weight (one row only)
  linear     F.linear(x, W): what the decoder did before
  swapped    (W @ x^T)^T on the same dense weight
  prepacked  oneDNN's blocked weight (torch.ops.mkldnn._reorder_linear_weight), where oneDNN runs
             the dtype (bf16 needs AVX512-BF16 or AMX)

Rounds interleave the kernels (A B C D A B C D ...) so other load hits each alike; the best round
counts, in wall time and in process CPU time. Per row count it also sums one decode step of the
whole model (22 layers of each shape plus the LM head) and gives the weight bytes read per
second, to set beside benchmarks/membw.py's bandwidth. Results:
benchmarks/results/linear-kernels/linear-kernels.json (`--name` changes the folder).

    .venv/bin/python -m benchmarks.linear_kernels [--dtype bfloat16|float32] [--threads N] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn.functional as F

from benchmarks.common import log, machine_info, write_json
from llama_triton.llama.linear import prepacked_supported

NAME = "linear-kernels"
LAYERS = 22
SHAPES = {"qkv": (2560, 2048), "o": (2048, 2048), "gate_up": (11264, 2048), "down": (2048, 5632),
          "lm_head": (32000, 2048)}
PER_STEP = {"qkv": LAYERS, "o": LAYERS, "gate_up": LAYERS, "down": LAYERS, "lm_head": 1}


def kernels(weight: torch.Tensor, packed: Optional[torch.Tensor], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {}
    if x.shape[0] == 1:
        out["mv"] = lambda: torch.mv(weight, x[0])
    out["linear"] = lambda: F.linear(x, weight)
    out["swapped"] = lambda: torch.mm(weight, x.t()).t().contiguous()
    if packed is not None:
        out["prepacked"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return out


def measure(dtype: torch.dtype, rows_list: list[int], rounds: int) -> list[dict[str, Any]]:
    results = []
    can_pack = prepacked_supported(dtype) is None
    for name, (n, k) in SHAPES.items():
        weight = torch.randn(n, k, generator=torch.Generator().manual_seed(0)).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, None) if can_pack else None
        for rows in rows_list:
            x = torch.randn(rows, k, generator=torch.Generator().manual_seed(1)).to(dtype)
            fns = kernels(weight, packed, x)
            wall = {kname: float("inf") for kname in fns}
            cpu = dict(wall)
            with torch.inference_mode():
                for fn in fns.values():
                    fn()                                  # warm-up: first-call setup out of the rounds
                for _ in range(rounds):
                    for kname, fn in fns.items():
                        t0, c0 = time.perf_counter(), time.process_time()
                        fn()
                        wall[kname] = min(wall[kname], time.perf_counter() - t0)
                        cpu[kname] = min(cpu[kname], time.process_time() - c0)
            row = {"shape": name, "out_features": n, "in_features": k, "rows": rows,
                   "wall_ms": {kn: round(v * 1e3, 3) for kn, v in wall.items()},
                   "cpu_ms": {kn: round(v * 1e3, 3) for kn, v in cpu.items()}}
            log(f"{name:8s} rows {rows:4d}: " + ", ".join(f"{kn} {v * 1e3:.2f} ms" for kn, v in wall.items()))
            results.append(row)
        del weight, packed
    return results


def per_step(results: list[dict], dtype: torch.dtype) -> list[dict[str, Any]]:
    """One forward pass of the whole model per kernel and row count: time and weight GB/s."""
    element = torch.empty(0, dtype=dtype).element_size()
    weight_bytes = sum(PER_STEP[s] * n * k for s, (n, k) in SHAPES.items()) * element
    out = []
    for rows in sorted({r["rows"] for r in results}):
        mine = [r for r in results if r["rows"] == rows]
        names = set.intersection(*(set(r["wall_ms"]) for r in mine))
        for kname in sorted(names):
            wall = sum(PER_STEP[r["shape"]] * r["wall_ms"][kname] for r in mine)
            cpu = sum(PER_STEP[r["shape"]] * r["cpu_ms"][kname] for r in mine)
            out.append({"rows": rows, "kernel": kname, "step_wall_ms": round(wall, 1), "step_cpu_ms": round(cpu, 1),
                        "weight_gb_s": round(weight_bytes / (wall / 1e3) / 1e9, 2)})
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 where the CPU has native bf16, else float32")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--rows", default="1,8,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    from llama_triton.llama.dtype import DTYPES, resolve_dtype
    dtype_name = resolve_dtype(args.dtype)
    dtype = DTYPES[dtype_name]
    torch.set_num_threads(args.threads)
    results = measure(dtype, [int(r) for r in args.rows.split(",")], args.rounds)
    steps = per_step(results, dtype)
    for s in steps:
        log(f"whole step, rows {s['rows']:4d}, {s['kernel']:9s}: {s['step_wall_ms']:8.1f} ms wall, "
            f"{s['step_cpu_ms']:8.1f} ms CPU, weights at {s['weight_gb_s']} GB/s")
    write_json(args.name, {"benchmark": NAME, "machine": machine_info(),
                           "setup": {"dtype": dtype_name, "threads": args.threads, "rounds": args.rounds,
                                     "prepacked": prepacked_supported(dtype) or "available"},
                           "results": results, "per_step": steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
