"""Serving-path capacity: streamed tokens/s per CPU core with a decoder that costs nothing.

Starts the stack with `--decoder-kind zero_cost` (one token per step for every running sequence,
no model) and a large max_batch_size, then drives streamed requests (one SSE event / one gRPC
response per token) at high concurrency through
  (i)  the HTTP frontend (OpenAI chat, SSE), and
  (ii) Triton gRPC straight to `tensorrt_llm` (tritonclient aio streaming with token ids),
measuring streamed tokens/s and the CPU seconds of every process of the serving path
(psutil: frontend, tritonserver, each Python backend stub). From that:

  tokens per CPU-second = streamed tokens / CPU seconds of the serving path
  cores needed for 35,000 tok/s (MLPerf v5.0 Llama-2-70B offline, 8xH200) = 35,000 / that
  goal: <= 16 cores, i.e. >= ~2,200 streamed tokens/s per core.

Both "whole path" (including the Python decoder stub, which on a GPU is replaced by the C++
`tensorrtllm` backend) and "frontend + tritonserver" figures are reported. A last phase attaches
py-spy to the frontend (and the decoder stub) under the same HTTP load and writes a text summary
of where the time goes, plus flame graphs, into the results folder.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DEFAULT_MODEL_DIR, ROOT, CpuMeter, log, machine_info, plt, rel, results_dir, save_fig,
                               self_process, start_stack, write_json)
from benchmarks.workload import Length, make_requests

NAME = "serving_capacity"
MLPERF_TOKENS_PER_S = 35_000     # MLPerf Inference v5.0, Llama-2-70B offline, 8xH200 (34,988 tok/s)
GOAL_CORES = 16


def _groups(stack) -> dict[str, Any]:
    roles = stack.processes()
    names = stack.stub_names()
    groups: dict[str, Any] = {"frontend": lambda: roles["frontend"], "tritonserver": lambda: roles["tritonserver"]}
    for p in roles["python_stubs"]:
        groups[f"stub:{names.get(p.pid, p.pid)}"] = (lambda p=p: [p])
    groups["client (load generator)"] = lambda: [self_process()]
    return groups


def _capacity(tokens: int, wall: float, cpu: dict[str, dict], parts: list[str]) -> dict[str, Any]:
    cpu_s = sum(cpu[k]["cpu_s"] for k in parts if k in cpu)
    per_core = tokens / cpu_s if cpu_s > 0 else None
    return {"processes": parts, "cpu_s": round(cpu_s, 3), "cores_busy": round(cpu_s / wall, 3) if wall else None,
            "tokens_per_cpu_s": round(per_core, 1) if per_core else None,
            "cores_for_35k_tok_s": round(MLPERF_TOKENS_PER_S / per_core, 1) if per_core else None,
            "meets_16_core_goal": bool(per_core and MLPERF_TOKENS_PER_S / per_core <= GOAL_CORES)}


def _report(path_name: str, tokens: int, wall: float, cpu: dict, extra: dict) -> dict[str, Any]:
    stubs = [k for k in cpu if k.startswith("stub:")]
    whole = ["frontend", "tritonserver", *stubs] if path_name == "http" else ["tritonserver", *stubs]
    without_decoder = [k for k in whole if k != "stub:tensorrt_llm"]
    return {"path": path_name, "streamed_tokens": tokens, "wall_s": round(wall, 3),
            "streamed_tokens_per_s": round(tokens / wall, 1) if wall else None, "cpu": cpu,
            "serving_path": _capacity(tokens, wall, cpu, whole),
            "serving_path_without_python_decoder": _capacity(tokens, wall, cpu, without_decoder), **extra}


# --------------------------------------------------------------------------- phases

def run_http(stack, model_dir: str, concurrency: int, n: int, prompt_len: str, output_len: str,
             max_duration: float) -> dict[str, Any]:
    from benchmarks.openai_load import LoadConfig, run_load
    cfg = LoadConfig(base_url=stack.api_url, model=stack.model_name, num_requests=n, concurrency=concurrency,
                     prompt_len=prompt_len, output_len=output_len, ignore_eos="min_tokens", model_dir=model_dir,
                     max_duration=max_duration, label=f"(i) HTTP c={concurrency}", warmup_requests=4)
    specs = make_requests(model_dir, n, Length.parse(prompt_len), Length.parse(output_len))
    meter = CpuMeter(_groups(stack))
    cpu: dict = {}
    r = run_load(cfg, specs, on_start=meter.start, on_stop=lambda: cpu.update(meter.stop()))
    keep = {k: r[k] for k in ("completed", "errors", "ttft_ms", "itl_ms", "e2e_ms", "tokens_per_content_event")}
    return _report("http", r["output_tokens"], r["duration_s"], cpu, {"concurrency": concurrency, **keep})


def run_grpc(stack, model_dir: str, concurrency: int, n: int, prompt_len: str, output_len: str) -> dict[str, Any]:
    from benchmarks.layer_cost import _grpc_load, chat_ids, summarize
    specs = make_requests(model_dir, n, Length.parse(prompt_len), Length.parse(output_len))
    prompts = [chat_ids(model_dir, s.prompt) for s in specs]
    meter = CpuMeter(_groups(stack))
    cpu: dict = {}
    recs, t0, t1 = asyncio.run(_grpc_load(stack.grpc_url, prompts, specs, concurrency, on_start=meter.start,
                                          on_stop=lambda: cpu.update(meter.stop())))
    s = summarize("grpc", concurrency, recs, t0, t1, cpu)
    keep = {k: s[k] for k in ("completed", "errors", "ttft_ms", "itl_ms", "e2e_ms")}
    return _report("grpc", s["output_tokens"], t1 - t0, cpu, {"concurrency": concurrency, **keep})


# --------------------------------------------------------------------------- profile

def _pyspy() -> Optional[str]:
    exe = Path(sys.executable).parent / "py-spy"
    if exe.exists():
        return str(exe)
    if shutil.which("py-spy"):
        return shutil.which("py-spy")
    log("py-spy not found: pip install py-spy (into this venv)")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=False)
    return str(exe) if r.returncode == 0 and exe.exists() else None


_CATEGORIES = (
    ("selector_events.py", "socket I/O (asyncio transport write/read syscalls)"),
    ("selectors.py", "event-loop wait (epoll)"),
    ("orjson", "JSON (orjson)"), ("json/", "JSON (stdlib)"),
    ("tritonclient/", "tritonclient (request/response objects)"),
    ("grpc/", "grpcio aio (stream reads/writes)"), ("protobuf", "protobuf"),
    ("aiohttp/", "aiohttp (HTTP/SSE)"),
    ("detokenize", "incremental detokenization"), ("tokeniz", "tokenization"),
    ("stop_strings", "stop strings"), ("pydantic", "pydantic validation"), ("numpy", "numpy"),
    ("prometheus_client", "prometheus metrics"), ("logging", "logging"),
    ("asyncio/", "asyncio event loop (callbacks, tasks)"),
    ("frontend/", "frontend code (own lines)"),
    ("triton_python_backend_utils", "pb_utils (stub <-> tritonserver IPC)"),
    ("zero_cost.py", "zero-cost engine loop"), ("engine/", "engine"),
    ("decoder_requests.py", "request/response tensor mapping"), ("triton_decoder.py", "engine metrics"),
    ("model.py", "tensorrt_llm model.py (send responses, poll cancellation)"),
    ("llama_triton/", "llama_triton code"),
    ("threading.py", "C code in a Python thread (in the frontend: grpcio aio poller)"),
)


def _categorize(frame: str) -> str:
    f = frame.lower()
    for key, cat in _CATEGORIES:
        if key in f:
            return cat
    return "other"


def summarize_raw_profile(raw: Path, title: str) -> tuple[str, dict[str, float]]:
    """py-spy's raw (collapsed) stacks -> text: self time by category, function and file; inclusive time."""
    self_t: Counter = Counter()
    incl: Counter = Counter()
    cats: Counter = Counter()
    files: Counter = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))] or stack.split(";")
        total += n
        leaf = frames[-1]
        self_t[leaf] += n
        cats[_categorize(leaf)] += n     # where the CPU is when sampled (the leaf Python frame)
        files[leaf.rsplit("(", 1)[-1].split(":", 1)[0]] += n
        for fr in set(frames):
            incl[fr] += n
    if not total:
        return f"{title}: no samples\n", {}
    pct = lambda n: 100.0 * n / total
    out = [title, f"{total} samples (py-spy --nonblocking, 100 Hz, active threads only; time in C code is "
           "charged to the Python frame that called it)", "", "Self time by category (leaf Python frame):"]
    out += [f"  {pct(n):5.1f}%  {c}" for c, n in cats.most_common()]
    out += ["", "Self time by file:"]
    out += [f"  {pct(n):5.1f}%  {f}" for f, n in files.most_common(20)]
    out += ["", "Self time, top 30 functions:"]
    out += [f"  {pct(n):5.1f}%  {f}" for f, n in self_t.most_common(30)]
    out += ["", "Inclusive time, top 40 functions:"]
    out += [f"  {pct(n):5.1f}%  {f}" for f, n in incl.most_common(40)]
    return "\n".join(out) + "\n", {c: round(pct(n), 2) for c, n in cats.most_common()}


def profile_phase(stack, model_dir: str, concurrency: int, n: int, prompt_len: str, output_len: str,
                  duration: float, out_dir: Path) -> dict[str, Any]:
    spy = _pyspy()
    if spy is None:
        return {"error": "py-spy is not available"}
    roles = stack.processes()
    names = stack.stub_names()
    targets = {"frontend": roles["frontend"][0].pid}
    for pid, model in names.items():
        if model == "tensorrt_llm":
            targets["decoder_stub"] = pid
    procs = []
    for label, pid in targets.items():
        for fmt, ext in (("raw", "txt"), ("flamegraph", "svg")):
            path = out_dir / f"profile_{label}.{fmt}.{ext}"
            # argv[0] and the output path are relative: py-spy writes its command line into the SVG
            cmd = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(duration)), "--rate", "100",
                   "--nonblocking", "--format", fmt, "--output", rel(path)]
            procs.append((label, fmt, path, subprocess.Popen(cmd, executable=spy, cwd=ROOT, stdout=subprocess.DEVNULL,
                                                             stderr=subprocess.PIPE)))
    log(f"profiling {', '.join(targets)} with py-spy for {duration:.0f} s under HTTP load")
    from benchmarks.openai_load import LoadConfig, run_load
    cfg = LoadConfig(base_url=stack.api_url, model=stack.model_name, num_requests=n, concurrency=concurrency,
                     prompt_len=prompt_len, output_len=output_len, ignore_eos="min_tokens", model_dir=model_dir,
                     max_duration=duration, label="profile", warmup_requests=0)
    run_load(cfg)
    result: dict[str, Any] = {"files": [], "categories": {}}
    for label, fmt, path, p in procs:
        try:
            _, err = p.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0 or not path.exists():
            result.setdefault("errors", []).append(f"{label} {fmt}: {err.decode(errors='replace')[-300:]}")
            continue
        result["files"].append(rel(path))
        if fmt == "raw":
            text, cats = summarize_raw_profile(path, f"{label} (pid {targets[label]}) under streamed HTTP load")
            summary = out_dir / f"profile_{label}_summary.txt"
            summary.write_text(text)
            result["files"].append(rel(summary))
            result["categories"][label] = cats
            log(f"{label} profile, self time by category: "
                + ", ".join(f"{c} {v:.0f}%" for c, v in list(cats.items())[:6]))
    return result


# --------------------------------------------------------------------------- main

def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="tokenizer (the zero-cost decoder loads no weights)")
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--num-requests", type=int, default=0, help="per path (default: 3 x concurrency)")
    ap.add_argument("--prompt-len", default="64")
    ap.add_argument("--output-len", default="256")
    ap.add_argument("--max-batch-size", type=int, default=512)
    ap.add_argument("--max-duration", type=float, default=90.0, help="seconds per path before it stops sending")
    ap.add_argument("--profile-seconds", type=float, default=15.0, help="0 skips the py-spy phase")
    ap.add_argument("--paths", default="http,grpc")
    ap.add_argument("--frontend-workers", type=int, default=1,
                    help="frontend processes (the launcher's --frontend-workers); more than the cores left "
                         "besides Triton and the load generator only adds contention")
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    n = args.num_requests or 3 * args.concurrency
    out_dir = results_dir(args.name)

    stack = start_stack(args.model_dir, decoder_kind="zero_cost", max_batch_size=args.max_batch_size,
                        max_queue_size=max(1024, 2 * args.concurrency), work_name=args.name,
                        extra=("--frontend-workers", str(args.frontend_workers)))
    results, profile = [], None
    try:
        for path in args.paths.split(","):
            log(f"({'i' if path == 'http' else 'ii'}) {path}: {n} streamed requests at concurrency "
                f"{args.concurrency}, {args.output_len} tokens each")
            if path == "http":
                r = run_http(stack, args.model_dir, args.concurrency, n, args.prompt_len, args.output_len,
                             args.max_duration)
            else:
                r = run_grpc(stack, args.model_dir, args.concurrency, n, args.prompt_len, args.output_len)
            results.append(r)
            sp, nd = r["serving_path"], r["serving_path_without_python_decoder"]
            log(f"{path}: {r['streamed_tokens_per_s']} streamed tok/s; serving path {sp['cores_busy']} cores busy -> "
                f"{sp['tokens_per_cpu_s']} tok/s per core, {sp['cores_for_35k_tok_s']} cores for 35k tok/s "
                f"(without the Python decoder stub: {nd['tokens_per_cpu_s']} tok/s per core, "
                f"{nd['cores_for_35k_tok_s']} cores); errors {r['errors'] or 0}")
            log("  CPU by process: " + ", ".join(f"{k} {v['cpu_s']:.1f}s" for k, v in r["cpu"].items()))
        if args.profile_seconds > 0 and "http" in args.paths:
            profile = profile_phase(stack, args.model_dir, args.concurrency, 10 * args.concurrency, args.prompt_len,
                                    args.output_len, args.profile_seconds, out_dir)
    finally:
        stack.stop()
    write_json(args.name, {
        "benchmark": "serving_capacity", "machine": machine_info(),
        "setup": {"decoder_kind": "zero_cost", "max_batch_size": args.max_batch_size, "concurrency": args.concurrency,
                  "frontend_workers": args.frontend_workers,
                  "prompt_len": args.prompt_len, "output_len": args.output_len,
                  "target": {"tokens_per_s": MLPERF_TOKENS_PER_S, "source": "MLPerf Inference v5.0 Llama-2-70B offline, "
                             "8xH200 (34,988 tok/s)", "goal_cores": GOAL_CORES,
                             "goal_tokens_per_cpu_s": round(MLPERF_TOKENS_PER_S / GOAL_CORES, 1)},
                  "notes": "tokens_per_cpu_s = streamed tokens / CPU seconds of the listed processes over the same "
                           "interval (user+system). The load generator runs on the same cores and is excluded. "
                           "'without_python_decoder' drops the tensorrt_llm stub, which a GPU deployment replaces "
                           "with TensorRT-LLM's C++ backend."},
        "results": results, "profile": profile})
    plot(args.name, results)
    return 0


def plot(name: str, results: list[dict]) -> None:
    if not results:
        return
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
    labels = [("HTTP frontend" if r["path"] == "http" else "Triton gRPC direct") for r in results]
    ax = axes[0]
    whole = [r["serving_path"]["tokens_per_cpu_s"] or 0 for r in results]
    nodec = [r["serving_path_without_python_decoder"]["tokens_per_cpu_s"] or 0 for r in results]
    xs = range(len(results))
    ax.bar([x - 0.2 for x in xs], whole, 0.4, label="whole serving path")
    ax.bar([x + 0.2 for x in xs], nodec, 0.4, label="without the Python decoder stub")
    ax.axhline(MLPERF_TOKENS_PER_S / GOAL_CORES, color="red", ls="--", label="goal: 35k tok/s on 16 cores")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.set_ylabel("streamed tokens per CPU-second")
    ax.set_title("serving-path efficiency (zero-cost decoder)")
    ax.legend(fontsize=8)
    ax = axes[1]
    procs = sorted({k for r in results for k in r["cpu"]})
    bottom = [0.0] * len(results)
    for p in procs:
        vals = [r["cpu"].get(p, {}).get("cores") or 0 for r in results]
        ax.bar(labels, vals, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("cores busy")
    ax.set_title("CPU by process")
    ax.legend(fontsize=7)
    save_fig(fig, name, f"{Path(name).name}.png")


if __name__ == "__main__":
    sys.exit(main())
