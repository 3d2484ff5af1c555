"""Adversarial mix: a victim stream's inter-token gaps with and without it, and what a cancelled
compile still costs (issue 24).

Starts one replica (the default tiny model) and runs victim streams (streamed chat, ignore_eos,
--output-len tokens) one after another, measuring the gap between consecutive content chunks:
  (a) alone, for --seconds;
  (b) while the whole mix of tests/integration/test_adversarial.py (tests/integration/adversarial_mix.py)
      runs in a loop: the same new schema from six clients with the first hanging up, eight compiles
      abandoned at once, two schemas too slow to compile (killed at the compile deadline), and the
      body floods just under the body limit (120,000 short messages, the most messages allowed
      filled with text, over a million stop_token_ids) with a request at every cap.
Reported: gap p50/p99 of each phase and their ratio (b/a), the mix's answers by part and status,
and then, with the replica idle again,
  (c) what one cancelled compile costs: a schema too slow to compile, sent and hung up on once
      its compile runs (HANG_UP_AFTER_S; a client gone within milliseconds never starts one). The compile workers are sampled every 20 ms: the CPU seconds the abandoned worker
      used until it was killed at the deadline (the last sample before it vanished: a lower bound
      by at most one interval), the wall time from the hang-up to the kill, and the CPU its
      replacement spent starting up.
The machine's load average is recorded: on a shared box the ratio is a rough figure.

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
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import psutil

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import DEFAULT_MODEL_DIR, ROOT, log, machine_info, percentiles, start_stack, write_json
from frontend.openai.structured import DEFAULT_COMPILE_TIMEOUT_S, DEFAULT_WORKERS
from tests.integration.adversarial_mix import (abandon_compiles, at_caps_body, flood_bodies, post_raw,
                                               schema_body, send_request, shared_schema_leader_hangs_up,
                                               stream_events, too_slow, victim_body)
from tests.integration.http_helpers import post_chat

NAME = "adversarial_gap"
SAMPLE_S = 0.02
HANG_UP_AFTER_S = 0.3


def victim_gaps(base: str, model: str, output_len: int) -> list[float]:
    gaps, last = [], None
    for data, at in stream_events(base, victim_body(model, output_len)):
        if data == b"[DONE]":
            break
        event = orjson.loads(data)
        if "error" in event:
            raise RuntimeError(f"the victim got an error event: {event}")
        if any((c.get("delta") or {}).get("content") for c in event.get("choices", [])):
            if last is not None:
                gaps.append(at - last)
            last = at
    return gaps


def run_victims(base: str, model: str, output_len: int, seconds: float) -> list[float]:
    gaps: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        gaps += victim_gaps(base, model, output_len)
    return gaps


def mix_loop(base: str, model: str, stop: threading.Event, answers: collections.Counter) -> None:
    """The test's mix, over and over: (part, status) counted in `answers`."""
    bodies = flood_bodies(model)
    with ThreadPoolExecutor(max_workers=8) as pool:
        while not stop.is_set():
            run = uuid.uuid4().hex[:8]
            for status, _ in shared_schema_leader_hangs_up(base, model, run):
                answers["shared schema", status] += 1
            abandon_compiles(base, model, run)
            answers["abandoned compiles (hung up)", None] += 8
            slow = [pool.submit(post_chat, base, schema_body(model, too_slow(i, run))) for i in range(2)]
            floods = [(name, pool.submit(post_raw, base, body)) for name, (body, _) in bodies.items()]
            at_caps = pool.submit(post_chat, base, at_caps_body(model))
            for f in slow:
                answers["too slow to compile", f.result()[0]] += 1
            for name, f in floods:
                answers[name, f.result()[0]] += 1
            answers["at the caps", at_caps.result()[0]] += 1


def compile_workers(frontend_pids: list[int]) -> dict[int, psutil.Process]:
    out = {}
    for pid in frontend_pids:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                if "compile_worker" in " ".join(child.cmdline()):
                    out[child.pid] = child
        except psutil.Error:
            pass
    return out


def cpu_of(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def wait_pool_idle(frontend_pids: list[int], size: int, timeout_s: float = 600.0) -> None:
    """Until `size` compile workers are up and idle: each blocked on its stdin (sleeping, no CPU)
    for a second. CPU time alone does not tell: a worker still starting at nice 10 on a loaded box
    may get no CPU for a while, and a job sent then waits for its start-up."""
    end = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < end:
        workers = compile_workers(frontend_pids)
        try:
            idle = len(workers) >= size and all(p.status() == psutil.STATUS_SLEEPING for p in workers.values())
        except psutil.Error:
            idle = False
        quiet_since = (quiet_since or time.monotonic()) if idle else None
        if quiet_since is not None and time.monotonic() - quiet_since >= 1.0:
            return
        time.sleep(SAMPLE_S)
    raise RuntimeError("the compile pool did not come back to idle")


def cancelled_compile_cost(base: str, model: str, frontend_pids: list[int], deadline_s: float) -> dict:
    """One schema too slow to compile, sent and hung up on at once, with the pool idle: what the
    worker that took it used before it was killed, and what its replacement used to start."""
    before = compile_workers(frontend_pids)
    start_cpu = {pid: cpu_of(p) for pid, p in before.items()}
    last = dict(start_cpu)
    client = send_request(base, schema_body(model, too_slow(0, f"cancelled {uuid.uuid4().hex[:8]}")))
    time.sleep(HANG_UP_AFTER_S)       # once the compile runs (a client gone at once never starts one)
    client.close()
    hung_up = time.monotonic()
    killed_at, killed, idle_since, replacement = None, None, None, {}
    limit = hung_up + deadline_s * 4 + 300           # the replacement imports torch and xgrammar
    while time.monotonic() < limit:
        now = compile_workers(frontend_pids)
        for pid, p in before.items():
            if pid in now and (c := cpu_of(p)) is not None:
                last[pid] = c
            elif pid not in now and killed is None:
                killed, killed_at = pid, time.monotonic()
        grew = False
        for pid, p in now.items():
            if pid not in before and (c := cpu_of(p)) is not None:
                grew |= c - replacement.get(pid, 0.0) > SAMPLE_S / 4
                replacement[pid] = c
        # done once the replacement is up and idle: no CPU to speak of for half a second
        if killed is not None and replacement:
            idle_since = None if grew else (idle_since or time.monotonic())
            if idle_since is not None and time.monotonic() - idle_since >= 0.5:
                break
        time.sleep(SAMPLE_S)
    if killed is None:
        return {"error": f"no compile worker was killed within {limit - hung_up:.0f} s"}
    return {"compile_deadline_s": deadline_s,
            "killed_worker_cpu_s": round(last[killed] - start_cpu[killed], 3),
            "hang_up_to_kill_s": round(killed_at - hung_up, 3), "hung_up_after_s": HANG_UP_AFTER_S,
            "other_workers_cpu_s": round(sum(last[p] - start_cpu[p] for p in before if p != killed), 3),
            "replacement_start_cpu_s": round(sum(replacement.values()), 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=DEFAULT_MODEL_DIR)
    ap.add_argument("--seconds", type=float, default=60.0, help="per phase")
    ap.add_argument("--output-len", type=int, default=128)
    a = ap.parse_args(argv)
    log("the box may be shared with other jobs: the load average is recorded; treat the ratio as rough")
    stack = start_stack(a.model_dir, work_name=NAME, extra=("--max-tokens-cap", str(a.output_len)))
    base, model = stack.base_url, stack.model_name
    frontends = [p.pid for p in psutil.process_iter(["cmdline"])
                 if "frontend" in " ".join(p.info["cmdline"] or []) and f"--port {stack.port}" in
                 " ".join(p.info["cmdline"] or [])]
    victim_gaps(base, model, 8)                                   # warm-up
    load_a = os.getloadavg()
    log(f"phase a: victims alone for {a.seconds:g} s")
    alone = run_victims(base, model, a.output_len, a.seconds)
    log(f"phase b: victims during the whole adversarial mix for {a.seconds:g} s")
    answers: collections.Counter = collections.Counter()
    stop = threading.Event()
    mixer = threading.Thread(target=mix_loop, args=(base, model, stop, answers), daemon=True)
    mixer.start()
    load_b = os.getloadavg()
    mixed = run_victims(base, model, a.output_len, a.seconds)
    stop.set()
    mixer.join()
    log("phase c: one cancelled compile, the pool idle")
    wait_pool_idle(frontends, DEFAULT_WORKERS)
    cancelled = cancelled_compile_cost(base, model, frontends, DEFAULT_COMPILE_TIMEOUT_S)
    killed = (ROOT / "var" / "bench" / NAME / "stack.log").read_text().count("passed its deadline; worker")
    pa, pb = percentiles(alone), percentiles(mixed)
    result = {"machine": machine_info(), "shared_box_load_avg": {"phase_a": load_a, "phase_b": load_b},
              "seconds_per_phase": a.seconds, "output_len": a.output_len,
              "gap_s_alone": pa, "gap_s_with_mix": pb, "gaps_alone": len(alone), "gaps_with_mix": len(mixed),
              "p99_ratio": pb["p99"] / pa["p99"] if pa["p99"] else None,
              "p50_ratio": pb["p50"] / pa["p50"] if pa["p50"] else None,
              "mix_answers": {f"{part}: {status}": n for (part, status), n in sorted(answers.items(), key=str)},
              "compile_workers_killed": killed, "cancelled_compile": cancelled}
    log(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1))
    write_json(NAME, result)
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
