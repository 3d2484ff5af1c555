"""The CPU engine alone on the 1.1B model: before/after ratios in one run, and where the time goes.

Configurations, loaded one at a time and run in rounds (A B C A B C ...) so that each ratio
compares runs made under the same background load:

* before: float32 weights and KV, one torch thread (the decoder as Triton ran it before --dtype);
* bf16-1t: bfloat16, one thread (the dtype's share of the change);
* after: bfloat16, threads auto (every core for a model this size: the Triton default now).

Each round drives `Engine.step()` on this thread (as engine_bench.py does) for c=1 (one request)
and c=8 (eight at once), 128-token prompts, 32 greedy output tokens, and records output tok/s,
TTFT and inter-token gaps (time from submit / between a request's streamed outputs), wall and
process CPU seconds. Then a torch.profiler table of one c=1 and one c=8 decode step of `after`.
Writes benchmarks/results/real-size-engine/real-size-engine.json.

    .venv/bin/python -m benchmarks.real_size_engine [--rounds 2] [--configs before,bf16-1t,after]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from benchmarks.common import ROOT, log, machine_info, write_json
from benchmarks.real_size import MODEL_DIR, build_model
from llama_triton.engine.config import EngineConfig
from llama_triton.engine.engine import Engine
from llama_triton.engine.types import GenerationRequest, SamplingParams

NAME = "real-size-engine"
CONFIGS = {"before": ("float32", 1), "bf16-1t": ("bfloat16", 1), "after": ("bfloat16", 0)}


def run(engine: Engine, prompts: list[list[int]], output_len: int, tag: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    seen: dict[str, list[float]] = {}

    def collect(out) -> None:
        if out.error:
            raise RuntimeError(out.error)
        if out.token_ids:
            seen.setdefault(out.request_id, []).append(time.perf_counter())

    c0 = time.process_time()
    for i, ids in enumerate(prompts):
        engine.submit(GenerationRequest(f"{tag}-{i}", ids, SamplingParams(max_new_tokens=output_len, temperature=0.0),
                                        streaming=True), collect)
    while engine.has_work:
        engine.step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ttft = [ts[0] - t0 for ts in seen.values()]
    gaps = [b - a for ts in seen.values() for a, b in zip(ts, ts[1:])]
    tokens = sum(len(ts) for ts in seen.values())
    return {"tok_s": tokens / wall, "tok_per_cpu_s": tokens / cpu, "ttft_ms_p50": 1e3 * statistics.median(ttft),
            "itl_ms_p50": 1e3 * statistics.median(gaps) if gaps else None, "wall_s": wall, "cpu_s": cpu}


def profile_decode(engine: Engine, prompts: list[list[int]]) -> list[dict[str, Any]]:
    """Self CPU time per op over one decode step with len(prompts) running sequences."""
    for i, ids in enumerate(prompts):
        engine.submit(GenerationRequest(f"prof{len(prompts)}-{i}", ids, SamplingParams(max_new_tokens=4, temperature=0.0),
                                        streaming=True), lambda out: None)
    while engine.num_running < len(prompts) or engine.num_waiting:   # prefill first
        engine.step()
    engine.step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        engine.step()
    while engine.has_work:
        engine.step()
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return [{"op": e.key, "calls": e.count, "self_ms": round(e.self_cpu_time_total / 1e3, 2),
             "share": round(e.self_cpu_time_total / total, 3)} for e in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=MODEL_DIR)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=32)
    args = ap.parse_args(argv)
    build_model(ROOT / args.model_dir)
    model_dir = str(ROOT / args.model_dir)
    rng = np.random.default_rng(0)
    prompts = {c: [[1] + rng.integers(100, 32000, args.prompt_len - 1).tolist() for _ in range(c)] for c in (1, 8)}
    results: dict[str, list[dict]] = {name: [] for name in args.configs.split(",")}
    profiles: dict[str, Any] = {}
    for r in range(args.rounds):
        for name in results:
            dtype, threads = CONFIGS[name]
            t0 = time.perf_counter()
            engine = Engine(model_dir, EngineConfig(max_batch_size=16, max_num_tokens=8192, max_seq_len=2048,
                                                    dtype=dtype, num_threads=threads))
            load_s = time.perf_counter() - t0
            run(engine, prompts[1], 4, f"warm{r}")
            row = {"round": r, "load_s": round(load_s, 1), "threads": torch.get_num_threads()}
            for c in (1, 8):
                m = run(engine, prompts[c], args.output_len, f"{name}{r}c{c}")
                row.update({f"c{c}_{k}": round(v, 2) if v is not None else None for k, v in m.items()})
            log(f"round {r} {name}: " + ", ".join(f"{k} {v}" for k, v in row.items()))
            results[name].append(row)
            if name == "after" and r == args.rounds - 1:
                profiles = {f"decode_c{c}": profile_decode(engine, prompts[c]) for c in (1, 8)}
            del engine
            gc.collect()

    ratios = {}
    if "before" in results and "after" in results:
        for key in ("c1_tok_s", "c1_tok_per_cpu_s", "c8_tok_s", "c8_tok_per_cpu_s"):
            ratios[f"{key} after/before"] = round(statistics.median(
                a[key] / b[key] for a, b in zip(results["after"], results["before"])), 2)
        for key in ("c1_ttft_ms_p50", "c1_itl_ms_p50", "c8_ttft_ms_p50"):
            ratios[f"{key} before/after"] = round(statistics.median(
                b[key] / a[key] for a, b in zip(results["after"], results["before"])), 2)
    log(f"ratios (median over rounds): {ratios}")
    for k, rows in profiles.items():
        log(f"profile {k}: " + "; ".join(f"{x['op']} {x['share']:.0%}" for x in rows[:6]))
    write_json(NAME, {"benchmark": NAME, "machine": machine_info(),
                      "setup": {"model_dir": args.model_dir, "prompt_len": args.prompt_len,
                                "output_len": args.output_len, "configs": {k: CONFIGS[k] for k in results}},
                      "results": results, "ratios": ratios, "profiles": profiles})
    return 0


if __name__ == "__main__":
    sys.exit(main())
