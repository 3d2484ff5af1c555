"""Asyncio load generator for any OpenAI-compatible endpoint (our frontend or a peer).

Streamed chat completions at a fixed concurrency (closed loop) or a fixed Poisson arrival rate
(open loop, optionally capped by a concurrency limit); prompt and output lengths fixed or
uniform ranges. Reports output tokens/s, requests/s, TTFT, ITL (gaps between streamed content
events), TPOT (per request: (e2e - ttft) / (tokens - 1)), end-to-end latency (mean/p50/p90/p99),
errors by kind, and the load generator's own CPU use (on a small machine it shares the cores).

Generation length: the random test model rarely emits EOS, but to make the output length exact
every server is asked not to stop early: ours with `min_tokens = max_tokens` (the in-process
benchmarks' historic setting; our API also takes `ignore_eos`), vLLM with `ignore_eos: true`,
llama.cpp (no ignore_eos) with `logit_bias` banning `</s>`. See `IGNORE_EOS`.

Library: `run_load(LoadConfig(...))` returns the result dict. CLI without `--base-url` starts our
stack and sweeps concurrencies, writing benchmarks/results/openai_load/.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import aiohttp
import orjson

from benchmarks.common import (DEFAULT_MODEL_DIR, add_openai_load_args, log, machine_info, percentiles, plt, save_fig, self_process,
                               start_stack, write_json)
from benchmarks.workload import Length, RequestSpec, make_requests, warmup_like

# How each server is asked to generate exactly max_tokens tokens.
IGNORE_EOS = {
    "min_tokens": lambda n: {"min_tokens": n},          # ours (and vLLM)
    "ignore_eos": lambda n: {"ignore_eos": True},       # ours, vLLM, SGLang, trtllm-serve
    "logit_bias": lambda n: {"logit_bias": {"2": -100}},  # llama.cpp: ban </s> (Llama-2 id 2)
    "none": lambda n: {},
}


@dataclass
class LoadConfig:
    base_url: str                         # e.g. http://127.0.0.1:8080/v1
    model: str
    num_requests: int = 64
    concurrency: Optional[int] = 8        # closed loop; with `rate`, a cap on requests in flight
    rate: Optional[float] = None          # requests/s, Poisson arrivals (open loop)
    prompt_len: str = "64"
    output_len: str = "64"
    ignore_eos: str = "min_tokens"        # a key of IGNORE_EOS
    extra_body: dict = field(default_factory=dict)
    temperature: float = 1.0
    api_key: Optional[str] = None
    warmup_requests: int = 2
    request_timeout: float = 600.0
    max_duration: Optional[float] = None  # stop sending new requests after this many seconds
    seed: int = 0
    model_dir: str = DEFAULT_MODEL_DIR    # the tokenizer that makes prompts of exact token counts
    progress: bool = True
    label: str = ""


@dataclass
class RequestRecord:
    start: float
    prompt_tokens: int
    max_tokens: int
    ttft: Optional[float] = None
    end: Optional[float] = None
    output_tokens: int = 0
    content_events: int = 0
    gaps: list[float] = field(default_factory=list)
    usage_reported: bool = False
    error: Optional[str] = None
    status: Optional[int] = None


def _body(cfg: LoadConfig, spec: RequestSpec) -> bytes:
    body = {"model": cfg.model, "messages": [{"role": "user", "content": spec.prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": spec.max_tokens,
            "temperature": cfg.temperature}
    body.update(IGNORE_EOS[cfg.ignore_eos](spec.max_tokens))
    body.update(cfg.extra_body)
    return orjson.dumps(body)


async def _one(session: aiohttp.ClientSession, cfg: LoadConfig, spec: RequestSpec) -> RequestRecord:
    url = cfg.base_url.rstrip("/") + "/chat/completions"
    rec = RequestRecord(time.perf_counter(), spec.prompt_tokens, spec.max_tokens)
    last = None
    try:
        async with session.post(url, data=_body(cfg, spec),
                                timeout=aiohttp.ClientTimeout(total=cfg.request_timeout)) as resp:
            rec.status = resp.status
            if resp.status != 200:
                await resp.read()
                rec.error = f"http_{resp.status}"
                return rec
            buf = b""
            done = False
            # Read whatever arrived and split it into lines ourselves: much cheaper than
            # StreamReader.readline per line, and events that arrived together share a timestamp.
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                lines = (buf + data).split(b"\n")
                buf = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    msg = orjson.loads(payload)
                    if "error" in msg:
                        rec.error = f"stream_error:{(msg['error'] or {}).get('code') or 'error'}"
                        done = True
                        break
                    usage = msg.get("usage")
                    if usage:
                        rec.output_tokens = int(usage.get("completion_tokens") or 0)
                        rec.usage_reported = True
                    for ch in msg.get("choices") or ():
                        delta = ch.get("delta") or {}
                        if delta.get("content") or delta.get("reasoning_content"):
                            rec.content_events += 1
                            if rec.ttft is None:
                                rec.ttft = now - rec.start
                            elif last is not None:
                                rec.gaps.append(now - last)
                            last = now
                if done:
                    break
    except asyncio.TimeoutError:
        rec.error = "timeout"
    except aiohttp.ClientError as e:
        rec.error = type(e).__name__
    except Exception as e:  # a broken stream must not stop the run
        rec.error = type(e).__name__
    rec.end = time.perf_counter()
    if rec.error is None:
        if not rec.usage_reported:
            rec.output_tokens = rec.content_events
        if rec.output_tokens == 0:
            rec.error = "no_output"
    return rec


async def _run(cfg: LoadConfig, specs: list[RequestSpec], on_start=None, on_stop=None
               ) -> tuple[list[RequestRecord], float, float]:
    headers = {"Content-Type": "application/json"}
    if cfg.api_key:
        headers["Authorization"] = f"Bearer {cfg.api_key}"
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        if cfg.warmup_requests:
            await asyncio.gather(*(_one(session, cfg, spec)
                                   for spec in warmup_like(cfg.model_dir, specs, cfg.warmup_requests, cfg.seed)))
        bar = None
        if cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(specs), desc=cfg.label or "requests", unit="req", file=sys.stderr,
                       mininterval=1.0, leave=False)
        records: list[RequestRecord] = []
        if on_start is not None:
            on_start()
        t0 = time.perf_counter()
        deadline = t0 + cfg.max_duration if cfg.max_duration else None

        async def run_one(spec):
            rec = await _one(session, cfg, spec)
            records.append(rec)
            if bar is not None:
                bar.update(1)

        if cfg.rate:
            rng = random.Random(cfg.seed + 1)
            sem = asyncio.Semaphore(cfg.concurrency) if cfg.concurrency else None

            async def capped(spec):
                if sem is None:
                    return await run_one(spec)
                async with sem:
                    await run_one(spec)

            tasks, t_next = [], t0
            for spec in specs:
                t_next += rng.expovariate(cfg.rate)
                delay = t_next - time.perf_counter()
                if deadline and t_next > deadline:
                    break
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(capped(spec)))
            await asyncio.gather(*tasks)
        else:
            queue = list(reversed(specs))

            async def worker():
                while queue and not (deadline and time.perf_counter() > deadline):
                    await run_one(queue.pop())

            await asyncio.gather(*(worker() for _ in range(min(cfg.concurrency or 1, len(specs)))))
        t1 = time.perf_counter()
        if on_stop is not None:
            on_stop()
        if bar is not None:
            bar.close()
    return records, t0, t1


def summarize(cfg: LoadConfig, records: list[RequestRecord], t0: float, t1: float,
              client_cpu_s: Optional[float] = None) -> dict[str, Any]:
    ok = [r for r in records if r.error is None]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    duration = t1 - t0
    out_tokens = sum(r.output_tokens for r in ok)
    gaps = [g for r in ok for g in r.gaps]
    tpot = [(r.end - r.start - r.ttft) / (r.output_tokens - 1) for r in ok if r.ttft is not None and r.output_tokens > 1]
    ms = lambda d: {k: (None if v is None else round(v * 1000, 3)) for k, v in d.items()}
    return {
        "label": cfg.label,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("api_key", "progress")},
        "requests": len(records),
        "completed": len(ok),
        "errors": errors,
        "duration_s": round(duration, 3),
        "output_tokens": out_tokens,
        "prompt_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens_per_s": round(out_tokens / duration, 2) if duration > 0 else None,
        "requests_per_s": round(len(ok) / duration, 3) if duration > 0 else None,
        "tokens_per_content_event": round(out_tokens / max(1, sum(r.content_events for r in ok)), 3),
        "usage_reported": all(r.usage_reported for r in ok) if ok else None,
        "short_outputs": sum(1 for r in ok if r.output_tokens < r.max_tokens),
        "ttft_ms": ms(percentiles(r.ttft for r in ok if r.ttft is not None)),
        "itl_ms": ms(percentiles(gaps)),
        "tpot_ms": ms(percentiles(tpot)),
        "e2e_ms": ms(percentiles(r.end - r.start for r in ok)),
        "client_cpu_s": None if client_cpu_s is None else round(client_cpu_s, 3),
        "client_cores": None if client_cpu_s is None or duration <= 0 else round(client_cpu_s / duration, 3),
        "_samples": {"ttft_s": [r.ttft for r in ok if r.ttft is not None], "e2e_s": [r.end - r.start for r in ok],
                     "itl_s": gaps[:20000]},
    }


def run_load(cfg: LoadConfig, specs: Optional[list[RequestSpec]] = None, on_start=None, on_stop=None
             ) -> dict[str, Any]:
    """Runs one load configuration and returns its summary (see `summarize`). Blocking.

    `on_start`/`on_stop` are called right before the first measured request is sent (after the
    warm-up) and right after the last one ends: the window to measure anything else over.
    """
    if specs is None:
        specs = make_requests(cfg.model_dir, cfg.num_requests, Length.parse(cfg.prompt_len),
                              Length.parse(cfg.output_len), seed=cfg.seed)
    me = self_process()
    cpu = {}

    def start():
        cpu["c0"] = sum(me.cpu_times()[:2])
        if on_start is not None:
            on_start()

    def stop():
        cpu["c1"] = sum(me.cpu_times()[:2])
        if on_stop is not None:
            on_stop()

    records, t0, t1 = asyncio.run(_run(cfg, specs, start, stop))
    return summarize(cfg, records, t0, t1, cpu["c1"] - cpu["c0"])


def strip_samples(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "_samples"}


def describe(result: dict) -> str:
    def p(d, k):
        v = (result.get(d) or {}).get(k)
        return "-" if v is None else f"{v:.1f}"
    return (f"{result['label']}: {result['output_tokens_per_s']} out tok/s, {result['requests_per_s']} req/s, "
            f"TTFT p50 {p('ttft_ms', 'p50')} ms p99 {p('ttft_ms', 'p99')} ms, ITL p50 {p('itl_ms', 'p50')} ms "
            f"p99 {p('itl_ms', 'p99')} ms, e2e p50 {p('e2e_ms', 'p50')} ms, errors {result['errors'] or 0}, "
            f"client {result['client_cores']} cores")


# --------------------------------------------------------------------------- plots

def plot_sweep(name: str, results: list[dict], x_key: str = "concurrency", title: str = "") -> list:
    """Throughput and latency percentiles against concurrency (or rate), one line per label group."""
    pyplot = plt()
    groups: dict[str, list[dict]] = {}
    for r in results:
        groups.setdefault(r.get("group", ""), []).append(r)
    fig, axes = pyplot.subplots(1, 3, figsize=(14, 4))
    for g, rs in groups.items():
        xs = [r["config"][x_key] for r in rs]
        axes[0].plot(xs, [r["output_tokens_per_s"] or 0 for r in rs], marker="o", label=g or None)
        axes[1].plot(xs, [r["ttft_ms"]["p50"] or 0 for r in rs], marker="o", label=f"{g} p50".strip())
        axes[1].plot(xs, [r["ttft_ms"]["p99"] or 0 for r in rs], marker="x", linestyle="--", label=f"{g} p99".strip())
        axes[2].plot(xs, [r["itl_ms"]["p50"] or 0 for r in rs], marker="o", label=f"{g} p50".strip())
        axes[2].plot(xs, [r["itl_ms"]["p99"] or 0 for r in rs], marker="x", linestyle="--", label=f"{g} p99".strip())
    for ax, t, y in zip(axes, ("output tokens/s", "TTFT", "inter-token latency"), ("tokens/s", "ms", "ms")):
        ax.set_xlabel(x_key)
        ax.set_ylabel(y)
        ax.set_title(t)
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    paths = [save_fig(fig, name, f"{Path(name).name}_sweep.png")]
    # latency distribution (CDF) of every run
    fig, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for r in results:
        for ax, key in zip(axes, ("ttft_s", "e2e_s")):
            xs = sorted(v * 1000 for v in r["_samples"][key])
            if xs:
                ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=r["label"])
    for ax, t in zip(axes, ("TTFT CDF", "end-to-end latency CDF")):
        ax.set_xlabel("ms")
        ax.set_xscale("log")
        ax.set_title(t)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    paths.append(save_fig(fig, name, f"{Path(name).name}_latency_cdf.png"))
    return paths


# --------------------------------------------------------------------------- CLI

def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_openai_load_args(ap, model_help="model name (default: the first of /v1/models)")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--output-len", default="64", help="tokens: N or LO:HI (uniform)")
    ap.add_argument("--ignore-eos", choices=sorted(IGNORE_EOS), default="min_tokens")
    ap.add_argument("--extra-body", default="{}", help="JSON merged into every request body")
    ap.add_argument("--max-duration", type=float, default=120.0, help="seconds per point before it stops sending")
    ap.add_argument("--name", default="openai_load", help="results folder under benchmarks/results/")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    stack = None
    base_url = args.base_url
    try:
        if base_url is None:
            stack = start_stack(args.model_dir, work_name="openai_load")
            base_url = stack.api_url
        model = args.model or _first_model(base_url, args.api_key)
        points = ([("rate", float(x)) for x in args.rate.split(",")] if args.rate
                  else [("concurrency", int(x)) for x in args.concurrency.split(",")])
        results = []
        for kind, value in points:
            n = args.num_requests or (max(10, int(10 * value)) if kind == "rate" else max(16, 8 * value))
            cfg = LoadConfig(base_url=base_url, model=model, num_requests=n,
                             concurrency=int(value) if kind == "concurrency" else args.max_concurrency,
                             rate=value if kind == "rate" else None, prompt_len=args.prompt_len,
                             output_len=args.output_len, ignore_eos=args.ignore_eos,
                             extra_body=orjson.loads(args.extra_body), api_key=args.api_key,
                             max_duration=args.max_duration, model_dir=args.model_dir,
                             progress=not args.no_progress, label=f"{kind} {value:g}")
            log(f"{cfg.label}: {n} streamed chat requests, prompt {cfg.prompt_len} tokens, output {cfg.output_len}")
            r = run_load(cfg)
            log(describe(r))
            results.append(r)
        data = {"benchmark": "openai_load", "machine": machine_info(),
                "target": "our stack (started for this run)" if stack else "given --base-url",
                "results": [strip_samples(r) for r in results]}
        write_json(args.name, data)
        plot_sweep(args.name, results, "rate" if args.rate else "concurrency",
                   f"{model} at {'our stack' if stack else base_url}")
    finally:
        if stack is not None:
            stack.stop()
    return 0


def _first_model(base_url: str, api_key: Optional[str]) -> str:
    import urllib.request
    req = urllib.request.Request(base_url.rstrip("/") + "/models",
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return orjson.loads(r.read())["data"][0]["id"]


if __name__ == "__main__":
    sys.exit(main())
