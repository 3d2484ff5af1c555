"""Direct Triton: perf_analyzer against the `ensemble` over gRPC streaming, a concurrency sweep.

Starts our stack (CPU decoder by default), writes perf_analyzer input-data JSON files with
realistic prompts (text_input of N tokens, max_tokens = min_tokens fixed so every request makes
exactly that many tokens, stream true), runs `perf_analyzer -m ensemble -i grpc --streaming` per
(prompt length, concurrency), and turns its CSV (`-f`) and profile export into
benchmarks/results/triton_perf/triton_perf.json plus plots.

perf_analyzer comes with the tritonclient wheel (the venv's bin/). It needs Debian's libb64-0d and
libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12): both are installed on demand.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import (DEFAULT_MODEL_DIR, ROOT, log, machine_info, percentiles, plt, rel, results_dir,
                               save_fig, start_stack, write_json)
from benchmarks.workload import Length, make_requests

NAME = "triton_perf"


# --------------------------------------------------------------------------- prerequisites

def _cudart_dir() -> Optional[Path]:
    try:
        import nvidia.cuda_runtime as cr  # namespace package from nvidia-cuda-runtime-cu12
    except ImportError:
        return None
    for base in list(getattr(cr, "__path__", [])):
        lib = Path(base) / "lib"
        if (lib / "libcudart.so.12").exists():
            return lib
    return None


def perf_analyzer_env() -> dict:
    env = dict(os.environ)
    lib = _cudart_dir()
    if lib is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([str(lib), env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
    return env


def ensure_perf_analyzer() -> Path:
    """The perf_analyzer binary, its two missing shared libraries installed when needed."""
    binary = Path(sys.executable).parent / "perf_analyzer"
    if not binary.exists():
        found = shutil.which("perf_analyzer")
        if not found:
            raise SystemExit("perf_analyzer not found: it comes with `pip install tritonclient[all]==2.51.0`")
        binary = Path(found)
    for _ in range(3):
        r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, env=perf_analyzer_env())
        out = r.stdout + r.stderr
        if r.returncode == 0 and "error while loading shared libraries" not in out:
            log(f"perf_analyzer: {out.strip().splitlines()[0] if out.strip() else 'ok'}")
            return binary
        if "libb64" in out:
            log("perf_analyzer needs Debian's libb64-0d: apt-get install -y libb64-0d")
            if os.geteuid() != 0:
                raise SystemExit("not root: run `sudo apt-get install -y libb64-0d` and try again")
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "libb64-0d"], check=True)
        elif "libcudart" in out:
            log("perf_analyzer needs libcudart.so.12: pip install nvidia-cuda-runtime-cu12 into this venv")
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "nvidia-cuda-runtime-cu12"], check=True)
            import importlib
            importlib.invalidate_caches()
        else:
            raise SystemExit(f"perf_analyzer does not run:\n{out}")
    raise SystemExit("perf_analyzer still does not run after installing its prerequisites")


# --------------------------------------------------------------------------- input data

def write_input_data(path: Path, model_dir: str, prompt_tokens: int, max_tokens: int, n: int = 32,
                     seed: int = 0) -> Path:
    specs = make_requests(model_dir, n, Length(prompt_tokens, prompt_tokens), Length(max_tokens, max_tokens),
                          seed=seed, distinct=n)
    data = {"data": [{"text_input": [s.prompt], "max_tokens": [max_tokens], "min_tokens": [max_tokens],
                      "stream": [True]} for s in specs]}
    path.write_text(json.dumps(data, indent=1))
    return path


# --------------------------------------------------------------------------- parsing

def parse_csv(path: Path) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return {}
    out = {}
    for k, v in zip(rows[0], rows[1]):
        try:
            out[k] = float(v) if "." in v else int(v)
        except ValueError:
            out[k] = v
    return out


def parse_profile(path: Path, tokens_per_request: int) -> dict:
    """Per-request timestamps (ns) from --profile-export-file -> token-level metrics."""
    doc = json.loads(path.read_text())
    reqs = [r for e in doc.get("experiments", []) for r in e.get("requests", [])]
    reqs = [r for r in reqs if r.get("response_timestamps")]
    if not reqs:
        return {}
    ttft, itl, e2e, responses = [], [], [], []
    for r in reqs:
        t0, ts = r["timestamp"], r["response_timestamps"]
        ttft.append((ts[0] - t0) / 1e6)
        itl.extend((b - a) / 1e6 for a, b in zip(ts, ts[1:]))
        e2e.append((ts[-1] - t0) / 1e6)
        responses.append(len(ts))
    start = min(r["timestamp"] for r in reqs)
    end = max(r["response_timestamps"][-1] for r in reqs)
    duration = (end - start) / 1e9
    r3 = lambda d: {k: (None if v is None else round(v, 3)) for k, v in d.items()}
    return {
        "requests": len(reqs),
        "duration_s": round(duration, 3),
        "responses_per_request": r3(percentiles(responses, (50,))),
        "output_tokens_per_s": round(len(reqs) * tokens_per_request / duration, 2) if duration else None,
        "responses_per_s": round(sum(responses) / duration, 2) if duration else None,
        "requests_per_s": round(len(reqs) / duration, 3) if duration else None,
        "ttft_ms": r3(percentiles(ttft)),
        "itl_ms": r3(percentiles(itl)),
        "e2e_ms": r3(percentiles(e2e)),
    }


# --------------------------------------------------------------------------- run

PERF_ANALYZER_ATTEMPTS = 3


def run_point(binary: Path, grpc_url: str, data_file: Path, concurrency: int, request_count: int,
              out_dir: Path, tag: str, timeout: float) -> tuple[dict, dict, str]:
    csv_path = out_dir / f"{tag}.csv"
    prof_path = out_dir / f"{tag}.profile.json"
    # Relative paths (run from the repository root): nothing of this machine's layout lands in results.
    cmd = ["perf_analyzer", "-m", "ensemble", "-i", "grpc", "--streaming", "-u", grpc_url,
           "--input-data", rel(data_file), "--concurrency-range", f"{concurrency}:{concurrency}",
           "--request-count", str(request_count), "-f", rel(csv_path), "--profile-export-file", rel(prof_path)]
    shown = " ".join(cmd)
    for attempt in range(1, PERF_ANALYZER_ATTEMPTS + 1):
        # perf_analyzer refuses an existing --profile-export-file: a rerun replaces the last run's files.
        csv_path.unlink(missing_ok=True)
        prof_path.unlink(missing_ok=True)
        log(f"$ {shown}")
        r = subprocess.run(cmd, executable=str(binary), capture_output=True, text=True, env=perf_analyzer_env(),
                           timeout=timeout, cwd=ROOT)
        (out_dir / f"{tag}.stdout.txt").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({r.returncode}):\n{(r.stdout + r.stderr)[:2000]}")
        try:
            return parse_csv(csv_path), parse_profile(prof_path, 0), shown
        except json.JSONDecodeError:
            # perf_analyzer 2.51 now and then exits 0 with its export file cut at a 4 KiB boundary.
            size = prof_path.stat().st_size if prof_path.exists() else 0
            log(f"perf_analyzer left a truncated profile export ({size} bytes); attempt {attempt} of "
                f"{PERF_ANALYZER_ATTEMPTS}")
    raise RuntimeError(f"perf_analyzer's profile export stayed truncated after {PERF_ANALYZER_ATTEMPTS} runs")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--grpc-url", help="an already running Triton (default: start our stack)")
    ap.add_argument("--decoder-kind", choices=("llama", "zero_cost"), default="llama")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--prompt-lens", default="64,256", help="comma list of prompt lengths in tokens")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--request-count", type=int, default=0, help="requests per point (default: max(16, 4 x c))")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per perf_analyzer run")
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)

    binary = ensure_perf_analyzer()
    out_dir = results_dir(args.name)
    raw = out_dir / "raw"
    raw.mkdir(exist_ok=True)
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    prompt_lens = [int(x) for x in args.prompt_lens.split(",")]
    data_files = {}
    for plen in prompt_lens:
        data_files[plen] = write_input_data(out_dir / f"input_p{plen}_o{args.max_tokens}.json", args.model_dir,
                                            plen, args.max_tokens)
        log(f"input data: {rel(data_files[plen])} (32 prompts of {plen} tokens, max_tokens {args.max_tokens})")
    stack = None
    results = []
    try:
        grpc_url = args.grpc_url
        if grpc_url is None:
            stack = start_stack(args.model_dir, decoder_kind=args.decoder_kind, work_name=args.name)
            grpc_url = stack.grpc_url
        for plen in prompt_lens:
            for c in concurrencies:
                n = args.request_count or max(16, 4 * c)
                tag = f"p{plen}_o{args.max_tokens}_c{c}"
                t0 = time.monotonic()
                pa_csv, _, cmd = run_point(binary, grpc_url, data_files[plen], c, n, raw, tag, args.timeout)
                prof = parse_profile(raw / f"{tag}.profile.json", args.max_tokens)
                res = {"prompt_tokens": plen, "max_tokens": args.max_tokens, "concurrency": c, "request_count": n,
                       "perf_analyzer_csv": pa_csv, "from_profile_export": prof, "command": cmd,
                       "wall_s": round(time.monotonic() - t0, 1)}
                results.append(res)
                log(f"{tag}: {prof.get('output_tokens_per_s')} out tok/s, {prof.get('requests_per_s')} req/s, "
                    f"TTFT p50 {prof.get('ttft_ms', {}).get('p50')} ms, ITL p50 {prof.get('itl_ms', {}).get('p50')} ms "
                    f"(perf_analyzer: {pa_csv.get('Inferences/Second')} infer/s, "
                    f"p99 latency {pa_csv.get('p99 latency')} us)")
    finally:
        if stack is not None:
            stack.stop()
    write_json(args.name, {
        "benchmark": "triton_perf", "machine": machine_info(),
        "setup": {"model_dir": args.model_dir, "decoder_kind": args.decoder_kind, "endpoint": "ensemble over gRPC "
                  "streaming", "tokens_per_request": args.max_tokens, "ignore_eos": "min_tokens = max_tokens",
                  "notes": "output_tokens_per_s = requests x max_tokens / (first send .. last response), from "
                           "perf_analyzer's profile export; perf_analyzer_csv is its own CSV row (latencies in us)"},
        "results": results})
    plot(args.name, results)
    return 0


def plot(name: str, results: list[dict]) -> None:
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(14, 4))
    for plen in sorted({r["prompt_tokens"] for r in results}):
        rs = [r for r in results if r["prompt_tokens"] == plen]
        xs = [r["concurrency"] for r in rs]
        p = [r["from_profile_export"] for r in rs]
        axes[0].plot(xs, [x.get("output_tokens_per_s") or 0 for x in p], marker="o", label=f"prompt {plen}")
        axes[1].plot(xs, [x["ttft_ms"]["p50"] for x in p], marker="o", label=f"prompt {plen} p50")
        axes[1].plot(xs, [x["ttft_ms"]["p99"] for x in p], marker="x", ls="--", label=f"prompt {plen} p99")
        axes[2].plot(xs, [x["itl_ms"]["p50"] for x in p], marker="o", label=f"prompt {plen} p50")
        axes[2].plot(xs, [x["itl_ms"]["p99"] for x in p], marker="x", ls="--", label=f"prompt {plen} p99")
    for ax, t, y in zip(axes, ("output tokens/s", "time to first response", "gap between responses"),
                        ("tokens/s", "ms", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(y)
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("perf_analyzer -m ensemble -i grpc --streaming")
    save_fig(fig, name, f"{Path(name).name}.png")


if __name__ == "__main__":
    sys.exit(main())
