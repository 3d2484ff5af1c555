"""Router cost: streamed tokens/s and CPU per token through Shepherd Model Gateway against the same
replica directly, with the zero-cost decoder (so the serving path is all there is).

Starts `llama-triton cluster --replicas 1` (one replica, `--decoder-kind zero_cost`, behind SMG)
and drives the same streamed OpenAI load (benchmarks/openai_load.py) alternately
  (a) straight at the replica's frontend,
  (b) through the router: the cluster's public port, the front door (router_front.py) and SMG,
  (c) straight at SMG's own loopback port behind the front door (from the router's log),
for --rounds rounds each, measuring streamed tokens/s and the CPU seconds of every process
(psutil): the router process (SMG and the front door), the frontend, tritonserver and its Python
stubs, the load generator. Reported: the router's throughput ratio (b/a, best round against best
round, plus every round for the spread) and its CPU per 1,000 streamed tokens, next to the
replica's own; and the front door's own share, (b) against (c) in the same round.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DEFAULT_MODEL_DIR, ROOT, CpuMeter, log, machine_info, plt, rel, save_fig,
                               self_process, write_json)
from benchmarks.workload import Length, make_requests

NAME = "router_cost"


def _children(root_pid: int):
    import psutil
    try:
        return psutil.Process(root_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def process_groups(cluster) -> dict[str, Any]:
    """CPU groups: the router, the replica's frontend, tritonserver + its Python stubs, the client."""
    def pick(kind):
        def get():
            out = []
            for p in _children(cluster.proc.pid):
                try:
                    argv = p.cmdline()
                except Exception:
                    continue
                cmd = " ".join(argv)
                # smg retitles its process (setproctitle): "smg::router"
                if kind == "smg" and ((argv and argv[0].startswith("smg")) or "-m smg" in cmd):
                    out.append(p)
                elif kind == "frontend" and "-m frontend" in cmd:
                    out.append(p)
                elif kind == "triton" and (argv and Path(argv[0]).name == "tritonserver"
                                           or "triton_python_backend_stub" in cmd):
                    out.append(p)
            return out
        return get
    return {"router (smg)": pick("smg"), "frontend": pick("frontend"), "tritonserver + stubs": pick("triton"),
            "client (load generator)": lambda: [self_process()]}


def smg_url(cluster) -> str:
    """SMG's own loopback address behind the front door, as router_launch.py logs it."""
    for _ in range(100):
        m = re.search(r"SMG behind it on (\S+):(\d+)", (cluster.work_dir / "router.log").read_text(errors="replace"))
        if m:
            return f"http://{m.group(1)}:{m.group(2)}"
        time.sleep(0.1)
    raise SystemExit("the router's log does not say where SMG listens")


def run_path(label: str, base_url: str, cluster, args, specs) -> dict[str, Any]:
    from benchmarks.openai_load import LoadConfig, run_load
    cfg = LoadConfig(base_url=base_url + "/v1", model=cluster.model_name, num_requests=len(specs),
                     concurrency=args.concurrency, prompt_len=args.prompt_len, output_len=args.output_len,
                     ignore_eos="min_tokens", model_dir=args.model_dir, max_duration=args.max_duration,
                     label=label, warmup_requests=4, progress=False)
    meter = CpuMeter(process_groups(cluster))
    cpu: dict = {}
    r = run_load(cfg, specs, on_start=meter.start, on_stop=lambda: cpu.update(meter.stop()))
    tokens, wall = r["output_tokens"], r["duration_s"]
    per_k = {k: round(1e6 * v["cpu_s"] / tokens, 1) if tokens else None for k, v in cpu.items()}   # CPU-ms per 1k tokens
    serving = [k for k in cpu if k != "client (load generator)"]
    serving_cpu = sum(cpu[k]["cpu_s"] for k in serving)
    replica_cpu = sum(cpu[k]["cpu_s"] for k in ("frontend", "tritonserver + stubs"))
    return {"path": label, "streamed_tokens": tokens, "wall_s": round(wall, 3),
            "streamed_tokens_per_s": round(tokens / wall, 1) if wall else None,
            "completed": r["completed"], "errors": r["errors"], "ttft_ms": r["ttft_ms"], "itl_ms": r["itl_ms"],
            "cpu": cpu, "cpu_ms_per_1k_tokens": per_k,
            "serving_cpu_ms_per_1k_tokens": round(1e6 * serving_cpu / tokens, 1) if tokens else None,
            "replica_cpu_ms_per_1k_tokens": round(1e6 * replica_cpu / tokens, 1) if tokens else None}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="tokenizer (the zero-cost decoder loads no weights)")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--num-requests", type=int, default=0, help="per round and path (default: 3 x concurrency)")
    ap.add_argument("--prompt-len", default="64")
    ap.add_argument("--output-len", default="256")
    ap.add_argument("--rounds", type=int, default=4, help="alternating direct / router rounds")
    ap.add_argument("--max-duration", type=float, default=60.0, help="seconds per round before it stops sending")
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    n = args.num_requests or 3 * args.concurrency
    from tests.served_cluster import start_served_cluster
    if not (ROOT / args.model_dir / "config.json").is_file() and not (Path(args.model_dir) / "config.json").is_file():
        raise SystemExit(f"model {args.model_dir} not found: run `make model` first")
    work = ROOT / "var" / "bench" / args.name
    work.mkdir(parents=True, exist_ok=True)
    log(f"starting a 1-replica cluster (zero-cost decoder) behind SMG; log: {rel(work / 'cluster.log')}")
    load_before = [round(x, 2) for x in os.getloadavg()]
    cluster = start_served_cluster(args.model_dir, work, 1, serve_args=(
        "--decoder-kind", "zero_cost", "--max-batch-size", "512", "--max-queue-size", str(max(1024, 2 * args.concurrency)),
        "--max-tokens-cap", "16384"), cwd=ROOT)
    replica = cluster.replica_urls()[0]
    smg = smg_url(cluster)
    specs = make_requests(args.model_dir, n, Length.parse(args.prompt_len), Length.parse(args.output_len))
    rounds: list[dict] = []
    try:
        for i in range(args.rounds):
            for label, url in (("direct", replica), ("router", cluster.base_url), ("smg", smg)):
                r = run_path(label, url, cluster, args, specs)
                r["round"] = i
                rounds.append(r)
                log(f"round {i} {label}: {r['streamed_tokens_per_s']} tok/s, serving CPU "
                    f"{r['serving_cpu_ms_per_1k_tokens']} ms per 1k tokens (router "
                    f"{r['cpu_ms_per_1k_tokens'].get('router (smg)')}), errors {r['errors'] or 0}")
    finally:
        cluster.stop()
    ok = [r for r in rounds if not r["errors"]]
    best = {p: max((r for r in ok if r["path"] == p), key=lambda r: r["streamed_tokens_per_s"], default=None)
            for p in ("direct", "router")}
    summary = None
    if best["direct"] and best["router"]:
        d, rt = best["direct"], best["router"]
        pairs = [(a, b) for a in ok for b in ok if a["round"] == b["round"] and a["path"] == "direct"
                 and b["path"] == "router"]
        summary = {
            "throughput_ratio_router_over_direct": round(rt["streamed_tokens_per_s"] / d["streamed_tokens_per_s"], 3),
            "throughput_ratio_per_round": [round(b["streamed_tokens_per_s"] / a["streamed_tokens_per_s"], 3)
                                           for a, b in pairs],
            "throughput_ratio_median": round(statistics.median(b["streamed_tokens_per_s"] / a["streamed_tokens_per_s"]
                                                               for a, b in pairs), 3),
            "serving_cpu_ratio_median": round(statistics.median(b["serving_cpu_ms_per_1k_tokens"]
                                                                / a["serving_cpu_ms_per_1k_tokens"] for a, b in pairs), 3),
            "serving_cpu_ratio_router_over_direct": round(rt["serving_cpu_ms_per_1k_tokens"]
                                                          / d["serving_cpu_ms_per_1k_tokens"], 3),
            "router_cpu_ms_per_1k_tokens": rt["cpu_ms_per_1k_tokens"].get("router (smg)"),
            "replica_cpu_ms_per_1k_tokens_direct": d["replica_cpu_ms_per_1k_tokens"],
            "replica_cpu_ms_per_1k_tokens_via_router": rt["replica_cpu_ms_per_1k_tokens"],
            "direct_tokens_per_s": d["streamed_tokens_per_s"], "router_tokens_per_s": rt["streamed_tokens_per_s"],
        }
        behind = [(b, c) for b in ok for c in ok if b["round"] == c["round"] and b["path"] == "router"
                  and c["path"] == "smg"]
        if behind:
            # The front door's share: the router process's CPU per token with it (b) and without (c).
            summary["front_door_cpu_ms_per_1k_tokens_per_round"] = [
                round(b["cpu_ms_per_1k_tokens"]["router (smg)"] - c["cpu_ms_per_1k_tokens"]["router (smg)"], 1)
                for b, c in behind]
            summary["front_door_cpu_ms_per_1k_tokens_median"] = round(statistics.median(
                summary["front_door_cpu_ms_per_1k_tokens_per_round"]), 1)
            summary["throughput_ratio_router_over_smg_alone_median"] = round(statistics.median(
                b["streamed_tokens_per_s"] / c["streamed_tokens_per_s"] for b, c in behind), 3)
            log(f"front door: {summary['front_door_cpu_ms_per_1k_tokens_median']} CPU-ms per 1k tokens (median of "
                f"{summary['front_door_cpu_ms_per_1k_tokens_per_round']}); throughput with it / SMG alone "
                f"x{summary['throughput_ratio_router_over_smg_alone_median']}")
        log(f"router / direct: throughput x{summary['throughput_ratio_router_over_direct']} best/best, "
            f"x{summary['throughput_ratio_median']} median of rounds {summary['throughput_ratio_per_round']}; "
            f"serving CPU per token x{summary['serving_cpu_ratio_router_over_direct']} best/best, "
            f"x{summary['serving_cpu_ratio_median']} median; SMG {summary['router_cpu_ms_per_1k_tokens']} "
            f"CPU-ms per 1k tokens")
    write_json(args.name, {
        "benchmark": NAME, "machine": machine_info(),
        "setup": {"decoder_kind": "zero_cost", "replicas": 1, "concurrency": args.concurrency, "requests": n,
                  "prompt_len": args.prompt_len, "output_len": args.output_len, "rounds": args.rounds,
                  "load_average_before_start": load_before, "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                  "notes": "Same requests, same replica, alternating: direct to its frontend, then through the "
                           "router (front door + SMG, cache_aware), then straight at SMG behind the front door. "
                           "CPU = user+system seconds of each process group over the measured window (the "
                           "'router (smg)' group is the router process: SMG and the front door); the load "
                           "generator shares the cores. Rounds with errors do not count."},
        "results": rounds, "summary": summary})
    plot(args.name, rounds)
    return 0


def plot(name: str, rounds: list[dict]) -> None:
    if not rounds:
        return
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"{r['path']} #{r['round']}" for r in rounds]
    colors = [{"direct": "#4c72b0", "router": "#dd8452"}.get(r["path"], "#55a868") for r in rounds]
    axes[0].bar(labels, [r["streamed_tokens_per_s"] or 0 for r in rounds], color=colors)
    axes[0].set_ylabel("streamed tokens/s")
    axes[0].set_title("throughput: direct, through the router, at SMG behind the front door")
    groups = sorted({k for r in rounds for k in r["cpu_ms_per_1k_tokens"]})
    bottom = [0.0] * len(rounds)
    for g in groups:
        vals = [r["cpu_ms_per_1k_tokens"].get(g) or 0 for r in rounds]
        axes[1].bar(labels, vals, bottom=bottom, label=g)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[1].set_ylabel("CPU-ms per 1,000 streamed tokens")
    axes[1].set_title("CPU per token by process (zero-cost decoder)")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(alpha=0.3, axis="y")
    save_fig(fig, name, f"{Path(name).name}.png")


if __name__ == "__main__":
    sys.exit(main())
