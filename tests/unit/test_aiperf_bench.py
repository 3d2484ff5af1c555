"""The aiperf side-by-side benchmark's own logic (benchmarks/aiperf_runner.py, benchmarks/peers.py):
the exact aiperf command, reading aiperf's files back, CPU accounting, the report (the goal checks:
test_bench_goals.py).
No aiperf or server runs here: `make bench-peers` is the end-to-end check."""
import json
import os
import time

from benchmarks import aiperf_runner, goals, report
from benchmarks.aiperf_runner import AiperfSettings, CpuSampler, command, parse_artifacts, proc_cpu_ticks


def _settings(**kw):
    base = dict(model="llama2-tiny", tokenizer="var/models/llama2-tiny", concurrency=16, request_count=96,
                warmup_request_count=16)
    return AiperfSettings(**{**base, **kw})


def test_command_sends_the_issue_settings_to_aiperf():
    cmd = command("aiperf", "http://127.0.0.1:8080/v1", _settings(), "out")
    text = " ".join(cmd)
    # aiperf appends /v1/chat/completions itself: the base URL must lose its /v1
    assert cmd[cmd.index("--url") + 1] == "http://127.0.0.1:8080"
    for flag in ("--endpoint-type chat", "--streaming", "--concurrency 16", "--request-count 96",
                 "--warmup-request-count 16", "--isl 128", "--isl-stddev 0", "--osl 64", "--osl-stddev 0",
                 "--extra-inputs ignore_eos:true", "--random-seed 0", "--use-server-token-count",
                 "--tokenizer var/models/llama2-tiny", "--no-server-metrics", "--artifact-dir out"):
        assert flag in text, flag
    fallback = command("aiperf", "http://h:1", _settings(extra_inputs={"min_tokens": 64}), "o")
    assert fallback[fallback.index("--extra-inputs") + 1] == "min_tokens:64"


def _write_artifacts(d, *, requests=4, tokens=256, gaps=248, duration=2.0):
    d.mkdir(parents=True, exist_ok=True)
    pct = lambda v: {"avg": v, "p50": v, "p90": v, "p99": 2 * v}
    (d / "profile_export_aiperf.json").write_text(json.dumps({
        "aiperf_version": "0.13.0", "request_count": {"avg": requests}, "benchmark_duration": {"avg": duration},
        "total_output_tokens": {"avg": tokens}, "output_token_throughput": {"avg": tokens / duration},
        "request_throughput": {"avg": requests / duration}, "time_to_first_token": pct(20.0),
        "inter_token_latency": pct(5.0), "inter_chunk_latency": {**pct(5.0), "count": gaps},
        "request_latency": pct(300.0), "output_sequence_length": pct(64.0)}))
    (d / "phase_manifest.json").write_text(json.dumps({"phases": [
        {"phase_kind": "warmup", "start_ns": 1, "end_ns": 2, "successful_request_count": 2},
        {"phase_kind": "profiling", "start_ns": 10, "end_ns": 10 + int(duration * 1e9)}]}))


def test_parse_artifacts_counts_content_events_beside_tokens(tmp_path):
    _write_artifacts(tmp_path, requests=4, tokens=256, gaps=124)    # 32 events per request: 2 tokens each
    r = parse_artifacts(tmp_path)
    assert r["output_tokens"] == 256 and r["output_tokens_per_s"] == 128.0
    assert r["content_events"] == 128 and r["content_events_per_s"] == 64.0 and r["tokens_per_event"] == 2.0
    assert r["ttft_ms"]["p99"] == 40.0 and r["itl_ms"]["p50"] == 5.0
    assert r["profiling_window_ns"] == [10, 10 + 2_000_000_000] and r["warmup_requests_done"] == 2


def test_proc_cpu_ticks_follows_this_process_cpu_time():
    before, t0 = proc_cpu_ticks(os.getpid()), time.process_time()
    while time.process_time() - t0 < 0.2:       # burn 0.2 s of CPU, however long that takes
        pass
    used = (proc_cpu_ticks(os.getpid()) - before) / os.sysconf("SC_CLK_TCK")
    assert abs(used - (time.process_time() - t0)) < 0.05
    assert proc_cpu_ticks(2**22 + 12345) is None     # no such pid


def test_cpu_sampler_interpolates_inside_the_window():
    s = CpuSampler({"a": [1], "b": [2, 3]})
    tck = os.sysconf("SC_CLK_TCK")
    # pid 1 runs one core flat out; pid 3 appears late; pid 2 exits after the second sample
    s.samples = [(0, {1: 0, 2: 0}), (1_000_000_000, {1: tck, 2: tck // 2}), (2_000_000_000, {1: 2 * tck, 3: tck})]
    cpu = s.cpu_between(500_000_000, 1_500_000_000)
    assert abs(cpu["a"] - 1.0) < 1e-9
    # pid 2: 0.25 s from 0.5 s to its last sample, then nothing; pid 3 is first seen after the window:
    # nothing of it is counted
    assert abs(cpu["b"] - 0.25) < 1e-9


def test_report_renders_an_aiperf_peers_file(tmp_path):
    _write_artifacts(tmp_path)
    r = parse_artifacts(tmp_path)
    r.update(run="ours auto (bfloat16)", concurrency=16, label="x",
             cpu={"frontend": {"cpu_s": 0.1, "cpu_ms_per_1k_tokens": 150.0}, "aiperf (client)": {"cores": 0.5}})
    d = {"machine": {"cpu_model": "cpu", "logical_cores": 2, "memory_gib": 1, "git_commit": "abc", "date_utc": "d",
                     "load_average_at_start": [0.1]},
         "setup": {"client": "aiperf 0.13.0", "prompt_tokens": 128, "output_tokens": 64,
                   "extra_inputs": {"ignore_eos": True}},
         "results": [r], "ratios": [], "capacity": None, "runs": {"ours auto (bfloat16)": {"available": True}},
         "goals": goals.peers_goals([], None)}
    text = "\n".join(report.peers(d))
    assert "(ignore_eos: true)" in text and "| ours auto (bfloat16) | 16 | 128 | 126 | 20.0 / 40.0 | 5.0 / 10.0 | 5.0 / 10.0 |" in text
    assert "frontend 150" in text and "not measured" in text


def test_openai_sweep_maps_uniform_prompt_ranges_and_rates_onto_aiperf():
    from benchmarks.openai_aiperf import isl_and_ratio
    assert isl_and_ratio("64:256") == (160, 0.6)      # aiperf's window [160*0.4, 160*1.6] = [64, 256]
    assert isl_and_ratio("128") == (128, 0.0)
    cmd = command("aiperf", "http://h:1/v1", _settings(concurrency=None, request_rate=2.5, isl=160,
                                                       isl_range_ratio=0.6), "o")
    text = " ".join(cmd)
    assert "--request-rate 2.5 --arrival-pattern poisson" in text and "--concurrency" not in text
    assert json.loads(cmd[cmd.index("--random-range-ratio") + 1]) == {"input": 0.6, "output": 0.0}
