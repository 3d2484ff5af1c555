"""The CPU decoder engine alone (no Triton): generated tokens/s at several concurrencies, against a
plain batched forward loop over the same model code, to show the engine's scheduling overhead.

Engine: `llama_triton.engine.Engine` driven by `step()` on this thread (no engine thread), N
requests submitted at once, greedy, fixed prompt and output lengths, streaming callbacks as the
Triton model uses them. Everything the engine does per step is counted: admission, chunked
prefill, block management, attention metadata, the sampler, stop checks, output callbacks.

Plain loop: the same `llama_triton.llama` model object, a fixed batch of the same N prompts,
one forward pass over all prompts (prefill), then decode steps with greedy argmax, on the same
KV tensor layout with each sequence's blocks laid out contiguously in advance: no scheduler, no
sampler, no block manager, no callbacks. tokens/s counts the first token (from prefill) too, as
the engine does.

Both use one torch thread (the engine config's num_threads=1, as the Triton model runs it). Each
point is measured --repeats times after a warm-up, an engine run and a plain run back to back
each time, with fresh random prompts (so the prefix cache never hits). tok/s is the best run
(the least disturbed by other load); the overhead ratio is the median of the back-to-back pairs'
ratios, in wall and in CPU time, which is steadier than a ratio of two separate statistics when
other processes share the cores. Writes benchmarks/results/engine/engine.json and engine.png.

    .venv/bin/python benchmarks/engine_bench.py [--model-dir var/models/llama2-tiny]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from benchmarks.common import DEFAULT_MODEL_DIR, ROOT, log, machine_info, plt, rel, save_fig, write_json
from llama_triton.engine.config import EngineConfig
from llama_triton.engine.engine import Engine
from llama_triton.engine.kv_cache import allocate_kv_cache
from llama_triton.engine.types import GenerationRequest, SamplingParams
from llama_triton.llama.model import AttentionMetadata

NAME = "engine"


def random_prompts(rng: np.random.Generator, n: int, length: int, vocab: int) -> list[list[int]]:
    return [[1] + rng.integers(100, vocab, length - 1).tolist() for _ in range(n)]


def run_engine(engine: Engine, prompts: list[list[int]], output_len: int, tag: str) -> dict[str, Any]:
    outputs: dict[str, list[int]] = {}

    def collect(out) -> None:
        if out.error:
            raise RuntimeError(f"{out.request_id}: {out.error}")
        outputs[out.request_id].extend(out.token_ids)

    steps0, decode0 = engine.num_steps, engine.num_decode_passes
    t0, c0 = time.perf_counter(), time.process_time()
    for i, ids in enumerate(prompts):
        rid = f"{tag}-{i}"
        outputs[rid] = []
        engine.submit(GenerationRequest(rid, ids, SamplingParams(max_new_tokens=output_len, temperature=0.0),
                                        streaming=True), collect)
    while engine.has_work:
        engine.step()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    tokens = [outputs[f"{tag}-{i}"] for i in range(len(prompts))]
    assert all(len(t) == output_len for t in tokens), [len(t) for t in tokens]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "steps": engine.num_steps - steps0,
            "decode_passes": engine.num_decode_passes - decode0}


@torch.inference_mode()
def run_plain(model, prompts: list[list[int]], output_len: int, block_size: int) -> dict[str, Any]:
    """Prefill once, then decode output_len - 1 steps; greedy argmax; contiguous blocks per sequence."""
    cfg = model.config
    n, prompt_len = len(prompts), len(prompts[0])
    blocks_per_seq = -(-(prompt_len + output_len) // block_size)
    kv = allocate_kv_cache(cfg.num_hidden_layers, n * blocks_per_seq, block_size, cfg.num_key_value_heads,
                           cfg.head_dim, model.embed_tokens.weight.dtype)
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    meta = AttentionMetadata.build([(0, prompt_len, tables[i]) for i in range(n)], block_size)
    hidden = model(torch.tensor([t for p in prompts for t in p], dtype=torch.long), meta, kv)
    last_rows = torch.arange(prompt_len - 1, n * prompt_len, prompt_len)
    next_ids = model.compute_logits(hidden[last_rows]).argmax(-1)
    generated = [next_ids]
    for step in range(1, output_len):
        meta = AttentionMetadata.build([(prompt_len + step - 1, 1, tables[i]) for i in range(n)], block_size)
        next_ids = model.compute_logits(model(next_ids, meta, kv)).argmax(-1)
        generated.append(next_ids)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    tokens = torch.stack(generated, 1).tolist()
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "steps": output_len, "decode_passes": output_len - 1}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model_dir = args.model_dir if os.path.isabs(args.model_dir) else str(ROOT / args.model_dir)

    machine = machine_info()
    # a 16384-token KV cache: EngineConfig's default when the committed results were measured (it
    # now takes the served decoder's, llama_triton/defaults.py)
    config = EngineConfig(max_batch_size=max(args.concurrency), max_num_tokens=16384, num_threads=1)
    log(f"loading {rel(model_dir)}; engine {config}")
    engine = Engine(model_dir, config)
    torch.set_num_threads(1)
    model, vocab = engine.model, engine.vocab_size
    rng = np.random.default_rng(args.seed)

    log("warm-up")
    for n in sorted(set(args.concurrency)):
        prompts = random_prompts(rng, n, args.prompt_len, vocab)
        run_engine(engine, prompts, min(8, args.output_len), f"warm{n}")
        run_plain(model, prompts, min(8, args.output_len), config.block_size)

    results = []
    for n in args.concurrency:
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "plain": []}
        matches = []
        for r in range(args.repeats):
            prompts = random_prompts(rng, n, args.prompt_len, vocab)
            e = run_engine(engine, prompts, args.output_len, f"c{n}r{r}")
            p = run_plain(model, prompts, args.output_len, config.block_size)
            runs["engine"].append(e)
            runs["plain"].append(p)
            matches.append(sum(a == b for a, b in zip(e["tokens"], p["tokens"])))
        tokens = n * args.output_len
        row: dict[str, Any] = {"concurrency": n, "generated_tokens": tokens}
        for kind, rs in runs.items():
            secs = [x["seconds"] for x in rs]
            cpu = [x["cpu_seconds"] for x in rs]
            row[f"{kind}_seconds"] = [round(s, 4) for s in secs]
            row[f"{kind}_cpu_seconds"] = [round(s, 4) for s in cpu]
            row[f"{kind}_tok_s"] = round(tokens / min(secs), 1)
            row[f"{kind}_tok_s_median"] = round(tokens / statistics.median(secs), 1)
            row[f"{kind}_tok_per_cpu_s"] = round(tokens / min(cpu), 1)
            row[f"{kind}_steps"] = rs[0]["steps"]
            row[f"{kind}_decode_passes"] = rs[0]["decode_passes"]
        row["ratio_engine_over_plain"] = round(row["engine_tok_s"] / row["plain_tok_s"], 3)
        row["ratio_engine_over_plain_median"] = round(row["engine_tok_s_median"] / row["plain_tok_s_median"], 3)
        row["ratio_engine_over_plain_cpu"] = round(row["engine_tok_per_cpu_s"] / row["plain_tok_per_cpu_s"], 3)
        # Paired: each engine run against the plain run right after it (same load, roughly), then
        # the median of those ratios. The steadiest of the three on a shared machine.
        row["ratio_engine_over_plain_paired"] = round(statistics.median(
            p["seconds"] / e["seconds"] for e, p in zip(runs["engine"], runs["plain"])), 3)
        row["ratio_engine_over_plain_paired_cpu"] = round(statistics.median(
            p["cpu_seconds"] / e["cpu_seconds"] for e, p in zip(runs["engine"], runs["plain"])), 3)
        # Same greedy tokens from both paths (float noise between batch shapes may flip a near-tie).
        row["identical_sequences"] = f"{sum(matches)}/{n * args.repeats}"
        results.append(row)
        log(f"concurrency {n:3d}: engine {row['engine_tok_s']:8.1f} tok/s ({row['engine_steps']} steps), "
            f"plain {row['plain_tok_s']:8.1f} tok/s; engine/plain: paired {row['ratio_engine_over_plain_paired']:.2f} "
            f"(CPU time {row['ratio_engine_over_plain_paired_cpu']:.2f}), best runs {row['ratio_engine_over_plain']:.2f}; "
            f"identical sequences {row['identical_sequences']}")

    data = {
        "benchmark": NAME,
        "description": "CPU engine alone vs a plain batched forward loop over the same model code (greedy)",
        "machine": machine,
        "config": {"model_dir": rel(model_dir), "prompt_len": args.prompt_len, "output_len": args.output_len,
                   "repeats": args.repeats, "torch_threads": 1,
                   "statistic": "tok_s: generated tokens / the fastest run's wall seconds (best of the repeats: "
                                "the run least disturbed by other load on a shared machine); tok_s_median: over "
                                "the median run; tok_per_cpu_s: over the fastest run's process CPU seconds; "
                                "ratio_engine_over_plain_paired(_cpu): median over repeats of plain seconds / "
                                "engine seconds of back-to-back runs (the steadiest estimate under other load)",
                   "engine": {k: getattr(config, k) for k in ("max_batch_size", "max_num_tokens", "block_size",
                                                               "prefill_chunk_size", "enable_prefix_reuse", "dtype")}},
        "results": results,
    }
    write_json(NAME, data)
    plot(results, args)
    return 0


def plot(results: list[dict[str, Any]], args) -> None:
    pyplot = plt()
    fig, (ax, ax2) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    xs = [r["concurrency"] for r in results]
    ax.plot(xs, [r["engine_tok_s"] for r in results], "o-", label="engine (scheduler, sampler, callbacks)")
    ax.plot(xs, [r["plain_tok_s"] for r in results], "s--", label="plain batched loop (argmax)")
    for r in results:
        ax.annotate(f"{r['engine_tok_s']:.0f}", (r["concurrency"], r["engine_tok_s"]), textcoords="offset points",
                    xytext=(0, -14), ha="center", fontsize=8)
        ax.annotate(f"{r['plain_tok_s']:.0f}", (r["concurrency"], r["plain_tok_s"]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrent sequences")
    ax.set_ylabel("generated tokens/s (best run)")
    ax.set_title(f"CPU engine vs plain loop (prompt {args.prompt_len}, output {args.output_len}, 1 thread)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    pos = np.arange(len(xs))
    for offset, key, label, color in ((-0.27, "ratio_engine_over_plain_paired", "paired runs, wall time", "#4c72b0"),
                                      (0.0, "ratio_engine_over_plain_paired_cpu", "paired runs, CPU time", "#dd8452"),
                                      (0.27, "ratio_engine_over_plain", "best runs, wall time", "#8fa9d6")):
        bars = ax2.bar(pos + offset, [r[key] for r in results], width=0.27, label=label, color=color)
        for b, r in zip(bars, results):
            ax2.annotate(f"{r[key]:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                         ha="center", va="bottom", fontsize=7)
    ax2.set_xticks(pos, [str(x) for x in xs])
    ax2.legend(fontsize=8, loc="lower right")
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_xlabel("concurrent sequences")
    ax2.set_ylabel("engine tok/s / plain tok/s")
    ax2.set_title("engine tok/s / plain tok/s (1.0 = no overhead)")
    save_fig(fig, NAME, f"{NAME}.png")


if __name__ == "__main__":
    sys.exit(main())
