"""Our CPU decoder against vLLM-CPU (bf16) on a 1.1B-parameter model: issue 18's table.

Builds TinyLlama's shape with random weights once (var/models/tinyllama-1.1b-random: hidden 2048,
intermediate 5632, 22 layers, 32 heads, 4 KV heads, Llama-2 vocabulary, bf16 file, ~2.2 GB) with
build/make_default_model.py, then serves it with each target in turn (never two at once) and runs
the same streamed chat workload through benchmarks/openai_load.py: c=1 and c=8, 128-token
prompts, 32 output tokens (EOS ignored). Targets: ours (`llama-triton serve --dtype bfloat16`),
vLLM-CPU (`--dtype bfloat16`, installed into var/peers/ by benchmarks/peer_setup.py the first
time, ~10 minutes), and llama.cpp at c=1 when it is installed (GGUF bf16). Each server gets the
same threads (default: every core this process may run on).

Each point runs `--runs` times (default 2) and the better run (higher output tok/s, no errors)
counts. In the same run it measures this box's memory read bandwidth with the decoder's thread
count (benchmarks/membw.py: before our server starts and after the last target stops; the higher
counts) and reports our c=1 decode rate as a fraction of the weight-read roofline, bandwidth /
weight bytes per token. Issue 27's goals, met or not with their numbers, go into the JSON's
`goals` (benchmarks/goals.py).

It also records the resident memory (RSS) of our decoder process, Triton's
triton_python_backend_stub, with the model loaded in bf16 and in fp32.

Writes benchmarks/results/real-size/real-size.json and real-size.png.

    .venv/bin/python -m benchmarks.real_size [--targets ours,vllm,llama.cpp] [--no-install]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import goals, membw, peer_setup
from benchmarks.common import ROOT, log, machine_info, plt, save_fig, start_stack, write_json
from benchmarks.openai_load import LoadConfig, describe, run_load, strip_samples
from benchmarks.workload import Length, make_requests
from llama_triton.llama.dtype import resolve_dtype

NAME = "real-size"
RSS_KV_TOKENS = 8192
MODEL_DIR = "var/models/tinyllama-1.1b-random"
TINYLLAMA_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32, num_kv_heads=4,
                       max_position_embeddings=2048)


def build_model(out: Path, dtype: str = "bfloat16") -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import load_build_script  # the one importer of build/ scripts
    return load_build_script("make_default_model").build_model(out, dtype=dtype, **TINYLLAMA_SHAPE)


def decoder_rss_mb(stack) -> Optional[dict[str, float]]:
    """Resident memory of this stack's decoder: the triton_python_backend_stub serving the
    tensorrt_llm model, found among the launcher's descendants (other stacks on the machine have
    their own stubs). MB, total and split into anonymous memory (weights, KV cache, heap) and
    file-backed pages (shared libraries, mapped files)."""
    import psutil
    try:
        procs = psutil.Process(stack.proc.pid).children(recursive=True)
    except psutil.Error:
        return None
    for p in procs:
        try:
            cmd = p.cmdline()
            if cmd and "triton_python_backend_stub" in cmd[0] and any("tensorrt_llm" in a for a in cmd):
                status = {}
                with open(f"/proc/{p.pid}/status", encoding="utf-8") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        if key in ("VmRSS", "RssAnon", "RssFile"):
                            status[key] = round(int(value.split()[0]) / 1024, 1)
                return {"rss": status.get("VmRSS"), "anon": status.get("RssAnon"), "file": status.get("RssFile"),
                        "pid": p.pid}
        except (psutil.Error, OSError):
            continue
    return None


class _Ours:
    name = "ours"
    ignore_eos = "min_tokens"

    def __init__(self, model_dir: str, dtype: str, threads: int, matmul: str = "auto"):
        self.stack = start_stack(model_dir, work_name=f"real-size-{dtype}",
                                 extra=("--dtype", dtype, "--decoder-threads", str(threads), "--decoder-matmul", matmul))
        self.base_url = self.stack.api_url
        self.model_name = self.stack.model_name
        self.notes = f"llama-triton serve --dtype {dtype} --decoder-threads {threads} --decoder-matmul {matmul}"

    def stop(self) -> None:
        self.stack.stop()


def start(target: str, model_dir: str, threads: int, install: bool, ours_dtype: str = "bfloat16",
          ours_matmul: str = "auto", vllm_dtype: str = "bfloat16"):
    if target == "ours":
        return _Ours(model_dir, ours_dtype, threads, ours_matmul)
    if target == "vllm":
        if install and not peer_setup.vllm_installed():
            rep = peer_setup.install_vllm()
            if not rep.ok:
                raise peer_setup.PeerUnavailable(f"install failed: {rep.message[-1500:]}")
        return peer_setup.start_vllm(model_dir, Path(model_dir).name, threads=threads, dtype=vllm_dtype,
                                       fallback=False)
    if target == "llama.cpp":
        if not peer_setup.llama_cpp_installed():
            raise peer_setup.PeerUnavailable("llama-cpp-python is not installed (python -m benchmarks.peer_setup llama.cpp)")
        return peer_setup.start_llama_cpp(model_dir, Path(model_dir).name, threads=threads, outtype="bf16")
    raise ValueError(target)


def measure_rss(model_dir: str) -> dict[str, Any]:
    """Decoder RSS with the model loaded (after one request), bf16 then fp32. The KV cache is
    allocated up front, so the stacks run with --max-num-tokens 8192 (the default 65536 would add
    1.5 GB in bf16, 3 GB in fp32); `kv_cache_mb` says what it adds."""
    import openai
    out = {}
    for dtype in ("bfloat16", "float32"):
        stack = start_stack(model_dir, work_name=f"real-size-rss-{dtype}",
                            extra=("--dtype", dtype, "--max-num-tokens", str(RSS_KV_TOKENS)))
        try:
            client = openai.OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=600)
            client.completions.create(model=stack.model_name, prompt="Hello", max_tokens=4)
            out[dtype] = decoder_rss_mb(stack)
            if out[dtype] is not None:
                # K and V, 22 layers, 4 KV heads x 64 dims, per token
                out[dtype]["kv_cache_mb"] = round(RSS_KV_TOKENS * 2 * 22 * 4 * 64 * (2 if dtype == "bfloat16" else 4)
                                                  / 2**20, 1)
            log(f"decoder RSS with {dtype} weights: {out[dtype]} MB")
        finally:
            stack.stop()
    return out


def run_seed(concurrency: int, run: int) -> int:
    return concurrency + 1000 * run


def point_requests(model_dir: str, prompt_len: str, output_len: str, runs: int) -> dict[tuple[int, int], list]:
    """The requests of each (concurrency, run). Each run gets prompts of its own: a second run of
    the same prompts would be served from the prefix cache (ours and vLLM's), and "the better run"
    would be the cached one."""
    return {(c, i): make_requests(model_dir, max(8, 2 * c), Length.parse(prompt_len), Length.parse(output_len),
                                  seed=run_seed(c, i))
            for c in (1, 8) for i in range(runs)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=MODEL_DIR)
    ap.add_argument("--targets", default="ours,vllm,llama.cpp")
    ap.add_argument("--prompt-len", default="128")
    ap.add_argument("--output-len", default="32")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--ours-dtype", default="auto", help="auto: bfloat16 on a CPU with native bf16, else float32")
    ap.add_argument("--ours-matmul", default="auto", choices=("auto", "plain", "swapped", "prepacked"),
                    help="our decoder's linear-layer kernels (--decoder-matmul)")
    ap.add_argument("--runs", type=int, default=2, help="runs per point; the better one counts")
    ap.add_argument("--max-duration", type=float, default=180.0)
    ap.add_argument("--no-install", action="store_true", help="leave vLLM out unless it is installed already")
    ap.add_argument("--vllm-dtype", default="auto",
                    help="vLLM's dtype; auto as ours: its bf16 has no native kernels on an AVX2-only CPU")
    ap.add_argument("--no-rss", action="store_true", help="skip the bf16/fp32 resident-memory measurement")
    ap.add_argument("--name", default=NAME, help="results/<name>/: another name keeps the default run's files")
    args = ap.parse_args(argv)
    args.vllm_dtype = resolve_dtype(args.vllm_dtype)     # the goal line and the JSON name what ran

    build_model(ROOT / args.model_dir)
    concurrency = {"ours": (1, 8), "vllm": (1, 8), "llama.cpp": (1,)}   # llama.cpp's server: one at a time
    specs = point_requests(args.model_dir, args.prompt_len, args.output_len, args.runs)
    targets: dict[str, dict] = {}
    results: list[dict] = []
    bandwidth: list[dict] = []
    t_begin = time.monotonic()
    for target in args.targets.split(","):
        if target == "ours":
            bandwidth.append(measure_bandwidth(args.threads, "before ours"))
        t0 = time.monotonic()
        try:
            server = start(target, args.model_dir, args.threads, not args.no_install, args.ours_dtype,
                           args.ours_matmul, args.vllm_dtype)
        except (peer_setup.PeerUnavailable, RuntimeError, OSError) as e:
            log(f"!! {target} left out: {str(e).splitlines()[0] if str(e) else repr(e)}")
            targets[target] = {"available": False, "reason": str(e)[-2000:]}
            continue
        targets[target] = {"available": True, "notes": server.notes, "startup_s": round(time.monotonic() - t0, 1)}
        try:
            for c in concurrency[target]:
                runs = []
                for i in range(args.runs):
                    cfg = LoadConfig(base_url=server.base_url, model=server.model_name,
                                     num_requests=len(specs[c, i]), concurrency=c, prompt_len=args.prompt_len,
                                     output_len=args.output_len, ignore_eos=server.ignore_eos,
                                     max_duration=args.max_duration, seed=run_seed(c, i), model_dir=args.model_dir,
                                     label=f"{target} c={c} run {i + 1}/{args.runs}")
                    r = run_load(cfg, specs[c, i])
                    log(describe(r))
                    runs.append(r)
                best = better_run(runs)
                best["target"] = target
                best["runs"] = [{"output_tokens_per_s": r["output_tokens_per_s"], "errors": r["errors"],
                                 "ttft_ms_p50": r["ttft_ms"]["p50"], "tpot_ms_p50": r["tpot_ms"]["p50"]} for r in runs]
                results.append(best)
        finally:
            server.stop()
    if "ours" in targets:
        bandwidth.append(measure_bandwidth(args.threads, "after the last target"))
    rss = {} if args.no_rss or "ours" not in args.targets.split(",") else measure_rss(args.model_dir)
    table = summarise(results)
    ours_c1 = next((r for r in results if r["target"] == "ours" and r["config"]["concurrency"] == 1), None)
    best_bw = max(bandwidth, key=lambda b: b["gb_s"]) if bandwidth else None
    limit = membw.roofline(best_bw, args.model_dir, args.ours_dtype, ours_c1) if best_bw else None
    goal_list = goals.real_size_goals(table, limit, args.vllm_dtype)
    write_json(args.name, {"benchmark": NAME, "machine": machine_info(),
                      "setup": {"model_dir": args.model_dir, "shape": TINYLLAMA_SHAPE, "prompt_len": args.prompt_len,
                                "output_len": args.output_len, "threads": args.threads, "ours_dtype": args.ours_dtype, "vllm_dtype": args.vllm_dtype,
                                "ours_matmul": args.ours_matmul,
                                "runs_per_point": args.runs},
                      "targets": targets, "table": table, "bandwidth": bandwidth, "roofline": limit,
                      "goals": goal_list, "decoder_rss_mb": rss, "total_s": round(time.monotonic() - t_begin, 1),
                      "results": [strip_samples(r) for r in results]})
    if table:
        plot(table, args.name)
    for row in table:
        log(" | ".join(f"{k} {v}" for k, v in row.items()))
    for g in goal_list:
        log(goals.describe(g))
    log(f"done in {time.monotonic() - t_begin:.0f} s")
    return 0


def measure_bandwidth(threads: int, when: str) -> dict:
    bw = membw.read_bandwidth(threads)
    bw["when"] = when
    log(f"memory read bandwidth {when}: {bw['gb_s']} GB/s ({bw['kernel']}; by kernel {bw['gb_s_by_kernel']}; "
        f"{threads} thread(s), {bw['buffer_mib']} MiB buffer)")
    return bw


def better_run(runs: list[dict]) -> dict:
    """The run that counts for a point: no failed requests first, then the higher output tok/s."""
    return max(runs, key=lambda r: (not r["errors"], r["output_tokens_per_s"] or 0))


def summarise(results: list[dict]) -> list[dict]:
    """One row per target: the issue's columns."""
    rows = []
    for target in dict.fromkeys(r["target"] for r in results):
        by = {r["config"]["concurrency"]: r for r in results if r["target"] == target}
        row: dict[str, Any] = {"target": target}
        if 1 in by:
            row.update({"c1_tok_s": by[1]["output_tokens_per_s"], "c1_ttft_p50_ms": by[1]["ttft_ms"]["p50"],
                        "c1_itl_p50_ms": by[1]["itl_ms"]["p50"], "c1_tpot_p50_ms": by[1]["tpot_ms"]["p50"]})
        if 8 in by:
            row.update({"c8_tok_s": by[8]["output_tokens_per_s"], "c8_ttft_p50_ms": by[8]["ttft_ms"]["p50"]})
        rows.append(row)
    return rows


def plot(table: list[dict], name: str = NAME) -> None:
    pyplot = plt()
    cols = [("c1_tok_s", "c=1 output tok/s"), ("c1_ttft_p50_ms", "c=1 TTFT p50 (ms)"),
            ("c1_itl_p50_ms", "c=1 ITL p50 (ms)"), ("c8_tok_s", "c=8 output tok/s"),
            ("c8_ttft_p50_ms", "c=8 TTFT p50 (ms)")]
    fig, axes = pyplot.subplots(1, len(cols), figsize=(18, 4))
    for ax, (key, title) in zip(axes, cols):
        names = [r["target"] for r in table if r.get(key) is not None]
        vals = [r[key] for r in table if r.get(key) is not None]
        bars = ax.bar(names, vals, color=["C0", "C1", "C2"][:len(vals)])
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.suptitle("1.1B random-weight Llama (TinyLlama shape), bf16, 128-token prompts, 32 output tokens")
    save_fig(fig, name, f"{name}.png")


if __name__ == "__main__":
    sys.exit(main())
