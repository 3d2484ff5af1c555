"""Where the time to first token goes: every segment from the socket's first byte to the first SSE byte.

`make bench-ttft`. Starts our stack with the stamp switch on (LLAMA_TRITON_TTFT_STAMPS, see
llama_triton/ttft_stamps.py: off by default, no cost when off), loads it with aiperf (the same
profile as bench-peers: 128-token prompts, 64 output tokens, ignore_eos, streaming chat) at each
concurrency, and joins, per request of aiperf's profiling phase, the frontend's time points with
the decoder's (by Triton request id; both on CLOCK_MONOTONIC of this host). Each segment's mean,
p50 and p99 go next to aiperf's TTFT at the same point, with the coverage: the segments' means
summed (= the mean of first byte -> first content write) over aiperf's mean TTFT. What coverage
lacks is outside the server's process: the client's own sending and reading, the kernel's socket
buffers, and the time a request's bytes wait for the event loop to read them.

Segments (frontend stamps in frontend/telemetry/ttft_stamps.py; decoder stamps in
llama_triton/backend/decoder_model.py):
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import aiperf_runner, peer_setup
from benchmarks.common import DEFAULT_MODEL_DIR, ROOT, log, machine_info, percentiles, rel, write_json

NAME = "ttft_segments"

# (segment, from stamp, to stamp, what it holds). They telescope: their sum is first_byte -> first_write.
SEGMENTS = (
    ("HTTP parse", "first_byte", "body_read",
     "first bytes of the request in aiohttp's protocol -> headers parsed, request task, middlewares, body read"),
    ("validation", "body_read", "validated", "JSON body -> pydantic request model"),
    ("template hand-off", "validated", "render_start",
     "tool plan, context check, to_thread: until the worker thread starts the template"),
    ("template", "render_start", "rendered", "chat template (jinja) in the worker thread"),
    ("tokenize", "rendered", "encoded", "tokenizer in the worker thread"),
    ("back to the loop", "encoded", "on_loop", "the worker thread's result reaches the event loop"),
    ("guide", "on_loop", "guide_done", "tools / response_format guide resolved (none here)"),
    ("admission/gate", "guide_done", "grpc_start",
     "limits, decoder tensors, Generation, the 429 gate, until the gRPC stream opens"),
    ("gRPC call -> execute()", "grpc_start", "exec",
     "tritonclient aio stream, tritonserver, the Python backend's IPC, until the decoder's execute()"),
    ("decoder admission", "exec", "submitted",
     "execute() to the engine's submit returning: input tensors read and parsed, outputs chosen, submit"),
    ("queue and prefill", "submitted", "first_out",
     "waiting for the engine's next step, the prefill, the first sampled token (engine thread)"),
    ("pump", "first_out", "send", "the response pump thread takes the output and builds its tensors"),
    ("gRPC delivery", "send", "grpc_first",
     "sender.send() into tritonserver, the gRPC stream, until the frontend reads the response"),
    ("SSE write", "grpc_first", "first_write",
     "parse the response, detokenize, render the chunk(s), write them to the socket"),
)
__doc__ += "\n".join(f"  {name:24s} {a} -> {b}: {what}" for name, a, b, what in SEGMENTS) + "\n"

STAMP_DIR = ROOT / "var" / "bench" / NAME / "stamps"


def _read_new(directory: Path, offsets: dict[Path, int]) -> list[dict]:
    """The JSON lines appended to every stamp file since `offsets` (updated in place)."""
    out = []
    for path in sorted(directory.glob("*.jsonl")):
        start = offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
        end = data.rfind(b"\n") + 1          # a line still being written waits for the next read
        offsets[path] = start + end
        out += [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return out


def _stats(values: list[float]) -> dict[str, Optional[float]]:
    p = percentiles(values, (50, 99))
    return {"mean": round(statistics.fmean(values), 3) if values else None,
            "p50": None if p["p50"] is None else round(p["p50"], 3),
            "p99": None if p["p99"] is None else round(p["p99"], 3)}


def segment_table(frontend: list[dict], decoder: list[dict], windows_mono_ns: list[tuple[int, int]],
                  client: Optional[dict[str, tuple[int, int]]] = None) -> dict[str, Any]:
    """Per-segment mean/p50/p99 (ms) over the requests whose first byte fell in a window and that
    have every stamp (a 200 stream with a first content write). `client`: X-Request-Id -> the
    client's (request start, first content received) on the same clock, for the two edges outside
    the server: client start -> first byte, first write -> the client has the first token."""
    by_rid = {d["rid"]: d for d in decoder if d.get("rid")}
    rows: list[dict] = []
    skipped = {"outside window": 0, "incomplete": 0}
    for f in frontend:
        if f.get("first_byte") is None or not any(lo <= f["first_byte"] <= hi for lo, hi in windows_mono_ns):
            skipped["outside window"] += 1
            continue
        points = {**f, **{k: v for k, v in by_rid.get(f["rid"], {}).items() if k != "rid"}}
        if f.get("status") != 200 or any(points.get(a) is None or points.get(b) is None for _, a, b, _ in SEGMENTS):
            skipped["incomplete"] += 1
            continue
        rows.append(points)
    segments = []
    for name, a, b, what in SEGMENTS:
        ms = [(r[b] - r[a]) / 1e6 for r in rows]
        segments.append({"segment": name, "from": a, "to": b, "what": what, **_stats(ms)})
    total = [(r["first_write"] - r["first_byte"]) / 1e6 for r in rows]
    send_call = [(r["sent"] - r["send"]) / 1e6 for r in rows if r.get("sent") is not None]
    out = {"requests": len(rows), "skipped": skipped, "segments": segments, "server_ttft_ms": _stats(total),
           "of_which_send_call_ms": _stats(send_call)}
    if client:
        joined = [(client[r["crid"]], r) for r in rows if r.get("crid") in client]
        out["client_edges"] = {
            "requests": len(joined),
            "client start -> first byte": _stats([(r["first_byte"] - c[0]) / 1e6 for c, r in joined]),
            "first write -> client has the token": _stats([(c[1] - r["first_write"]) / 1e6 for c, r in joined]),
            "client TTFT of these requests": _stats([(c[1] - c[0]) / 1e6 for c, _ in joined])}
    return out


def client_times(artifact_dir: Path, wall_minus_mono: int) -> dict[str, tuple[int, int]]:
    """X-Request-Id -> (request start, first token received) on CLOCK_MONOTONIC, from aiperf's
    per-request records of the profiling phase (request_start_ns is wall-clock; + its TTFT)."""
    path = artifact_dir / "profile_export.jsonl"
    out: dict[str, tuple[int, int]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        meta = rec.get("metadata") or {}
        ttft = ((rec.get("metrics") or {}).get("time_to_first_token") or {}).get("value")
        if meta.get("benchmark_phase") != "profiling" or not meta.get("x_request_id") or ttft is None:
            continue
        start = meta["request_start_ns"] - wall_minus_mono
        out[meta["x_request_id"]] = (start, start + int(ttft * 1e6))
    return out


def run_point(stack, concurrency: int, args, offsets: dict[Path, int], tag: str) -> dict[str, Any]:
    """One aiperf profile; its summary, and the raw stamps and client times for pooling."""
    n = args.num_requests or max(32, 4 * concurrency)
    s = aiperf_runner.AiperfSettings(model=stack.model_name, tokenizer=args.model_dir, concurrency=concurrency,
                                     request_count=n, warmup_request_count=max(2, concurrency), isl=args.prompt_len,
                                     osl=args.output_len, extra_inputs={"ignore_eos": True}, seed=args.seed,
                                     export_level="records")
    label = f"{tag} c={concurrency}"
    _read_new(STAMP_DIR, offsets)           # skip whatever came before this point
    # aiperf's times are wall-clock epoch ns; the stamps are CLOCK_MONOTONIC: one offset, read here.
    wall_minus_mono = time.time_ns() - time.monotonic_ns()
    artifacts = ROOT / "var" / "bench" / NAME / "aiperf" / f"{tag}_c{concurrency}"
    r = aiperf_runner.run_profile(peer_setup.AIPERF_CLI, stack.base_url, s, artifacts, stack.processes(), label=label)
    client = client_times(artifacts, wall_minus_mono)
    log(aiperf_runner.describe(r))
    t0, t1 = r["profiling_window_ns"]
    window = (t0 - wall_minus_mono, t1 - wall_minus_mono)
    # A request's frontend line is written when its handler ends, just after the client read its
    # last byte: read until every request aiperf counted has its line, for at most a few seconds.
    frontend: list[dict] = []
    decoder: list[dict] = []
    deadline = time.monotonic() + 5.0
    while True:
        records = _read_new(STAMP_DIR, offsets)
        frontend += [x for x in records if "handler" in x]
        decoder += [x for x in records if "exec" in x]
        table = segment_table(frontend, decoder, [window], client)
        if table["requests"] >= r["requests"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    aiperf_mean = (r.get("ttft_ms") or {}).get("avg")
    server_mean = table["server_ttft_ms"]["mean"]
    log(f"{label}: {table['requests']} stamped requests; server first byte -> first write mean {server_mean} ms, "
        f"aiperf's mean TTFT {aiperf_mean} ms")
    r.pop("_samples", None)
    summary = {"concurrency": concurrency, "aiperf": {k: r.get(k) for k in (
        "requests", "errors", "duration_s", "output_tokens_per_s", "ttft_ms", "itl_ms", "icl_ms", "tokens_per_event",
        "cpu")}, "stamped_requests": table["requests"], "server_ttft_ms": table["server_ttft_ms"]}
    return {"summary": summary, "raw": (frontend, decoder, window, client)}


def pooled_point(concurrency: int, attempts: list[dict]) -> dict[str, Any]:
    """The segment table over every attempt's requests at one point, beside aiperf's TTFT of the
    same requests (its per-request records pooled) and each attempt's own aiperf summary."""
    frontend = [f for a in attempts for f in a["raw"][0]]
    decoder = [d for a in attempts for d in a["raw"][1]]
    windows = [a["raw"][2] for a in attempts]
    client = {k: v for a in attempts for k, v in a["raw"][3].items()}
    table = segment_table(frontend, decoder, windows, client)
    aiperf_ttft = _stats([(end - start) / 1e6 for start, end in client.values()])
    server_mean = table["server_ttft_ms"]["mean"]
    table["coverage"] = round(server_mean / aiperf_ttft["mean"], 3) if server_mean and aiperf_ttft["mean"] else None
    return {"concurrency": concurrency, "aiperf_ttft_ms": aiperf_ttft, "aiperf_requests": len(client),
            **table, "attempts": [a["summary"] for a in attempts]}


def log_point(config: str, p: dict) -> None:
    log(f"{config}, c={p['concurrency']}: {p['requests']} stamped requests of {p['aiperf_requests']}; first byte -> "
        f"first write mean {p['server_ttft_ms']['mean']} ms, aiperf TTFT mean {p['aiperf_ttft_ms']['mean']} ms: "
        f"coverage {p['coverage']}")
    for seg in p["segments"]:
        log(f"  {seg['segment']:24s} mean {seg['mean']:8.2f}  p50 {seg['p50']:8.2f}  p99 {seg['p99']:8.2f} ms")
    for name, st in (p.get("client_edges") or {}).items():
        if isinstance(st, dict):
            log(f"  (client) {name}: mean {st['mean']} p50 {st['p50']} p99 {st['p99']} ms")


# --------------------------------------------------------------------------- lever: sequence_length

async def _grpc_round(grpc_url: str, outputs: tuple[str, ...], prompt_ids: list[int], concurrency: int, n: int,
                      max_tokens: int) -> dict[str, int]:
    """n streamed requests straight to `tensorrt_llm`, `concurrency` at a time, asking for exactly
    `outputs`; tokens counted from output_ids (each streamed response holds only its new ones)."""
    import asyncio
    import uuid

    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    from benchmarks.layer_cost import decoder_arrays_for
    client = grpcclient.InferenceServerClient(grpc_url)
    counts = {"tokens": 0, "responses": 0, "errors": 0}
    todo = list(range(n))

    async def one(seed: int) -> None:
        arrays = decoder_arrays_for(prompt_ids, max_tokens, seed)
        inputs = []
        for name, arr in arrays.items():
            t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            inputs.append(t)
        wanted = [grpcclient.InferRequestedOutput(o) for o in outputs]
        done = asyncio.Event()

        async def requests():
            yield {"model_name": "tensorrt_llm", "inputs": inputs, "outputs": wanted,
                   "request_id": f"lever-{uuid.uuid4().hex}", "enable_empty_final_response": True}
            await done.wait()
        try:
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    counts["errors"] += 1
                    break
                resp = result.get_response()
                if resp.outputs:
                    counts["responses"] += 1
                    counts["tokens"] += result.as_numpy("output_ids").size
                if resp.parameters["triton_final_response"].bool_param:
                    break
        finally:
            done.set()

    async def worker():
        while todo:
            await one(todo.pop())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return counts


def sequence_length_lever(model_dir: str, rounds: int, concurrency: int, n: int, max_tokens: int) -> dict[str, Any]:
    """What the `sequence_length` output (which TensorRT-LLM's backend makes every request ask for)
    costs per streamed token: the zero-cost decoder, direct gRPC, requests asking for output_ids
    alone against output_ids + sequence_length, alternating A B B A per round pair; CPU of
    tritonserver, the decoder stub and this client per 1,000 tokens."""
    import asyncio

    import psutil

    from benchmarks.common import CpuMeter, self_process
    from benchmarks.layer_cost import chat_ids
    prompt = chat_ids(model_dir, "hello " * 120)
    stack = _Stack(model_dir, "auto", (), f"{NAME}-lever", decoder_kind="zero_cost")
    variants = {"output_ids": ("output_ids",), "output_ids + sequence_length": ("output_ids", "sequence_length")}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    try:
        procs = stack.processes()
        groups = {"tritonserver": [psutil.Process(p) for p in procs["tritonserver"]],
                  "decoder stub": [psutil.Process(p) for p in procs["decoder stub"]]}
        grpc_url = stack.stack.grpc_url
        asyncio.run(_grpc_round(grpc_url, variants["output_ids"], prompt, concurrency, concurrency, 8))  # warm-up
        order = []
        for i in range(rounds):
            names = list(variants)
            order += names if i % 2 == 0 else names[::-1]
        for name in order:
            meter = CpuMeter({"tritonserver": lambda: groups["tritonserver"],
                              "decoder stub": lambda: groups["decoder stub"],
                              "client": lambda: [self_process()]}).start()
            counts = asyncio.run(_grpc_round(grpc_url, variants[name], prompt, concurrency, n, max_tokens))
            cpu = meter.stop()
            tokens = counts["tokens"]
            per_k = {k: round(1e6 * v["cpu_s"] / tokens, 1) if tokens else None for k, v in cpu.items()}
            per_k["total"] = round(sum(v for v in per_k.values() if v is not None), 1)
            runs[name].append({**counts, "wall_s": round(meter.wall, 2), "cpu_ms_per_1k_tokens": per_k,
                               "tokens_per_s": round(tokens / meter.wall) if meter.wall else None})
            log(f"lever sequence_length, {name}: {tokens} tokens, {counts['errors']} errors, "
                f"CPU-ms per 1k tokens {per_k}")
    finally:
        stack.stop()

    def median(name: str, key: str) -> Optional[float]:
        vals = [r["cpu_ms_per_1k_tokens"][key] for r in runs[name] if r["errors"] == 0]
        return round(statistics.median(vals), 1) if vals else None
    keys = ("tritonserver", "decoder stub", "client", "total")
    a, b = variants
    summary = {k: {"without": median(a, k), "with": median(b, k)} for k in keys}
    for k, v in summary.items():
        v["ratio_with_over_without"] = round(v["with"] / v["without"], 3) if v["with"] and v["without"] else None
        v["extra_us_per_token"] = round(v["with"] - v["without"], 2) if v["with"] is not None and v["without"] else None
    return {"lever": "sequence_length output per streamed response", "decoder": "zero_cost", "path": "Triton gRPC",
            "concurrency": concurrency, "requests_per_round": n, "output_len": max_tokens, "rounds": rounds,
            "order": order, "runs": runs, "median": summary}


class _Stack:
    """Our stack as `make serve` runs it (launcher defaults, --dtype), plus extra frontend options."""

    def __init__(self, model_dir: str, dtype: str, frontend_args: tuple[str, ...], work_name: str,
                 decoder_kind: str = "llama"):
        from benchmarks.common import start_stack
        from llama_triton.defaults import MAX_BATCH_SIZE, MAX_QUEUE_SIZE
        extra = ("--dtype", dtype) + (("--", *frontend_args) if frontend_args else ())
        self.stack = start_stack(model_dir, decoder_kind=decoder_kind, max_batch_size=MAX_BATCH_SIZE,
                                 max_queue_size=MAX_QUEUE_SIZE, extra=extra, work_name=work_name)
        self.base_url = self.stack.api_url
        self.model_name = self.stack.model_name
        self.notes = f"llama-triton serve --dtype {dtype}" + (f" -- {' '.join(frontend_args)}" if frontend_args else "")

    def processes(self) -> dict[str, list[int]]:
        from benchmarks.peers import _Ours
        return _Ours.processes(self)        # the same roles as bench-peers

    def stop(self) -> None:
        self.stack.stop()


# The templating lever (frontend --inline-prompt-chars): before = every prompt templated and
# tokenized in a worker thread (the default, as the request-isolation work left it), after = prompts
# without tools of at most 2048 characters on the event loop. Both stacks up at once, points alternated.
CONFIGS = (("before: template and tokenizer always in a worker thread (default)", ()),
           ("after: short prompts templated and tokenized on the loop", ("--inline-prompt-chars", "2048")))


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None


def inline_lever(runs: list[dict]) -> dict[str, Any]:
    before, after = runs
    out = []
    for pb, pa in zip(before["points"], after["points"]):
        def mean_of(p, key, stat):
            vals = [a["aiperf"][key].get(stat) for a in p["attempts"] if a["aiperf"][key].get(stat) is not None]
            return statistics.fmean(vals) if vals else None

        def tok_s(p):
            return statistics.fmean(a["aiperf"]["output_tokens_per_s"] for a in p["attempts"])
        out.append({"concurrency": pb["concurrency"],
                    **{f"ttft_{k}_after_over_before": _ratio(pa["aiperf_ttft_ms"][k], pb["aiperf_ttft_ms"][k])
                       for k in ("mean", "p50", "p99")},
                    "server_ttft_mean_after_over_before": _ratio(pa["server_ttft_ms"]["mean"],
                                                                 pb["server_ttft_ms"]["mean"]),
                    "itl_p99_after_over_before": _ratio(mean_of(pa, "itl_ms", "p99"), mean_of(pb, "itl_ms", "p99")),
                    "tok_s_after_over_before": _ratio(tok_s(pa), tok_s(pb))})
    return {"lever": "template and tokenizer on the event loop for short prompts (--inline-prompt-chars)",
            "before": before["config"], "after": after["config"], "points": out}


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--concurrency", default="16,64")
    ap.add_argument("--num-requests", type=int, default=0,
                    help="per profile (default: max(32, 4 x concurrency); --rounds profiles per point are pooled)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--rounds", type=int, default=4,
                    help="profiles per configuration and concurrency, alternating configurations (pooled)")
    ap.add_argument("--only-default", action="store_true",
                    help="only the default configuration (no before/after run of the templating lever)")
    ap.add_argument("--lever-rounds", type=int, default=3,
                    help="A/B rounds of the sequence_length lever (0: skip it)")
    ap.add_argument("--note", default="", help="how the machine was used meanwhile (goes into the JSON)")
    args = ap.parse_args(argv)
    rep = peer_setup.install_aiperf()
    if not rep.ok:
        raise SystemExit(f"aiperf could not be installed: {rep.message[-1500:]}")
    STAMP_DIR.mkdir(parents=True, exist_ok=True)
    for old in STAMP_DIR.glob("*.jsonl"):
        old.unlink()
    from llama_triton import ttft_stamps
    os.environ[ttft_stamps.ENV] = str(STAMP_DIR)    # inherited by the launcher and every process it starts
    machine = machine_info()
    configs = CONFIGS[-1:] if args.only_default else CONFIGS
    concurrencies = [int(x) for x in args.concurrency.split(",")]
    # Every configuration's stack is up for the whole run and the points alternate between them
    # (A B, then B A), so that the other work on the machine weighs on both alike.
    stacks = []
    attempts: dict[tuple[int, int], list[dict]] = {}
    offsets: dict[Path, int] = {}
    try:
        for i, (config, frontend_args) in enumerate(configs):
            stacks.append(_Stack(args.model_dir, args.dtype, frontend_args, f"{NAME}-{i}"))
        for rnd in range(args.rounds):
            for c in concurrencies:
                order = list(range(len(configs)))
                for i in (order if rnd % 2 == 0 else order[::-1]):
                    attempts.setdefault((i, c), []).append(
                        run_point(stacks[i], c, args, offsets, f"config{i}_round{rnd}"))
    finally:
        for stack in stacks:
            stack.stop()
    runs = []
    for i, (config, _) in enumerate(configs):
        points = [pooled_point(c, attempts[(i, c)]) for c in concurrencies]
        for p in points:
            log_point(config, p)
        runs.append({"config": config, "target": stacks[i].notes, "points": points})
    levers = []
    if len(runs) == 2:
        levers.append(inline_lever(runs))
    os.environ.pop(ttft_stamps.ENV)                 # the lever measures the serving path as it runs unstamped
    if args.lever_rounds:
        levers.append(sequence_length_lever(args.model_dir, args.lever_rounds, 64, 128, 256))
    write_json(NAME, {
        "benchmark": NAME, "client": f"aiperf {peer_setup.AIPERF_VERSION}", "machine": machine,
        "note": args.note, "stamps": rel(STAMP_DIR),
        "workload": {"prompt_len": args.prompt_len, "output_len": args.output_len, "ignore_eos": True,
                     "streaming": True},
        "segment_definitions": [{"segment": n, "from": a, "to": b, "what": w} for n, a, b, w in SEGMENTS],
        "rounds": args.rounds, "runs": runs, "levers": levers})
    return 0


if __name__ == "__main__":
    sys.exit(main())
