"""Issue 27's goals as the benchmarks evaluate them (benchmarks/goals.py), the roofline figures
(benchmarks/membw.py) and how the report renders both. No server runs here: `make bench-peers`
and `make bench-real-size` are the end-to-end checks."""
from __future__ import annotations

import os

import pytest
import torch

from benchmarks import goals, membw, report
from llama_triton.llama.checkpoint import read_json_file
from llama_triton.llama.config import ModelConfig


def _run(target, c, tok, ttft99=100.0, itl99=10.0, frontend=60.0, errors=0, dtype="bfloat16"):
    proc = "frontend" if target == "ours" else "API server"
    return {"run": f"{target} {dtype}", "target": target, "dtype": dtype, "concurrency": c, "output_tokens_per_s": tok,
            "ttft_ms": {"p50": ttft99 / 2, "p99": ttft99}, "itl_ms": {"p50": itl99 / 2, "p99": itl99},
            "cpu": {proc: {"cpu_ms_per_1k_tokens": frontend}}, "errors": errors}


def _by_id(goal_list):
    return {g["id"]: g for g in goal_list}


def test_peers_goals_compare_our_best_run_with_vllms_fastest_dtype():
    results = [
        _run("ours", 16, 1300, frontend=70), _run("vllm", 16, 900, frontend=100, dtype="float32"),
        _run("vllm", 16, 1000, ttft99=120, itl99=12, frontend=100),           # vLLM's fastest at c=16
        _run("ours", 64, 2600, ttft99=400, itl99=20, frontend=60),
        _run("ours", 64, 9000, errors=3),                                      # failed requests: never counts
        _run("vllm", 64, 2000, ttft99=450, itl99=19, frontend=100),
    ]
    g = _by_id(goals.peers_goals(results, {"serving_path_tokens_per_cpu_s": 10_000.0, "concurrency": 64}))
    assert [p["ratio"] for p in g["tiny_throughput"]["numbers"]["points"]] == [1.3, 1.3]
    assert g["tiny_throughput"]["met"] is True                         # exactly 1.3x at both
    assert g["tiny_ttft_p99"]["met"] is True
    assert g["tiny_itl_p99"]["met"] is False                           # c=64: 20 > 19 ms
    assert [p["met"] for p in g["tiny_itl_p99"]["numbers"]["points"]] == [True, False]
    assert g["tiny_frontend_cpu"]["met"] is True                       # 0.70x and 0.60x
    assert g["serving_path"]["met"] is True
    # the 1.1B goals are bench-real-size's: listed, not evaluated here
    assert g["real_c1_roofline"]["met"] is None and g["real_c1_roofline"]["measured_by"] == goals.REAL_SIZE
    assert set(g) == set(goals.GOALS)


def test_peers_goals_are_unmeasured_without_both_concurrencies():
    results = [_run("ours", 16, 2000), _run("vllm", 16, 1000)]
    g = _by_id(goals.peers_goals(results, None))
    assert g["tiny_throughput"]["met"] is None and "c=64 not measured" in g["tiny_throughput"]["detail"]
    assert g["serving_path"]["met"] is None
    below = _by_id(goals.peers_goals(results, {"serving_path_tokens_per_cpu_s": 9_999.0, "concurrency": 64}))
    assert below["serving_path"]["met"] is False


def _roofline(fraction_of_limit: float) -> dict:
    # 20 GB/s over 2 GB per token: 10 tok/s; TPOT chosen to land at the fraction
    return {"bandwidth_gb_s": 20.0, "threads": 2, "dtype": "bfloat16", "weight_bytes_per_token": 2_000_000_000,
            "roofline_tok_s": 10.0, "c1_tpot_p50_ms": 100 / fraction_of_limit,
            "c1_decode_tok_s": 10 * fraction_of_limit, "fraction": fraction_of_limit, "c1_output_tok_s": 7.0,
            "c1_output_fraction": 0.7}


def test_real_size_goals_roofline_and_c8_against_vllm():
    table = [{"target": "ours", "c8_tok_s": 45.0, "c8_ttft_p50_ms": 2000.0},
             {"target": "vllm", "c8_tok_s": 30.0, "c8_ttft_p50_ms": 2100.0}]
    g = _by_id(goals.real_size_goals(table, _roofline(0.85)))
    assert g["real_c1_roofline"]["met"] is True and "85%" in g["real_c1_roofline"]["detail"]
    assert g["real_c8_throughput"]["met"] is True and g["real_c8_throughput"]["numbers"]["ratio"] == 1.5
    assert _by_id(goals.real_size_goals(table, _roofline(0.84)))["real_c1_roofline"]["met"] is False
    slower_ttft = [table[0] | {"c8_ttft_p50_ms": 2101.0}, table[1]]
    assert _by_id(goals.real_size_goals(slower_ttft, None))["real_c8_throughput"]["met"] is False
    alone = _by_id(goals.real_size_goals(table[:1], None))
    assert alone["real_c8_throughput"]["met"] is None and alone["real_c1_roofline"]["met"] is None
    assert alone["tiny_throughput"]["measured_by"] == goals.PEERS and alone["tiny_throughput"]["met"] is None
    assert list(_by_id(goals.real_size_goals(table, None))) == list(goals.GOALS)


def test_roofline_is_bandwidth_over_the_weight_bytes_of_a_decode_step(tmp_path):
    model_dir = os.environ.get("LLAMA_TRITON_MODEL_DIR", "var/models/llama2-tiny")
    cfg = ModelConfig.from_hf(read_json_file(model_dir, "config.json"))
    per_token = membw.weight_bytes_per_token(model_dir, "bfloat16")
    layer = cfg.hidden_size * ((cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim
                               + cfg.num_attention_heads * cfg.head_dim + 3 * cfg.intermediate_size)
    assert per_token == 2 * (cfg.num_hidden_layers * layer + cfg.hidden_size * cfg.vocab_size)
    assert membw.weight_bytes_per_token(model_dir, "float32") == 2 * per_token
    c1 = {"tpot_ms": {"p50": 4.0}, "output_tokens_per_s": 200.0}
    r = membw.roofline({"gb_s": 10.0, "threads": 2}, model_dir, "bfloat16", c1)
    assert r["roofline_tok_s"] == pytest.approx(10e9 / per_token, rel=1e-3)
    assert r["c1_decode_tok_s"] == 250.0
    assert r["fraction"] == pytest.approx(250.0 / r["roofline_tok_s"], rel=1e-3)
    assert r["c1_output_fraction"] == pytest.approx(200.0 / r["roofline_tok_s"], rel=1e-3)
    assert membw.roofline({"gb_s": 10.0, "threads": 2}, model_dir, "bfloat16", None)["fraction"] is None


def test_bandwidth_probe_reads_the_buffer_with_the_given_threads():
    before = torch.get_num_threads()
    bw = membw.read_bandwidth(threads=1, buffer_mib=16, passes=2)
    assert bw["threads"] == 1 and bw["buffer_mib"] == 16 and set(bw["gb_s_by_kernel"]) == set(membw.KERNELS)
    # the bandwidth is the fastest kernel's best pass
    assert bw["gb_s"] == max(bw["gb_s_by_kernel"].values()) == bw["gb_s_by_kernel"][bw["kernel"]] > 0
    assert 0 < bw["gb_s_median"] <= bw["gb_s"]
    assert torch.get_num_threads() == before
    assert membw.read_bandwidth(threads=1, passes=1)["buffer_mib"] >= membw.MIN_BUFFER_MIB


def _machine():
    return {"cpu_model": "cpu", "logical_cores": 2, "memory_gib": 1, "git_commit": "abcdef0", "date_utc": "2027-01-02",
            "load_average_at_start": [0.1]}


def test_report_renders_the_real_size_run_and_the_goal_table():
    table = [{"target": "ours", "c1_tok_s": 8.0, "c1_ttft_p50_ms": 150.0, "c1_itl_p50_ms": 105.0,
              "c1_tpot_p50_ms": 106.0, "c8_tok_s": 45.0, "c8_ttft_p50_ms": 2000.0},
             {"target": "vllm", "c1_tok_s": 5.0, "c1_ttft_p50_ms": 400.0, "c1_itl_p50_ms": 180.0,
              "c1_tpot_p50_ms": 181.0, "c8_tok_s": 30.0, "c8_ttft_p50_ms": 2100.0}]
    bw = {"gb_s": 20.0, "gb_s_median": 19.0, "threads": 2, "buffer_mib": 1024, "load_average": [0.3], "when": "before ours",
          "kernel": "mv float32", "gb_s_by_kernel": {"sum float32": 15.0, "mv float32": 20.0}}
    d = {"machine": _machine(), "setup": {"prompt_len": "128", "output_len": "32", "threads": 2, "ours_dtype": "bfloat16",
                                          "runs_per_point": 2},
         "table": table, "bandwidth": [bw], "roofline": _roofline(0.9), "targets": {"ours": {"available": True}},
         "goals": goals.real_size_goals(table, _roofline(0.9))}
    text = "\n".join(report.real_size(d))
    assert "| ours / vLLM | 1.60x |" in text and "better of 2 runs per point" in text
    assert "before ours 20.0 GB/s (mv float32, median 19.0; sum float32 15.0, mv float32 20.0)" in text
    assert "c=1: decode at >= 85%" in text and "**met** (90%" in text
    assert "tiny model" not in text          # bench-peers' goals are rendered with its run
    peers_run = {"machine": _machine(), "goals": goals.peers_goals([], None)}
    rows = "\n".join(report.goal_table({"peers": peers_run, "real-size": d}))
    assert rows.count("make bench-real-size, commit abcdef0") == 2
    assert rows.count("| not measured |") == 5        # the peers run above measured nothing
