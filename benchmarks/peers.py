"""Our stack against vLLM-CPU, side by side, measured with aiperf: `make bench-peers`.

One server at a time on the same machine, each given the identical aiperf profile (streamed
chat, 128-token synthetic prompts, 64 output tokens with `ignore_eos: true`, seeded; concurrency
1, 16 and 64 with the same request counts), all serving var/models/llama2-tiny:

  ours, --dtype auto      our fastest dtype (bfloat16 on a CPU with AVX512-BF16/AMX)
  vLLM-CPU, bfloat16      its fastest here
  ours, --dtype float32   the same-dtype pair
  vLLM-CPU, float32

(in that order, so that each pair runs back to back), then the zero-cost decoder stack
(`--decoder-kind zero_cost`: no model, made-up tokens) at concurrency 64 for streamed tokens per
CPU-second of the serving path. Both servers run as a user starts them: ours with the launcher's
defaults (one frontend worker, the decoder's own thread choice) except `--dtype`; vLLM with its
own OpenMP thread choice. llama.cpp's server is opt-in (`--targets ours,vllm,llama.cpp`).

For every run and concurrency: output tok/s, content SSE events/s, TTFT and ITL p50/p99 as
aiperf measures them, and CPU-ms per 1,000 output tokens of each server process over aiperf's
profiling phase (benchmarks/aiperf_runner.py): ours frontend, tritonserver, decoder stub (the
Python backend stub of `tensorrt_llm`) and the other stubs; vLLM's API server, engine core and
its worker process. Each point runs `--runs-per-point` times (default 2) and the better run (no
failed requests, then the higher output tok/s) counts. Then ratios ours / vLLM (fastest pair,
float32 pair) and every goal of issue 27, met or not with its numbers (benchmarks/goals.py; the
1.1B ones are bench-real-size's). Results: benchmarks/results/peers/ (JSON, two PNGs).

aiperf and vLLM-CPU are installed into var/peers/ the first time (benchmarks/peer_setup.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import aiperf_runner, goals, peer_setup
from benchmarks.common import ROOT, DEFAULT_MODEL_DIR, log, machine_info, plt, rel, save_fig, start_stack, write_json
from llama_triton.defaults import MAX_BATCH_SIZE, MAX_QUEUE_SIZE

NAME = "peers"
# How each --eos-field value is sent (the same to every server): exact output lengths.
EOS_FIELDS = {"ignore_eos": lambda n: {"ignore_eos": True}, "min_tokens": lambda n: {"min_tokens": n}}


# --------------------------------------------------------------------------- servers

class _Ours:
    target = "ours"

    def __init__(self, model_dir: str, dtype: str, decoder_kind: str = "llama", work_name: str = "peers"):
        # The launcher's defaults (batch and queue sizes, one frontend worker): what `make serve` runs.
        self.stack = start_stack(model_dir, decoder_kind=decoder_kind, max_batch_size=MAX_BATCH_SIZE,
                                 max_queue_size=MAX_QUEUE_SIZE, extra=("--dtype", dtype), work_name=work_name)
        self.base_url = self.stack.api_url
        self.model_name = self.stack.model_name
        self.dtype = dtype if dtype != "auto" else f"auto ({_resolve_auto()})"
        self.notes = f"llama-triton serve --dtype {dtype}" + (f" --decoder-kind {decoder_kind}"
                                                               if decoder_kind != "llama" else "")

    def processes(self) -> dict[str, list[int]]:
        roles = self.stack.processes()
        names = self.stack.stub_names()
        out = {"frontend": [p.pid for p in roles["frontend"]], "tritonserver": [p.pid for p in roles["tritonserver"]],
               "decoder stub": [pid for pid, n in names.items() if n == "tensorrt_llm"],
               "other stubs": [pid for pid, n in names.items() if n != "tensorrt_llm"]}
        return out

    def stop(self) -> None:
        self.stack.stop()


def _resolve_auto() -> str:
    try:
        from llama_triton.llama.dtype import cpu_has_native_bf16
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    except Exception:      # torch missing or odd: say so rather than guess
        return "?"


class _Peer:
    """A started peer_setup.PeerServer plus its processes by role."""

    def __init__(self, server: peer_setup.PeerServer):
        self.server = server
        self.target = server.name
        self.base_url = server.base_url
        self.model_name = server.model_name
        self.dtype = server.dtype
        # the request fields are the benchmark's (--eos-field), not the ones openai_load would send
        self.notes = server.notes.replace(", ignore_eos: true", "")

    def processes(self) -> dict[str, list[int]]:
        import psutil
        root = self.server.proc.pid
        if self.target != "vllm":
            return {"server": [root]}
        out: dict[str, list[int]] = {"API server": [root], "engine core": [], "engine worker": []}
        for p in psutil.Process(root).children(recursive=True):
            try:
                cmd = " ".join(p.cmdline())
            except psutil.Error:
                continue
            # vLLM v1 names its processes with setproctitle
            if "VLLM::EngineCore" in cmd:
                out["engine core"].append(p.pid)
            elif "VLLM::Worker" in cmd:
                out["engine worker"].append(p.pid)
        return out

    def stop(self) -> None:
        self.server.stop()


def start_run(target: str, dtype: str, args) -> Any:
    served = Path(args.model_dir).name
    if target == "ours":
        return _Ours(args.model_dir, dtype)
    if target == "vllm":
        return _Peer(peer_setup.start_vllm(args.model_dir, served, threads=args.vllm_threads, dtype=dtype,
                                           fallback=False))
    if target == "llama.cpp":
        return _Peer(peer_setup.start_llama_cpp(args.model_dir, served, threads=args.llama_cpp_threads, outtype=dtype))
    raise ValueError(target)


def _install(target: str) -> dict:
    installer = {"vllm": peer_setup.install_vllm, "llama.cpp": peer_setup.install_llama_cpp,
                 "aiperf": peer_setup.install_aiperf}.get(target)
    if installer is None:
        return {}
    rep = installer()
    if not rep.ok:
        raise peer_setup.PeerUnavailable(f"install failed after {rep.seconds:.0f} s: {rep.message[-1500:]}")
    return {"installed_now": not rep.already_installed, "install_seconds": round(rep.seconds, 1)}


# --------------------------------------------------------------------------- measuring

def settings_for(args, model: str, concurrency: int, osl: int, eos: dict,
                 server_tokens: bool = True) -> aiperf_runner.AiperfSettings:
    return aiperf_runner.AiperfSettings(
        model=model, tokenizer=args.model_dir, concurrency=concurrency,
        request_count=args.num_requests or max(32, 8 * concurrency),
        warmup_request_count=args.warmup_requests if args.warmup_requests >= 0 else max(2, concurrency),
        isl=args.prompt_len, osl=osl, extra_inputs=eos, seed=args.seed,
        use_server_token_count=server_tokens)


def measure(server, run: str, args, concurrencies: list[int], osl: int, eos: dict) -> list[dict]:
    results = []
    for c in concurrencies:
        # llama-cpp-python's stream carries no usage: there aiperf counts tokens with the tokenizer
        s = settings_for(args, server.model_name, c, osl, eos, server_tokens=server.target != "llama.cpp")
        attempts = []
        for i in range(max(1, args.runs_per_point)):
            # each run its own prompts: a repeat of the same ones would come from the prefix cache
            s = dataclasses.replace(s, seed=args.seed + i)
            procs = server.processes()
            artifacts = (ROOT / "var" / "bench" / args.name / "aiperf"
                         / f"{re.sub(r'[^A-Za-z0-9.]+', '_', run)}_c{c}_{i}")
            r = aiperf_runner.run_profile(peer_setup.AIPERF_CLI, server.base_url, s, artifacts, procs,
                                          label=f"{run} c={c} run {i + 1}")
            log(aiperf_runner.describe(r))
            attempts.append(r)
        best = max(attempts, key=lambda r: (not r["errors"], r["output_tokens_per_s"] or 0))
        best.update(run=run, target=server.target, dtype=server.dtype, concurrency=c,
                    attempts=[{"output_tokens_per_s": r["output_tokens_per_s"], "errors": r["errors"],
                               "ttft_ms_p99": (r.get("ttft_ms") or {}).get("p99"),
                               "itl_ms_p99": (r.get("itl_ms") or {}).get("p99")} for r in attempts])
        results.append(best)
    return results


def _cpu(r: dict, proc: str) -> Optional[float]:
    return ((r.get("cpu") or {}).get(proc) or {}).get("cpu_ms_per_1k_tokens")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None


def compare(results: list[dict], pairs: dict[str, tuple[str, str]]) -> list[dict]:
    """ours / vLLM at each concurrency, for each (ours run, vLLM run) pair."""
    by = {(r["run"], r["concurrency"]): r for r in results}
    out = []
    for pair, (ours, peer) in pairs.items():
        for c in sorted({r["concurrency"] for r in results}):
            a, b = by.get((ours, c)), by.get((peer, c))
            if a is None or b is None:
                continue
            out.append({
                "pair": pair, "ours": ours, "vllm": peer, "concurrency": c,
                "tok_s": [a["output_tokens_per_s"], b["output_tokens_per_s"]],
                "tok_s_ratio": _ratio(a["output_tokens_per_s"], b["output_tokens_per_s"]),
                "ttft_p99_ms": [a["ttft_ms"]["p99"], b["ttft_ms"]["p99"]],
                "ttft_p99_ratio": _ratio(a["ttft_ms"]["p99"], b["ttft_ms"]["p99"]),
                "itl_p50_ratio": _ratio(a["itl_ms"]["p50"], b["itl_ms"]["p50"]),
                "frontend_cpu_ms_per_1k": [_cpu(a, "frontend"), _cpu(b, "API server")],
                "frontend_cpu_ratio": _ratio(_cpu(a, "frontend"), _cpu(b, "API server")),
            })
    return out


def run_capacity(args, eos_field: str, stopper: "_Stopper") -> dict:
    """The zero-cost decoder stack at one concurrency, aiperf as the client."""
    server = _Ours(args.model_dir, "auto", decoder_kind="zero_cost", work_name=f"{args.name}-zero-cost")
    stopper.wait()
    try:
        osl = args.capacity_output_len
        r = measure(server, "ours zero-cost", args, [args.capacity_concurrency], osl, EOS_FIELDS[eos_field](osl))[0]
    finally:
        server.stop()
    path = ("frontend", "tritonserver")
    cpu_s = sum(r["cpu"][p]["cpu_s"] for p in path)
    whole = cpu_s + sum(r["cpu"][p]["cpu_s"] for p in ("decoder stub", "other stubs"))
    tok = r["output_tokens"]
    r["serving_path"] = list(path)
    r["serving_path_tokens_per_cpu_s"] = round(tok / cpu_s, 1) if cpu_s else None
    r["whole_stack_tokens_per_cpu_s"] = round(tok / whole, 1) if whole else None
    r["cores_for_35k_tok_s"] = round(35000 / r["serving_path_tokens_per_cpu_s"], 1) if cpu_s else None
    r["notes"] = server.notes
    log(f"zero-cost serving path: {r['serving_path_tokens_per_cpu_s']} streamed tok per CPU-s of frontend + "
        f"tritonserver ({r['whole_stack_tokens_per_cpu_s']} with the stubs)")
    return r


class _Stopper:
    """Stops a server on a thread, so that its shutdown (our stack's tensorrt_llm model can take its
    whole 30 s grace to unload) overlaps the next server's start-up; `wait()` before measuring."""

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self.times: list[dict] = []

    def stop(self, server, run: str) -> None:
        self.wait()

        def _stop():
            t0 = time.monotonic()
            server.stop()
            self.times.append({"phase": f"stopping {run} (overlapped)", "stop_s": round(time.monotonic() - t0, 1)})

        self._thread = threading.Thread(target=_stop, name="stop-server")
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


# --------------------------------------------------------------------------- main

def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="needs head_dim >= 32 for vLLM's CPU attention")
    ap.add_argument("--targets", default="ours,vllm", help="add llama.cpp to include llama-cpp-python's server")
    ap.add_argument("--ours-dtypes", default="auto,float32", help="first = our fastest (the pair's 'fastest')")
    ap.add_argument("--vllm-dtypes", default="bfloat16,float32", help="first = vLLM's fastest on this box")
    ap.add_argument("--llama-cpp-dtype", default="f32", help="GGUF type for llama.cpp")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--num-requests", type=int, default=0, help="per point (default: max(32, 8 x concurrency))")
    ap.add_argument("--warmup-requests", type=int, default=-1, help="per point (default: max(2, concurrency))")
    ap.add_argument("--prompt-len", type=int, default=128, help="synthetic prompt tokens (aiperf --isl)")
    ap.add_argument("--output-len", type=int, default=64, help="output tokens (aiperf --osl)")
    ap.add_argument("--eos-field", choices=sorted(EOS_FIELDS), default="ignore_eos",
                    help="how every server is asked for exactly --output-len tokens (the same for all): "
                         "ignore_eos: true, or min_tokens = output length for a server without ignore_eos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-per-point", type=int, default=2, help="the better run (no errors, higher tok/s) counts")
    ap.add_argument("--vllm-threads", type=int, default=0, help="OMP_NUM_THREADS for vLLM (0: vLLM's default)")
    ap.add_argument("--llama-cpp-threads", type=int, default=1)
    ap.add_argument("--capacity-concurrency", type=int, default=64, help="zero-cost stack (0 skips it)")
    ap.add_argument("--capacity-output-len", type=int, default=256)
    ap.add_argument("--no-install", action="store_true", help="skip peers that are not installed yet")
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    t_begin = time.monotonic()
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    eos = EOS_FIELDS[args.eos_field](args.output_len)
    targets = args.targets.split(",")
    _install("aiperf")

    # Pairs run back to back: ours fastest, vLLM fastest, ours float32, vLLM float32 (then llama.cpp).
    ours_dt = args.ours_dtypes.split(",") if "ours" in targets else []
    vllm_dt = args.vllm_dtypes.split(",") if "vllm" in targets else []
    plan: list[tuple[str, str]] = []
    for i in range(max(len(ours_dt), len(vllm_dt))):
        plan += [("ours", ours_dt[i])] if i < len(ours_dt) else []
        plan += [("vllm", vllm_dt[i])] if i < len(vllm_dt) else []
    if "llama.cpp" in targets:
        plan.append(("llama.cpp", args.llama_cpp_dtype))

    runs: dict[str, dict] = {}
    results: list[dict] = []
    phases: list[dict] = []
    names: dict[tuple[str, str], str] = {}
    stopper = _Stopper()
    for target, dtype in plan:
        t0 = time.monotonic()
        try:
            install = {} if target == "ours" or args.no_install else _install(target)
            server = start_run(target, dtype, args)
        except (peer_setup.PeerUnavailable, RuntimeError, OSError) as e:
            msg = str(e)
            log(f"!! {target} {dtype} is NOT available here and is left out: {msg.splitlines()[0] if msg else e!r}")
            runs[f"{target} {dtype}"] = {"available": False, "reason": msg[-2000:]}
            continue
        run = f"{target} {server.dtype}"
        names[(target, dtype)] = run
        started = time.monotonic()
        runs[run] = {"available": True, "target": target, "dtype": server.dtype, "notes": server.notes,
                     "startup_s": round(started - t0, 1), **install}
        stopper.wait()     # the previous server is gone before this one is measured
        try:
            eos_here = {"logit_bias": {"2": -100}} if target == "llama.cpp" else eos   # llama.cpp has neither field
            results += measure(server, run, args, concurrencies, args.output_len, eos_here)
        except RuntimeError as e:
            log(f"!! {run}: {e}")
            runs[run]["error"] = str(e)[-2000:]
        finally:
            stopper.stop(server, run)
        phases.append({"phase": run, "startup_s": round(started - t0, 1),
                       "measure_s": round(time.monotonic() - started, 1)})

    capacity = None
    if args.capacity_concurrency and "ours" in targets:
        t0 = time.monotonic()
        try:
            capacity = run_capacity(args, args.eos_field, stopper)
        except RuntimeError as e:
            log(f"!! zero-cost stack: {e}")
            capacity = None
        phases.append({"phase": "ours zero-cost", "total_s": round(time.monotonic() - t0, 1)})
    stopper.wait()
    phases += stopper.times

    pairs = {}
    if ours_dt and vllm_dt:
        fastest = (names.get(("ours", ours_dt[0])), names.get(("vllm", vllm_dt[0])))
        if all(fastest):
            pairs["fastest"] = fastest
        for dt in ours_dt[1:]:       # the same-dtype pair(s): float32 by default
            same = (names.get(("ours", dt)), names.get(("vllm", dt)))
            if dt in vllm_dt[1:] and all(same):
                pairs[dt] = same
    ratios = compare(results, pairs)
    goal = goals.peers_goals(results, capacity)
    total_s = round(time.monotonic() - t_begin, 1)
    write_json(args.name, {
        "benchmark": "peers", "machine": machine_info(),
        "setup": {"client": f"aiperf {peer_setup.AIPERF_VERSION}", "model_dir": args.model_dir,
                  "prompt_tokens": args.prompt_len, "output_tokens": args.output_len,
                  "extra_inputs": eos, "concurrency": concurrencies, "seed": args.seed,
                  "seed_per_run": "seed + run index (0, 1, ...)",
                  "request_counts": {c: settings_for(args, "", c, args.output_len, eos).request_count
                                     for c in concurrencies},
                  "warmup_request_counts": {c: settings_for(args, "", c, args.output_len, eos).warmup_request_count
                                            for c in concurrencies},
                  "vllm_threads": args.vllm_threads or "vLLM default",
                  "capacity": {"concurrency": args.capacity_concurrency, "output_tokens": args.capacity_output_len},
                  "runs_per_point": args.runs_per_point,
                  "notes": "one server at a time, on the same cores as aiperf; CPU = utime+stime from /proc over "
                           "aiperf's profiling phase (warm-up excluded); tokens = the servers' usage counts"},
        "runs": runs, "results": results, "pairs": {k: list(v) for k, v in pairs.items()}, "ratios": ratios,
        "capacity": capacity, "goals": goal, "phases": phases, "total_s": total_s})
    if results:
        plot(args.name, results, concurrencies)
    for g in goal:
        log(goals.describe(g))
    log(f"done in {total_s:.0f} s")
    return 0


# --------------------------------------------------------------------------- plots

def plot(name: str, results: list[dict], concurrencies: list[int]) -> None:
    pyplot = plt()
    runs = list(dict.fromkeys(r["run"] for r in results))
    by = {(r["run"], r["concurrency"]): r for r in results}
    width = 0.8 / max(1, len(runs))
    fig, axes = pyplot.subplots(1, 2, figsize=(13, 4.5))
    for i, run in enumerate(runs):
        xs = [j + i * width for j in range(len(concurrencies))]
        tok = [(by.get((run, c)) or {}).get("output_tokens_per_s") or 0 for c in concurrencies]
        bars = axes[0].bar(xs, tok, width, label=run)
        for b, v in zip(bars, tok):
            axes[0].annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
        axes[1].bar(xs, [((by.get((run, c)) or {}).get("ttft_ms") or {}).get("p99") or 0 for c in concurrencies],
                    width, label=run)
    for ax, title, ylabel in zip(axes, ("output tokens/s (aiperf)", "TTFT p99 (aiperf)"), ("tokens/s", "ms")):
        ax.set_xticks([j + width * (len(runs) - 1) / 2 for j in range(len(concurrencies))])
        ax.set_xticklabels([f"concurrency {c}" for c in concurrencies])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    save_fig(fig, name, f"{Path(name).name}.png")

    # CPU-ms per 1,000 output tokens, stacked by process, one panel per concurrency
    fig, axes = pyplot.subplots(1, len(concurrencies), figsize=(4.5 * len(concurrencies), 4.5), squeeze=False)
    procs = list(dict.fromkeys(p for r in results for p in r["cpu"] if p != "aiperf (client)"))
    colors = dict(zip(procs, pyplot.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for ax, c in zip(axes[0], concurrencies):
        for i, run in enumerate(runs):
            r = by.get((run, c))
            if r is None:
                continue
            bottom = 0.0
            for p in procs:
                v = _cpu(r, p)
                if v:
                    ax.bar(i, v, 0.6, bottom=bottom, color=colors[p], label=p)
                    bottom += v
            ax.annotate(f"{bottom:.0f}", (i, bottom), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(runs, rotation=20, fontsize=7)
        ax.set_title(f"concurrency {c}")
        ax.set_ylabel("CPU-ms per 1,000 output tokens")
        ax.grid(alpha=0.3, axis="y")
    handles = {lab: h for ax in axes[0] for h, lab in zip(*ax.get_legend_handles_labels())}
    axes[0][-1].legend(handles.values(), handles.keys(), loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    fig.suptitle("server CPU per 1,000 output tokens, by process (aiperf's own CPU excluded)")
    save_fig(fig, name, f"{Path(name).name}_cpu.png")


if __name__ == "__main__":
    sys.exit(main())
