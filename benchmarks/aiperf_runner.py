"""One aiperf profile against an OpenAI endpoint, with the CPU time of chosen server processes.

aiperf is NVIDIA's benchmark client for OpenAI and Triton endpoints; `peer_setup.install_aiperf`
puts version 0.13.0 into its own venv (var/peers/aiperf). `run_profile` runs

    aiperf profile --model M --url BASE --endpoint-type chat --streaming --tokenizer MODEL_DIR
        --concurrency C --request-count N --warmup-request-count W
        --isl 128 --isl-stddev 0 --osl 64 --osl-stddev 0 --extra-inputs ignore_eos:true
        --random-seed S --use-server-token-count --artifact-dir DIR
        --ui none --no-server-metrics --no-gpu-telemetry --export-level summary

(`command()` builds exactly this) and reads back what aiperf wrote: `profile_export_aiperf.json`
(the profiling phase's metrics, warm-up excluded) and `phase_manifest.json` (each phase's
wall-clock start and end, epoch nanoseconds).

Why these flags: `--osl` is sent as `max_completion_tokens`, and `ignore_eos` makes every reply
exactly that long; `--use-server-token-count` counts output tokens from the server's `usage`
(aiperf then asks for `stream_options.include_usage`) instead of re-tokenizing the streamed text,
which for a random model's output does not give back the generated count; server-metrics
scraping (on by default, it polls `/metrics`) and GPU telemetry are off so that the client does
the same work against every server.

Warm-up and measurement are one aiperf invocation, so CPU is not read around the process: a
sampler thread reads utime+stime of each watched process from /proc/<pid>/stat every 50 ms, and
the CPU used over the profiling phase is interpolated at the phase's start and end from the
manifest. aiperf's own CPU (all its service processes, start-up included) is the rusage of the
reaped aiperf process tree.

Metrics returned (aiperf's definitions, as the client sees them):
  output_tokens_per_s  output_token_throughput: output tokens / profiling-phase duration
  ttft_ms              time_to_first_token percentiles
  itl_ms               inter_token_latency: per request (latency - TTFT) / (output tokens - 1)
  icl_ms               inter_chunk_latency: every gap between two content SSE events
  content_events       ICL count + requests: SSE events that carried content, so a server that
                       coalesces tokens into fewer events shows tokens_per_event > 1
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import ROOT, log, rel

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class AiperfSettings:
    """Everything that goes on aiperf's command line except the server's URL and the output folder."""
    model: str                      # the served model name
    tokenizer: str                  # the local model directory (prompts are made with its tokenizer)
    concurrency: Optional[int]      # closed loop; with request_rate, a cap on requests in flight
    request_count: int
    warmup_request_count: int
    isl: int = 128                  # synthetic prompt tokens (bare text; the chat template adds ~7)
    osl: int = 64                   # max_completion_tokens
    extra_inputs: dict = field(default_factory=lambda: {"ignore_eos": True})
    seed: int = 0
    use_server_token_count: bool = True
    endpoint_type: str = "chat"
    streaming: bool = True
    request_rate: Optional[float] = None   # requests/s, Poisson arrivals (open loop)
    isl_range_ratio: float = 0.0    # prompt lengths uniform in isl*(1 -+ ratio) (aiperf --random-range-ratio)
    export_level: str = "summary"   # "records" adds profile_export.jsonl (per-request TTFT/latency)


def command(cli: Path | str, base_url: str, s: AiperfSettings, artifact_dir: Path | str) -> list[str]:
    """aiperf's command line. `base_url` may end in /v1 (aiperf appends /v1/chat/completions itself)."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    cmd = [str(cli), "profile", "--model", s.model, "--url", url, "--endpoint-type", s.endpoint_type]
    if s.streaming:
        cmd.append("--streaming")
    cmd += ["--tokenizer", s.tokenizer]
    if s.concurrency:
        cmd += ["--concurrency", str(s.concurrency)]
    if s.request_rate:
        cmd += ["--request-rate", f"{s.request_rate:g}", "--arrival-pattern", "poisson"]
    cmd += ["--request-count", str(s.request_count)]
    if s.warmup_request_count:
        cmd += ["--warmup-request-count", str(s.warmup_request_count)]
    cmd += ["--isl", str(s.isl), "--isl-stddev", "0", "--osl", str(s.osl), "--osl-stddev", "0"]
    if s.isl_range_ratio:
        cmd += ["--random-range-ratio", json.dumps({"input": s.isl_range_ratio, "output": 0.0})]
    cmd += ["--random-seed", str(s.seed)]
    if s.extra_inputs:
        # key:value pairs; aiperf parses the value as JSON-ish (true -> True, 64 -> 64)
        cmd += ["--extra-inputs", *(f"{k}:{json.dumps(v)}" for k, v in s.extra_inputs.items())]
    if s.use_server_token_count:
        cmd.append("--use-server-token-count")
    cmd += ["--artifact-dir", str(artifact_dir), "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry",
            "--export-level", s.export_level]
    return cmd


# --------------------------------------------------------------------------- CPU sampling

def proc_cpu_ticks(pid: int) -> Optional[int]:
    """utime + stime of one process (clock ticks, children excluded), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[11]) + int(fields[12])     # fields 14 and 15 of proc(5)


class CpuSampler:
    """Samples the CPU ticks of fixed groups of pids (and optionally of a process tree whose members
    are re-listed every `rescan_s`) on a thread; `cpu_between` interpolates each group's CPU seconds
    over any interval inside the sampled span."""

    def __init__(self, groups: dict[str, list[int]], interval_s: float = 0.05,
                 tree: Optional[tuple[str, Callable[[], Optional[int]]]] = None, rescan_s: float = 0.5):
        self.groups = {k: list(v) for k, v in groups.items()}
        self.interval_s = interval_s
        self.tree = tree                # (label, a callable returning the root pid once it exists)
        self.rescan_s = rescan_s
        self.samples: list[tuple[int, dict[int, int]]] = []
        self._tree_pids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)

    def __enter__(self) -> "CpuSampler":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _rescan(self) -> None:
        root = self.tree[1]() if self.tree else None
        if root is None:
            return
        import psutil
        try:
            p = psutil.Process(root)
            self._tree_pids |= {root, *(c.pid for c in p.children(recursive=True))}
        except psutil.Error:
            pass

    def _sample(self) -> None:
        pids = {p for ps in self.groups.values() for p in ps} | self._tree_pids
        t = time.time_ns()
        ticks = {p: c for p in pids if (c := proc_cpu_ticks(p)) is not None}
        self.samples.append((t, ticks))

    def _loop(self) -> None:
        next_scan = 0.0
        while not self._stop.wait(self.interval_s):
            if self.tree and time.monotonic() >= next_scan:
                self._rescan()
                next_scan = time.monotonic() + self.rescan_s
            self._sample()

    def _ticks_at(self, pid: int, t_ns: int) -> Optional[float]:
        """The pid's CPU ticks at t_ns, interpolated between the samples around it (None: never seen)."""
        seen = [(t, s[pid]) for t, s in self.samples if pid in s]
        if not seen:
            return None
        if t_ns <= seen[0][0]:
            return float(seen[0][1])     # not seen yet at t_ns: it had used no CPU we can count
        for (ta, ca), (tb, cb) in zip(seen, seen[1:]):
            if ta <= t_ns <= tb:
                return ca + (cb - ca) * ((t_ns - ta) / (tb - ta) if tb > ta else 0.0)
        return float(seen[-1][1])        # gone (or last sample) before t_ns: its count stops there

    def cpu_between(self, t0_ns: int, t1_ns: int) -> dict[str, float]:
        groups = dict(self.groups)
        if self.tree:
            groups[self.tree[0]] = sorted(self._tree_pids)
        out = {}
        for label, pids in groups.items():
            total = 0.0
            for pid in pids:
                a, b = self._ticks_at(pid, t0_ns), self._ticks_at(pid, t1_ns)
                if a is not None and b is not None:
                    total += b - a
            out[label] = total / _CLK_TCK
        return out


# --------------------------------------------------------------------------- one profile

def _metric(d: dict, tag: str, stat: str = "avg") -> Optional[float]:
    v = (d.get(tag) or {}).get(stat)
    return None if v is None else float(v)


def _pcts(d: dict, tag: str) -> dict[str, Optional[float]]:
    return {k: _metric(d, tag, k) for k in ("avg", "p50", "p90", "p99")}


def parse_artifacts(artifact_dir: Path) -> dict[str, Any]:
    """The figures this project reports, from aiperf's summary JSON and phase manifest."""
    d = json.loads((artifact_dir / "profile_export_aiperf.json").read_text())
    manifest = json.loads((artifact_dir / "phase_manifest.json").read_text())
    phase = next(p for p in manifest["phases"] if p.get("phase_kind") == "profiling")
    # The profiling phase's span, which aiperf's output_token_throughput divides by (its
    # benchmark_duration can be shorter, e.g. under --request-rate) and the CPU window is cut at.
    duration = (phase["end_ns"] - phase["start_ns"]) / 1e9
    requests = int(_metric(d, "request_count") or 0)
    out_tokens = _metric(d, "total_output_tokens") or _metric(d, "total_osl") or 0.0
    gaps = int(_metric(d, "inter_chunk_latency", "count") or 0)
    # every successful streamed request had one first content event plus one event per gap
    events = gaps + requests if gaps else None
    return {
        "aiperf_version": d.get("aiperf_version"),
        "requests": requests,
        "errors": int(_metric(d, "error_request_count") or 0),
        "error_summary": d.get("error_summary") or [],
        "duration_s": round(duration, 3),
        "aiperf_benchmark_duration_s": _metric(d, "benchmark_duration"),
        "output_tokens": int(out_tokens),
        "output_tokens_per_s": _metric(d, "output_token_throughput"),
        "requests_per_s": _metric(d, "request_throughput"),
        "output_sequence_length": _pcts(d, "output_sequence_length"),
        "input_sequence_length_avg": _metric(d, "input_sequence_length"),
        "content_events": events,
        "content_events_per_s": round(events / duration, 1) if events and duration else None,
        "tokens_per_event": round(out_tokens / events, 3) if events else None,
        "ttft_ms": _pcts(d, "time_to_first_token"),
        "itl_ms": _pcts(d, "inter_token_latency"),
        "icl_ms": _pcts(d, "inter_chunk_latency"),
        "e2e_ms": _pcts(d, "request_latency"),
        "profiling_window_ns": [phase["start_ns"], phase["end_ns"]],
        "warmup_requests_done": next((p.get("successful_request_count") for p in manifest["phases"]
                                      if p.get("phase_kind") == "warmup"), 0),
        **({"_samples": _samples(artifact_dir / "profile_export.jsonl")}
           if (artifact_dir / "profile_export.jsonl").exists() else {}),
    }


def _samples(path: Path) -> dict[str, list[float]]:
    """Per-request TTFT and latency (seconds) of the profiling phase, from --export-level records."""
    out: dict[str, list[float]] = {"ttft_s": [], "e2e_s": []}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if (rec.get("metadata") or {}).get("benchmark_phase") != "profiling":
            continue
        m = rec.get("metrics") or {}
        for key, tag in (("ttft_s", "time_to_first_token"), ("e2e_s", "request_latency")):
            v = (m.get(tag) or {}).get("value")
            if v is not None:
                out[key].append(v / 1000.0)
    return out


def _rusage_children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_profile(cli: Path | str, base_url: str, settings: AiperfSettings, artifact_dir: Path,
                processes: dict[str, list[int]], label: str = "", timeout: float = 900.0) -> dict[str, Any]:
    """Runs one aiperf profile and returns its metrics plus, for each group in `processes`, the CPU
    it used over the profiling phase: `cpu_s` and `cpu_ms_per_1k_tokens`. Raises RuntimeError when
    aiperf fails (with the tail of its output)."""
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    # aiperf takes a relative tokenizer path for a Hugging Face repo id when offline: pass it absolute
    tokenizer = Path(settings.tokenizer)
    run_settings = AiperfSettings(**{**asdict(settings), "tokenizer": str(tokenizer if tokenizer.is_absolute()
                                                                         else ROOT / tokenizer)})
    cmd = command(cli, base_url, run_settings, rel(artifact_dir))
    out_path = artifact_dir / "aiperf.out"
    # Not HF_HUB_OFFLINE: with it, aiperf 0.13 treats a local tokenizer directory as a Hub repo id and
    # fails (common/tokenizer.py, _load_from_hub -> _from_pretrained_local); a local path needs no network.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    load = f"rate {settings.request_rate:g}/s" if settings.request_rate else f"c={settings.concurrency}"
    log(f"{label}: aiperf {load}, {settings.request_count} requests "
        f"(+{settings.warmup_request_count} warm-up), output in {rel(artifact_dir)}")
    holder: dict[str, Optional[int]] = {"pid": None}
    cpu0 = _rusage_children_cpu()
    t0 = time.monotonic()
    with open(out_path, "wb") as out, CpuSampler(processes, tree=("aiperf (client)", lambda: holder["pid"])) as sampler:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        holder["pid"] = proc.pid
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = -9
    wall = time.monotonic() - t0
    aiperf_cpu = _rusage_children_cpu() - cpu0
    if rc != 0 or not (artifact_dir / "profile_export_aiperf.json").exists():
        tail = out_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"aiperf exited with {rc} (output: {rel(out_path)}):\n{tail}")
    r = parse_artifacts(artifact_dir)
    t_start, t_end = r["profiling_window_ns"]
    cpu = sampler.cpu_between(t_start, t_end)
    tokens = r["output_tokens"]
    r["cpu"] = {k: {"cpu_s": round(v, 3), "cores": round(v / r["duration_s"], 3) if r["duration_s"] else None,
                    "cpu_ms_per_1k_tokens": round(1e6 * v / tokens, 1) if tokens else None}
                for k, v in cpu.items()}
    r["aiperf_invocation"] = {"wall_s": round(wall, 1), "cpu_s_all_processes": round(aiperf_cpu, 2),
                              "command": command("aiperf", base_url, settings, rel(artifact_dir)),
                              "output": rel(out_path)}
    r["settings"] = asdict(settings)
    r["label"] = label
    return r


def describe(r: dict) -> str:
    def p(key: str, stat: str) -> str:
        v = (r.get(key) or {}).get(stat)
        return "-" if v is None else f"{v:.1f}"
    cpu = ", ".join(f"{k} {v['cpu_ms_per_1k_tokens']}" for k, v in r["cpu"].items()
                    if v.get("cpu_ms_per_1k_tokens") is not None)
    return (f"{r['label']}: {r['output_tokens_per_s'] or 0:.0f} tok/s, {r['content_events_per_s']} events/s, "
            f"TTFT p50/p99 {p('ttft_ms', 'p50')}/{p('ttft_ms', 'p99')} ms, ITL p50/p99 {p('itl_ms', 'p50')}/"
            f"{p('itl_ms', 'p99')} ms, event gaps p50/p99 {p('icl_ms', 'p50')}/{p('icl_ms', 'p99')} ms, "
            f"errors {r['errors']}; CPU-ms per 1k tokens: {cpu}; aiperf "
            f"{r['aiperf_invocation']['wall_s']} s wall, {r['aiperf_invocation']['cpu_s_all_processes']} CPU-s")
