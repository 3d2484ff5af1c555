"""Adversarial grammar mix: a victim stream's inter-token gaps with and without it (issue 24).

Starts one replica (the default tiny model) and runs victim streams (streamed chat, ignore_eos,
--output-len tokens) one after another, measuring the gap between consecutive content chunks:
  (a) alone, for --seconds;
  (b) while the grammar mix of tests/integration/test_adversarial.py runs in a loop: the same new
      schema from six clients with the first hanging up, eight compiles abandoned at once, two
      schemas too slow to compile (killed at the 5 s deadline).
Reported: gap p50/p99 of each phase and their ratio (b/a), the mix's answers by status, and the
CPU seconds the frontend's compile worker processes used during (b) (what abandoned and too-slow
compiles cost before they were killed), with the number of workers killed (from the stack log).

    .venv/bin/python -m benchmarks.adversarial_gap [--seconds 60] [--output-len 128]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
import time
import urllib.request
import uuid

import psutil

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import DEFAULT_MODEL_DIR, ROOT, log, machine_info, percentiles, start_stack, write_json
from tests.integration.http_helpers import post_chat
from tests.integration.test_adversarial import (nested, read_answer, schema_body, send_and_hang_up, send_request,
                                                too_slow)

NAME = "adversarial_gap"


def victim_gaps(base: str, model: str, output_len: int) -> list[float]:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "max_tokens": output_len, "ignore_eos": True}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    gaps, last = [], None
    with urllib.request.urlopen(req, timeout=300) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"the victim got an error event: {event}")
            if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
    return gaps


def run_victims(base: str, model: str, output_len: int, seconds: float) -> list[float]:
    gaps: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gaps += victim_gaps(base, model, output_len)
    return gaps


def mix_loop(base: str, model: str, stop: threading.Event, statuses: collections.Counter) -> None:
    while not stop.is_set():
        run = uuid.uuid4().hex[:8]
        shared = {**nested(6, {"type": "integer"}), "description": f"shared {run}"}
        leader = send_request(base, schema_body(model, shared))
        followers = [send_request(base, schema_body(model, shared, seed=i)) for i in range(5)]
        time.sleep(0.3)
        leader.close()
        for f in followers:
            statuses[read_answer(f)[0]] += 1
        for i in range(8):
            send_and_hang_up(base, schema_body(model, {"type": "string", "minLength": 3000 + i,
                                                       "maxLength": 3000 + i, "description": run}))
        threads = [threading.Thread(target=lambda i=i: statuses.update([post_chat(base, schema_body(
            model, too_slow(i, run)))[0]])) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def compile_workers_cpu(frontend_pids: list[int]) -> float:
    total = 0.0
    for pid in frontend_pids:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                if "compile_worker" in " ".join(child.cmdline()):
                    t = child.cpu_times()
                    total += t.user + t.system
        except psutil.Error:
            pass
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--seconds", type=float, default=60.0, help="per phase")
    ap.add_argument("--output-len", type=int, default=128)
    a = ap.parse_args(argv)
    stack = start_stack(a.model_dir, work_name=NAME, extra=("--max-tokens-cap", str(a.output_len)))
    base, model = stack.base_url, stack.model_name
    frontends = [p.pid for p in psutil.process_iter(["cmdline"])
                 if "frontend" in " ".join(p.info["cmdline"] or []) and f"--port {stack.port}" in
                 " ".join(p.info["cmdline"] or [])]
    victim_gaps(base, model, 8)                                   # warm-up
    log(f"phase a: victims alone for {a.seconds:g} s")
    alone = run_victims(base, model, a.output_len, a.seconds)
    log(f"phase b: victims during the grammar mix for {a.seconds:g} s")
    statuses: collections.Counter = collections.Counter()
    stop = threading.Event()
    workers_before = compile_workers_cpu(frontends)
    mixer = threading.Thread(target=mix_loop, args=(base, model, stop, statuses), daemon=True)
    mixer.start()
    mixed = run_victims(base, model, a.output_len, a.seconds)
    stop.set()
    mixer.join()
    worker_cpu = compile_workers_cpu(frontends) - workers_before
    killed = (ROOT / "var" / "bench" / NAME / "stack.log").read_text().count("passed its deadline; worker")
    pa, pb = percentiles(alone), percentiles(mixed)
    result = {"machine": machine_info(), "seconds_per_phase": a.seconds, "output_len": a.output_len,
              "gap_s_alone": pa, "gap_s_with_mix": pb, "gaps_alone": len(alone), "gaps_with_mix": len(mixed),
              "p99_ratio": pb["p99"] / pa["p99"] if pa["p99"] else None,
              "p50_ratio": pb["p50"] / pa["p50"] if pa["p50"] else None,
              "mix_statuses": dict(statuses), "compile_workers_killed": killed,
              "compile_workers_cpu_s_during_mix (live workers only)": worker_cpu}
    log(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    write_json(NAME, result)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
