"""What each serving layer costs: the same workload through three layers of one stack.

(a) engine  - the decoder engine alone, in this process (llama_triton's Engine, configured
              exactly as the `tensorrt_llm` Triton model configures it), while the stack idles;
(b) triton  - Triton gRPC straight to `tensorrt_llm` with token ids (tritonclient.grpc.aio
              streaming, as frontend/decoder/triton_client.py does): adds Triton + the Python backend;
(c) http    - the OpenAI frontend (benchmarks/openai_load.py): adds HTTP, SSE, tokenization,
              detokenization and the frontend's gRPC client.

Every layer gets the same prompts (chat-templated token ids for (a)/(b), the same messages for
(c)), the same output length (min_tokens = max_tokens) and the same closed-loop concurrency.
Reports each layer's output tokens/s, TTFT/ITL percentiles and CPU seconds, and the ratios
b/a and c/b at each concurrency (default 1 and 16).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from benchmarks.common import (DEFAULT_MODEL_DIR, ROOT, CpuMeter, log, machine_info, percentiles, plt, save_fig,
                               self_process, start_stack, style_grouped_bars, write_json)
from benchmarks.workload import Length, RequestSpec, _tokenizer, make_requests

NAME = "layer_cost"
EOS = 2


def chat_ids(model_dir: str, text: str) -> list[int]:
    tok = _tokenizer(model_dir)
    out = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def decoder_arrays_for(prompt_ids: list[int], max_tokens: int, seed: int) -> dict[str, np.ndarray]:
    from llama_triton.trtllm.request_encoding import DecodeSettings, decoder_arrays
    settings = DecodeSettings(prompt_ids=prompt_ids, max_new_tokens=max_tokens, temperature=1.0, seed=seed,
                              end_id=EOS, min_tokens=max_tokens)
    return decoder_arrays(settings, frozenset({"min_tokens"}))


class _Rec:
    __slots__ = ("start", "ttft", "last", "gaps", "tokens", "end", "error")

    def __init__(self):
        self.start = time.perf_counter()
        self.ttft = self.last = self.end = None
        self.gaps: list[float] = []
        self.tokens = 0
        self.error: Optional[str] = None

    def on_tokens(self, n: int) -> None:
        if n <= 0:
            return
        now = time.perf_counter()
        if self.ttft is None:
            self.ttft = now - self.start
        elif self.last is not None:
            self.gaps.append(now - self.last)
        self.last = now
        self.tokens += n


def summarize(layer: str, concurrency: int, recs: list[_Rec], t0: float, t1: float, cpu: dict) -> dict[str, Any]:
    ok = [r for r in recs if r.error is None]
    errors: dict[str, int] = {}
    for r in recs:
        if r.error:
            errors[r.error] = errors.get(r.error, 0) + 1
    dur = t1 - t0
    toks = sum(r.tokens for r in ok)
    ms = lambda d: {k: (None if v is None else round(v * 1000, 3)) for k, v in d.items()}
    total_cpu = sum(v["cpu_s"] for v in cpu.values())
    return {
        "layer": layer, "concurrency": concurrency, "requests": len(recs), "completed": len(ok), "errors": errors,
        "duration_s": round(dur, 3), "output_tokens": toks,
        "output_tokens_per_s": round(toks / dur, 2) if dur > 0 else None,
        "requests_per_s": round(len(ok) / dur, 3) if dur > 0 else None,
        "ttft_ms": ms(percentiles(r.ttft for r in ok if r.ttft is not None)),
        "itl_ms": ms(percentiles(g for r in ok for g in r.gaps)),
        "e2e_ms": ms(percentiles(r.end - r.start for r in ok if r.end)),
        "cpu": cpu, "cpu_s_total": round(total_cpu, 3),
        "tokens_per_cpu_s": round(toks / total_cpu, 1) if total_cpu > 0 else None,
    }


# --------------------------------------------------------------------------- (a) engine alone

class EngineLayer:
    """The engine built exactly as the `tensorrt_llm` model builds it, run on its own thread here."""

    def __init__(self, model_dir: str, engine_params: dict[str, str]):
        from llama_triton.backend.engine_setup import build_engine
        self.engine = build_engine(dict(engine_params, model_dir=str(ROOT / model_dir)))
        self.engine.start()
        self._seq = 0

    def close(self) -> None:
        self.engine.shutdown()

    def _batch(self, items: list[tuple[list[int], RequestSpec]], conc: int) -> tuple[list[_Rec], float, float]:
        from llama_triton.backend.request_decoding import parse_request
        slots = threading.Semaphore(conc)
        done = threading.Event()
        recs: list[_Rec] = []
        remaining = [len(items)]
        lock = threading.Lock()
        t0 = time.perf_counter()
        for ids, spec in items:
            slots.acquire()
            self._seq += 1
            arrays = decoder_arrays_for(ids, spec.max_tokens, seed=self._seq)
            req, _ = parse_request(arrays.get, f"a-{uuid.uuid4().hex}")
            rec = _Rec()
            recs.append(rec)

            def cb(out, rec=rec):
                rec.on_tokens(len(out.token_ids))
                if out.finished:
                    rec.end = time.perf_counter()
                    if out.error:
                        rec.error = "engine_error"
                    slots.release()
                    with lock:
                        remaining[0] -= 1
                        if remaining[0] == 0:
                            done.set()
            self.engine.submit(req, cb)
        done.wait()
        return recs, t0, time.perf_counter()

    def run(self, prompts: list[list[int]], specs: list[RequestSpec], concurrency: int) -> dict[str, Any]:
        pairs = list(zip(prompts, specs))
        self._batch(pairs[:2], 2)   # warm-up
        meter = CpuMeter({"benchmark_process (engine + driver)": lambda: [self_process()]}).start()
        recs, t0, t1 = self._batch(pairs, concurrency)
        return summarize("a_engine", concurrency, recs, t0, t1, meter.stop())


# --------------------------------------------------------------------------- (b) Triton gRPC direct

async def _grpc_load(grpc_url: str, prompts: list[list[int]], specs: list[RequestSpec], concurrency: int,
                     model: str = "tensorrt_llm", on_start=None, on_stop=None) -> tuple[list[_Rec], float, float]:
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    client = grpcclient.InferenceServerClient(grpc_url)

    async def one(ids: list[int], spec: RequestSpec, seed: int) -> _Rec:
        arrays = decoder_arrays_for(ids, spec.max_tokens, seed)
        inputs = []
        for name, arr in arrays.items():
            t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            inputs.append(t)
        done = asyncio.Event()
        rid = f"b-{uuid.uuid4().hex}"

        async def requests():
            yield {"model_name": model, "inputs": inputs, "request_id": rid, "enable_empty_final_response": True}
            await done.wait()

        rec = _Rec()
        try:
            async for result, error in client.stream_infer(requests()):
                if error is not None:
                    rec.error = "triton_error"
                    break
                resp = result.get_response()
                final = resp.parameters["triton_final_response"].bool_param \
                    if "triton_final_response" in resp.parameters else False
                if resp.outputs:
                    n = result.as_numpy("sequence_length")
                    rec.on_tokens(int(n.reshape(-1)[0]) if n is not None else result.as_numpy("output_ids").size)
                if final:
                    break
        except Exception as e:
            rec.error = type(e).__name__
        finally:
            done.set()
        rec.end = time.perf_counter()
        return rec

    queue = list(reversed(list(enumerate(zip(prompts, specs)))))
    recs: list[_Rec] = []

    async def worker():
        while queue:
            i, (ids, spec) = queue.pop()
            recs.append(await one(ids, spec, i))

    try:
        await asyncio.gather(*(one(prompts[i % len(prompts)], specs[i % len(specs)], i) for i in range(2)))
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(specs)))))
        t1 = time.perf_counter()
        if on_stop is not None:
            on_stop()
    finally:
        await client.close()
    return recs, t0, t1


def run_triton(stack, prompts, specs, concurrency) -> dict[str, Any]:
    roles = stack.processes()
    meter = CpuMeter({"tritonserver": lambda: roles["tritonserver"], "python_stubs": lambda: roles["python_stubs"],
                      "client (benchmark process)": lambda: [self_process()]})
    cpu = {}
    recs, t0, t1 = asyncio.run(_grpc_load(stack.grpc_url, prompts, specs, concurrency, on_start=meter.start,
                                          on_stop=lambda: cpu.update(meter.stop())))
    return summarize("b_triton_grpc", concurrency, recs, t0, t1, cpu)


# --------------------------------------------------------------------------- (c) HTTP frontend

def run_http(stack, model_dir: str, specs: list[RequestSpec], concurrency: int) -> dict[str, Any]:
    from benchmarks.openai_load import LoadConfig, run_load
    roles = stack.processes()
    meter = CpuMeter({"frontend": lambda: roles["frontend"], "tritonserver": lambda: roles["tritonserver"],
                      "python_stubs": lambda: roles["python_stubs"],
                      "client (benchmark process)": lambda: [self_process()]})
    cfg = LoadConfig(base_url=stack.api_url, model=stack.model_name, num_requests=len(specs),
                     concurrency=concurrency, ignore_eos="min_tokens", model_dir=model_dir,
                     label=f"c) http c={concurrency}", progress=False)
    cpu = {}
    r = run_load(cfg, specs, on_start=meter.start, on_stop=lambda: cpu.update(meter.stop()))
    total_cpu = sum(v["cpu_s"] for v in cpu.values())
    keep = ("completed", "errors", "duration_s", "output_tokens", "output_tokens_per_s", "requests_per_s",
            "ttft_ms", "itl_ms", "e2e_ms")
    out = {"layer": "c_http_frontend", "concurrency": concurrency, "requests": r["requests"],
           **{k: r[k] for k in keep}, "cpu": cpu, "cpu_s_total": round(total_cpu, 3),
           "tokens_per_cpu_s": round(r["output_tokens"] / total_cpu, 1) if total_cpu > 0 else None}
    return out


# --------------------------------------------------------------------------- main

def _ratio(x: Optional[float], y: Optional[float]) -> Optional[float]:
    return round(x / y, 3) if x and y else None


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--decoder-kind", choices=("llama", "zero_cost"), default="llama")
    ap.add_argument("--concurrency", default="1,16")
    ap.add_argument("--num-requests", type=int, default=0, help="per run (default: max(8, 4 x concurrency))")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of (a, b, c) back to back; the best run of each layer is reported")
    ap.add_argument("--prompt-len", default="128")
    ap.add_argument("--output-len", default="64")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--name", default=NAME)
    args = ap.parse_args(argv)
    concurrencies = [int(x) for x in args.concurrency.split(",")]

    engine_params = {"decoder_kind": args.decoder_kind, "max_batch_size": str(args.max_batch_size),
                     "max_num_tokens": "65536", "max_seq_len": "4096", "max_queue_size": "1024"}
    stack = start_stack(args.model_dir, decoder_kind=args.decoder_kind, max_batch_size=args.max_batch_size,
                        work_name=args.name)
    runs: list[dict] = []
    engine = None
    try:
        log("loading the engine in this process (the stack idles meanwhile)")
        engine = EngineLayer(args.model_dir, engine_params)
        for c in concurrencies:
            n = args.num_requests or max(8, 4 * c)
            specs = make_requests(args.model_dir, n, Length.parse(args.prompt_len), Length.parse(args.output_len),
                                  seed=c)
            prompts = [chat_ids(args.model_dir, s.prompt) for s in specs]
            log(f"concurrency {c}: {n} requests per run, chat prompts of {min(map(len, prompts))}-"
                f"{max(map(len, prompts))} tokens, {args.output_len} output tokens, {args.repeats} rounds")
            for rnd in range(args.repeats):
                for layer, fn in (("a) engine alone", lambda: engine.run(prompts, specs, c)),
                                  ("b) Triton gRPC", lambda: run_triton(stack, prompts, specs, c)),
                                  ("c) HTTP frontend", lambda: run_http(stack, args.model_dir, specs, c))):
                    r = fn()
                    r["round"] = rnd
                    r["prompt_tokens_mean"] = round(sum(map(len, prompts)) / len(prompts), 1)
                    runs.append(r)
                    log(f"  {layer:17s} c={c} round {rnd + 1}: {r['output_tokens_per_s']} out tok/s, TTFT p50 "
                        f"{r['ttft_ms']['p50']} ms, ITL p50 {r['itl_ms']['p50']} ms, {r['cpu_s_total']} CPU s, "
                        f"errors {r['errors'] or 0}")
    finally:
        if engine is not None:
            engine.close()
        stack.stop()

    layers = ("a_engine", "b_triton_grpc", "c_http_frontend")
    best, ratios = [], []
    for c in concurrencies:
        by = {}
        for layer in layers:
            rs = [r for r in runs if r["concurrency"] == c and r["layer"] == layer]
            top = max(rs, key=lambda r: r["output_tokens_per_s"] or 0)
            top = dict(top, runs_output_tokens_per_s=[r["output_tokens_per_s"] for r in rs],
                       median_output_tokens_per_s=statistics.median(r["output_tokens_per_s"] or 0 for r in rs),
                       median_tokens_per_cpu_s=statistics.median(r["tokens_per_cpu_s"] or 0 for r in rs))
            by[layer] = top
            best.append(top)
        a, b, h = by["a_engine"], by["b_triton_grpc"], by["c_http_frontend"]
        ratios.append({
            "concurrency": c,
            "throughput_b_over_a": _ratio(b["output_tokens_per_s"], a["output_tokens_per_s"]),
            "throughput_c_over_b": _ratio(h["output_tokens_per_s"], b["output_tokens_per_s"]),
            "throughput_c_over_a": _ratio(h["output_tokens_per_s"], a["output_tokens_per_s"]),
            "median_throughput_b_over_a": _ratio(b["median_output_tokens_per_s"], a["median_output_tokens_per_s"]),
            "median_throughput_c_over_b": _ratio(h["median_output_tokens_per_s"], b["median_output_tokens_per_s"]),
            "itl_p50_b_over_a": _ratio(b["itl_ms"]["p50"], a["itl_ms"]["p50"]),
            "itl_p50_c_over_b": _ratio(h["itl_ms"]["p50"], b["itl_ms"]["p50"]),
            "ttft_p50_b_over_a": _ratio(b["ttft_ms"]["p50"], a["ttft_ms"]["p50"]),
            "ttft_p50_c_over_b": _ratio(h["ttft_ms"]["p50"], b["ttft_ms"]["p50"]),
            "cpu_per_token_b_over_a": _ratio(a["median_tokens_per_cpu_s"], b["median_tokens_per_cpu_s"]),
            "cpu_per_token_c_over_b": _ratio(b["median_tokens_per_cpu_s"], h["median_tokens_per_cpu_s"]),
        })
        q = ratios[-1]
        log(f"c={c}: best tok/s a {a['output_tokens_per_s']}, b {b['output_tokens_per_s']}, c "
            f"{h['output_tokens_per_s']} -> throughput b/a {q['throughput_b_over_a']}, c/b {q['throughput_c_over_b']}; "
            f"CPU per token b/a {q['cpu_per_token_b_over_a']}, c/b {q['cpu_per_token_c_over_b']}")
    write_json(args.name, {
        "benchmark": "layer_cost", "machine": machine_info(),
        "setup": {"model_dir": args.model_dir, "decoder_kind": args.decoder_kind, "prompt_len": args.prompt_len,
                  "output_len": args.output_len, "repeats": args.repeats, "engine_params": engine_params,
                  "notes": "(a) runs in the benchmark process while the stack idles; all layers share the cores "
                           "with the load generator. `results` holds each layer's best run (highest tok/s) per "
                           "concurrency, `runs` every run. Throughput ratios < 1 mean the outer layer is slower; "
                           "CPU-per-token ratios > 1 mean the outer layer spends more CPU per token (all "
                           "processes of the layer, load generator included)."},
        "results": best, "ratios": ratios, "runs": runs})
    plot(args.name, best, concurrencies)
    return 0


def plot(name: str, results: list[dict], concurrencies: list[int]) -> None:
    pyplot = plt()
    layers = ["a_engine", "b_triton_grpc", "c_http_frontend"]
    fig, axes = pyplot.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(concurrencies)
    for i, c in enumerate(concurrencies):
        by = {r["layer"]: r for r in results if r["concurrency"] == c}
        xs = [j + i * width for j in range(len(layers))]
        tp = [by[l]["output_tokens_per_s"] or 0 for l in layers]
        bars = axes[0].bar(xs, tp, width, label=f"concurrency {c}")
        for b, v in zip(bars, tp):
            axes[0].annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
        axes[1].bar(xs, [by[l]["itl_ms"]["p50"] or 0 for l in layers], width, label=f"concurrency {c}")
    style_grouped_bars(axes, ("output tokens/s", "inter-token latency p50"), ("tokens/s", "ms"), len(layers),
                       len(concurrencies), width, ["(a) engine", "(b) Triton gRPC", "(c) HTTP frontend"])
    save_fig(fig, name, f"{Path(name).name}.png")


if __name__ == "__main__":
    sys.exit(main())
