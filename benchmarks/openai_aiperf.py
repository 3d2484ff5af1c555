"""OpenAI endpoint load with aiperf: `make bench-openai`.

Streamed chat completions against our stack (started for the run) or any OpenAI endpoint
(`--base-url`), by aiperf (benchmarks/aiperf_runner.py): a closed-loop concurrency sweep, or
Poisson arrivals at fixed request rates (`--rate`, optionally capped by `--max-concurrency`).
Prompt lengths fixed or a uniform range (`64:256` -> aiperf `--isl 160 --random-range-ratio
{"input": 0.6}`), output lengths fixed, made exact with `min_tokens` (default: what our API takes)
or `ignore_eos`. Per point: output tok/s, requests/s, TTFT, ITL, inter-event gaps, end-to-end
latency, errors, content events/s and, when it started our stack, CPU-ms per 1,000 output tokens
of the frontend, tritonserver and decoder stub. Results: benchmarks/results/openai_load/ (the
folder the hand-written generator wrote; `python -m benchmarks.openai_load` still runs it).

benchmarks/openai_load.py stays as a library: layer_cost, serving_capacity, router_cost and
real_size drive load from inside their own process, with start/stop hooks around the measured
window and CPU meters on every layer, at thousands of streamed tokens/s where a client that costs
little CPU matters on two cores (aiperf here uses about half a core or more for its own
processes); see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import aiperf_runner, peer_setup
from benchmarks.common import ROOT, add_openai_load_args, log, machine_info, write_json
from benchmarks.workload import Length

EOS = {"min_tokens": lambda n: {"min_tokens": n}, "ignore_eos": lambda n: {"ignore_eos": True}, "none": lambda n: {}}


def isl_and_ratio(prompt_len: str) -> tuple[int, float]:
    """`LO:HI` (uniform) -> aiperf's mean and symmetric range ratio: [mean*(1-r), mean*(1+r)]."""
    length = Length.parse(prompt_len)
    mean = (length.lo + length.hi) // 2
    return mean, round((length.hi - length.lo) / (length.hi + length.lo), 4) if length.hi > length.lo else 0.0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_openai_load_args(ap, model_help="model name (default: the model directory's name)")
    ap.add_argument("--warmup-requests", type=int, default=2)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--eos-field", choices=sorted(EOS), default="min_tokens",
                    help="how the server is asked for exactly --output-len tokens")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="openai_load", help="results folder under benchmarks/results/")
    args = ap.parse_args(argv)
    rep = peer_setup.install_aiperf()
    if not rep.ok:
        raise SystemExit(f"aiperf could not be installed: {rep.message[-1500:]}")
    isl, ratio = isl_and_ratio(args.prompt_len)
    points = ([("rate", float(x)) for x in args.rate.split(",")] if args.rate
              else [("concurrency", int(x)) for x in args.concurrency.split(",")])

    stack = None
    base_url = args.base_url
    results = []
    try:
        if base_url is None:
            from benchmarks.peers import _Ours
            stack = _Ours(args.model_dir, "auto", work_name="openai_load")
            base_url = stack.base_url
        model = args.model or (stack.model_name if stack else os.path.basename(args.model_dir.rstrip("/")))
        for kind, value in points:
            n = args.num_requests or (max(10, int(10 * value)) if kind == "rate" else max(16, 8 * int(value)))
            s = aiperf_runner.AiperfSettings(
                model=model, tokenizer=args.model_dir,
                concurrency=int(value) if kind == "concurrency" else args.max_concurrency,
                request_rate=value if kind == "rate" else None, request_count=n,
                warmup_request_count=args.warmup_requests, isl=isl, isl_range_ratio=ratio, osl=args.output_len,
                extra_inputs=EOS[args.eos_field](args.output_len), seed=args.seed, export_level="records")
            label = f"{kind} {value:g}"
            r = aiperf_runner.run_profile(peer_setup.AIPERF_CLI, base_url, s,
                                          ROOT / "var" / "bench" / args.name / "aiperf" / label.replace(" ", "_"),
                                          stack.processes() if stack else {}, label=label)
            log(aiperf_runner.describe(r))
            # the shape benchmarks/report.py and openai_load.plot_sweep read
            r.update(config={"concurrency": s.concurrency, "rate": s.request_rate, "prompt_len": args.prompt_len,
                             "output_len": str(args.output_len), "eos_field": args.eos_field},
                     errors={"aiperf errors": r["errors"]} if r["errors"] else {}, group="")
            results.append(r)
    finally:
        if stack is not None:
            stack.stop()
    write_json(args.name, {"benchmark": "openai_load", "client": f"aiperf {peer_setup.AIPERF_VERSION}",
                           "machine": machine_info(),
                           "target": "our stack (started for this run, --dtype auto)" if stack else "given --base-url",
                           "results": [{k: v for k, v in r.items() if k != "_samples"} for r in results]})
    from benchmarks.openai_load import plot_sweep
    for r in results:
        r.setdefault("_samples", {"ttft_s": [], "e2e_s": []})
    plot_sweep(args.name, results, "rate" if args.rate else "concurrency", f"{model}, aiperf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
