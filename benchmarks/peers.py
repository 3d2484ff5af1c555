"""Our stack against CPU serving peers, in one run: the same openai_load workload on the same model.

Targets, one after the other (never two servers at once): our stack (`llama-triton serve`),
vLLM's CPU build, and llama.cpp's server (llama-cpp-python), all serving var/models/llama2-tiny
(the llama.cpp copy converted to GGUF at the same precision). Each peer is installed into its own
virtual environment under var/peers/ on first use (see benchmarks/peer_setup.py for what that
takes and the workarounds it applies); a peer that cannot be installed or started is reported as
such and the others still run.

All targets get the same streamed chat requests (same prompts, seeded), `max_tokens` with an
"ignore EOS" equivalent (ours: min_tokens; vLLM: ignore_eos; llama.cpp: logit_bias bans </s>),
and the same number of threads for the model (`--threads`, default 1: our CPU decoder runs one
torch thread). Results: benchmarks/results/peers/.
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

from benchmarks import peer_setup
from benchmarks.common import DEFAULT_MODEL_DIR, log, machine_info, plt, save_fig, start_stack, style_grouped_bars, write_json
from benchmarks.openai_load import LoadConfig, describe, run_load, strip_samples
from benchmarks.workload import Length, make_requests

NAME = "peers"
TARGETS = ("ours", "vllm", "llama.cpp")


class _Ours:
    name = "ours"

    def __init__(self, model_dir: str):
        self.stack = start_stack(model_dir, work_name="peers")
        self.base_url = self.stack.api_url
        self.model_name = self.stack.model_name
        self.ignore_eos = "min_tokens"
        self.notes = "llama-triton serve (CPU reference decoder, float32, 1 torch thread), min_tokens = max_tokens"

    def stop(self) -> None:
        self.stack.stop()


def start_target(target: str, model_dir: str, threads: int, install: bool) -> tuple[Any, dict]:
    """Returns (server, install_report); raises peer_setup.PeerUnavailable with the reason."""
    served = Path(model_dir).name
    if target == "ours":
        return _Ours(model_dir), {}
    if target == "vllm":
        rep = peer_setup.install_vllm() if install else None
        if rep is not None and not rep.ok:
            raise peer_setup.PeerUnavailable(f"install failed after {rep.seconds:.0f} s: {rep.message[-1500:]}")
        return peer_setup.start_vllm(model_dir, served, threads=threads), _rep(rep)
    if target == "llama.cpp":
        rep = peer_setup.install_llama_cpp() if install else None
        if rep is not None and not rep.ok:
            raise peer_setup.PeerUnavailable(f"install failed after {rep.seconds:.0f} s: {rep.message[-1500:]}")
        return peer_setup.start_llama_cpp(model_dir, served, threads=threads), _rep(rep)
    raise ValueError(target)


def _rep(rep) -> dict:
    if rep is None:
        return {}
    return {"installed_now": not rep.already_installed, "install_seconds": round(rep.seconds, 1)}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="needs head_dim >= 32 for vLLM's CPU attention")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--num-requests", type=int, default=0, help="per point (default: max(8, 2 x concurrency))")
    ap.add_argument("--prompt-len", default="128")
    ap.add_argument("--output-len", default="64")
    ap.add_argument("--threads", type=int, default=1, help="model threads for each peer")
    ap.add_argument("--max-duration", type=float, default=60.0, help="seconds per point before it stops sending")
    ap.add_argument("--no-install", action="store_true", help="skip peers that are not installed yet")
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    specs = {c: make_requests(args.model_dir, args.num_requests or max(8, 2 * c), Length.parse(args.prompt_len),
                              Length.parse(args.output_len), seed=c) for c in concurrencies}

    targets: dict[str, dict] = {}
    results: list[dict] = []
    for target in args.targets.split(","):
        t0 = time.monotonic()
        try:
            server, install = start_target(target, args.model_dir, args.threads, not args.no_install)
        except (peer_setup.PeerUnavailable, RuntimeError, OSError) as e:
            msg = str(e)
            log(f"!! {target} is NOT available here and is left out: {msg.splitlines()[0] if msg else e!r}")
            targets[target] = {"available": False, "reason": msg[-2000:]}
            continue
        targets[target] = {"available": True, "notes": server.notes, "startup_s": round(time.monotonic() - t0, 1),
                           **install}
        try:
            for c in concurrencies:
                cfg = LoadConfig(base_url=server.base_url, model=server.model_name, num_requests=len(specs[c]),
                                 concurrency=c, prompt_len=args.prompt_len, output_len=args.output_len,
                                 ignore_eos=server.ignore_eos, max_duration=args.max_duration,
                                 model_dir=args.model_dir, label=f"{target} c={c}")
                r = run_load(cfg, specs[c])
                r["target"] = target
                r["group"] = target
                log(describe(r))
                results.append(r)
        finally:
            server.stop()

    missing = [t for t, v in targets.items() if not v["available"]]
    write_json(args.name, {
        "benchmark": "peers", "machine": machine_info(),
        "setup": {"model_dir": args.model_dir, "prompt_len": args.prompt_len, "output_len": args.output_len,
                  "threads": args.threads, "concurrency": concurrencies,
                  "notes": "targets run one after another on the same cores as the load generator; "
                           "llama-cpp-python's server handles one request at a time"},
        "targets": targets, "results": [strip_samples(r) for r in results]})
    if results:
        plot(args.name, results, concurrencies)
    if missing:
        log(f"left out (not installable/startable here): {', '.join(missing)}; see 'targets' in the JSON")
    return 0


def plot(name: str, results: list[dict], concurrencies: list[int]) -> None:
    pyplot = plt()
    targets = list(dict.fromkeys(r["target"] for r in results))
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / max(1, len(targets))
    for i, t in enumerate(targets):
        by = {r["config"]["concurrency"]: r for r in results if r["target"] == t}
        xs = [j + i * width for j in range(len(concurrencies))]
        vals = [by[c]["output_tokens_per_s"] or 0 if c in by else 0 for c in concurrencies]
        bars = axes[0].bar(xs, vals, width, label=t)
        for b, v in zip(bars, vals):
            axes[0].annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        axes[1].bar(xs, [by[c]["ttft_ms"]["p50"] or 0 if c in by else 0 for c in concurrencies], width, label=t)
        axes[2].bar(xs, [by[c]["itl_ms"]["p50"] or 0 if c in by else 0 for c in concurrencies], width, label=t)
    style_grouped_bars(axes, ("output tokens/s", "TTFT p50", "inter-token latency p50"), ("tokens/s", "ms", "ms"),
                       len(concurrencies), len(targets), width, [f"concurrency {c}" for c in concurrencies])
    save_fig(fig, name, f"{Path(name).name}.png")


if __name__ == "__main__":
    sys.exit(main())
