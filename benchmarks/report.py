"""The Results section of benchmarks/README.md, rendered from the committed JSON files.

`python -m benchmarks.report` rewrites what lies between the `results:begin` / `results:end`
markers of benchmarks/README.md, so the tables there are always the JSON's numbers;
`--print` writes the section to stdout instead. A benchmark without a JSON file is left out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import goals
from benchmarks.common import ROOT

RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(name: str) -> Optional[dict[str, Any]]:
    path = RESULTS / name / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def num(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def pair(d: dict, a: str = "p50", b: str = "p99", digits: int = 1) -> str:
    return f"{num(d.get(a), digits)} / {num(d.get(b), digits)}"


def table(header: list[str], rows: list[list[str]], right: int = 1) -> list[str]:
    align = ["---"] * right + ["---:"] * (len(header) - right)
    return ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"] + ["| " + " | ".join(r) + " |" for r in rows]


def machine_line(d: dict) -> str:
    m = d["machine"]
    load_avg = m.get("load_average_at_start") or []
    dirty = " (uncommitted changes)" if m.get("git_dirty") else ""
    return (f"_{m.get('cpu_model')}, {m.get('logical_cores')} cores, {m.get('memory_gib')} GiB, "
            f"commit {str(m.get('git_commit'))[:7]}{dirty}, {m.get('date_utc')}, load average at start "
            f"{', '.join(f'{x:.2f}' for x in load_avg)}_")


def engine(d: dict) -> list[str]:
    rows = [[str(r["concurrency"]), num(r["engine_tok_s"]), num(r["plain_tok_s"]),
             num(r.get("ratio_engine_over_plain_paired"), 2), num(r.get("ratio_engine_over_plain_paired_cpu"), 2)]
            for r in d["results"]]
    return ["### Engine alone (`results/engine/`)", "", machine_line(d), "",
            *table(["concurrency", "engine tok/s", "plain loop tok/s", "engine / plain (paired, wall)",
                    "(paired, CPU)"], rows)]


def triton_perf(d: dict) -> list[str]:
    rows = []
    for r in d["results"]:
        p = r.get("from_profile_export") or {}
        rows.append([str(r["prompt_tokens"]), str(r["concurrency"]), num(p.get("output_tokens_per_s")),
                     num(p.get("requests_per_s"), 2), pair(p.get("ttft_ms", {})), pair(p.get("itl_ms", {})),
                     num(p.get("e2e_ms", {}).get("p99"))])
    max_tokens = d["results"][0]["max_tokens"] if d["results"] else "?"
    return [f"### Direct Triton: perf_analyzer, ensemble over gRPC, streaming, {max_tokens} output tokens "
            "(`results/triton_perf/`)", "", machine_line(d), "",
            *table(["prompt tokens", "concurrency", "output tok/s", "req/s", "TTFT p50 / p99 (ms)",
                    "ITL p50 / p99 (ms)", "e2e p99 (ms)"], rows, right=0)]


def load_rows(results: list[dict], first: Callable[[dict], list[str]]) -> list[list[str]]:
    rows = []
    for r in results:
        errors = sum((r.get("errors") or {}).values())
        rows.append([*first(r), num(r.get("output_tokens_per_s")), num(r.get("requests_per_s"), 2),
                     pair(r["ttft_ms"]), pair(r["itl_ms"]), pair(r["e2e_ms"], digits=0), str(errors)])
    return rows


LOAD_HEADER = ["output tok/s", "req/s", "TTFT p50 / p99 (ms)", "ITL p50 / p99 (ms)", "e2e p50 / p99 (ms)",
               "errors"]


def openai_load(d: dict) -> list[str]:
    cfg = d["results"][0]["config"] if d["results"] else {}
    rows = load_rows(d["results"], lambda r: [r.get("label", "")])
    client = f", client {d['client']}" if d.get("client") else ""
    return [f"### OpenAI endpoint, our stack: prompts {cfg.get('prompt_len')} tokens, {cfg.get('output_len')} "
            f"output tokens{client} (`results/openai_load/`)", "", machine_line(d), "",
            *table(["load", *LOAD_HEADER], rows)]


def layer_cost(d: dict) -> list[str]:
    best = {(r["layer"], r["concurrency"]): r for r in d["results"]}
    rows = []
    for ratio in d["ratios"]:
        c = ratio["concurrency"]
        tok = [num(best.get((layer, c), {}).get("output_tokens_per_s")) for layer in ("a_engine", "b_triton_grpc", "c_http_frontend")]
        rows.append([str(c), *tok, num(ratio["throughput_b_over_a"], 2), num(ratio["throughput_c_over_b"], 2),
                     num(ratio["itl_p50_b_over_a"], 2), num(ratio["itl_p50_c_over_b"], 2),
                     num(ratio["cpu_per_token_b_over_a"], 2), num(ratio["cpu_per_token_c_over_b"], 2)])
    s = d["setup"]
    return [f"### Layer cost: {s['prompt_len']}-token prompts, {s['output_len']} output tokens, best of "
            f"{s['repeats']} rounds (`results/layer_cost/`)", "", machine_line(d), "",
            *table(["concurrency", "(a) engine tok/s", "(b) Triton gRPC tok/s", "(c) HTTP tok/s", "tok/s b/a",
                    "tok/s c/b", "ITL p50 b/a", "ITL p50 c/b", "CPU/token b/a", "CPU/token c/b"], rows, right=0)]


def serving_capacity(d: dict) -> list[str]:
    rows = []
    for r in d["results"]:
        whole, nodec = r["serving_path"], r["serving_path_without_python_decoder"]
        rows.append(["(i) HTTP frontend" if r["path"] == "http" else "(ii) Triton gRPC direct",
                     num(r["streamed_tokens_per_s"]), num(whole["tokens_per_cpu_s"]),
                     num(whole["cores_for_35k_tok_s"], 1), num(nodec["tokens_per_cpu_s"]),
                     num(nodec["cores_for_35k_tok_s"], 1),
                     ", ".join(f"{k} {v['cpu_s']:.1f}" for k, v in r["cpu"].items() if v["cpu_s"] >= 0.05)])
    s = d["setup"]
    out = [f"### Serving capacity: zero-cost decoder, concurrency {s['concurrency']}, {s['output_len']} tokens per "
           f"request, one SSE event / gRPC response per token (`results/serving_capacity/`)", "", machine_line(d), "",
           *table(["path", "streamed tok/s", "tok/s per core (whole path)", "cores for 35k tok/s",
                   "tok/s per core without the Python decoder stub", "cores for 35k tok/s",
                   "CPU seconds by process"], rows)]
    cats = (d.get("profile") or {}).get("categories", {}).get("frontend")
    if cats:
        top = ", ".join(f"{k} {v:.0f}%" for k, v in list(cats.items())[:7])
        out += ["", f"Where the frontend's time goes (py-spy self time by category, "
                    f"`profile_frontend_summary.txt`): {top}."]
    return out


def peers(d: dict) -> list[str]:
    if "goals" not in d:      # a result file from before aiperf (openai_load rows)
        return peers_openai_load(d)
    s = d["setup"]
    extra = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in s["extra_inputs"].items())
    rows = []
    for r in d["results"]:
        cpu = ", ".join(f"{k} {num(v.get('cpu_ms_per_1k_tokens'))}" for k, v in r["cpu"].items()
                        if k != "aiperf (client)" and v.get("cpu_ms_per_1k_tokens") is not None)
        rows.append([r["run"], str(r["concurrency"]), num(r["output_tokens_per_s"]), num(r["content_events_per_s"]),
                     pair(r["ttft_ms"]), pair(r["itl_ms"]), pair(r["icl_ms"]), cpu,
                     num((r["cpu"].get("aiperf (client)") or {}).get("cores"), 2), str(r["errors"])])
    out = [f"### Peers, measured with {s['client']}: {s['prompt_tokens']}-token prompts, {s['output_tokens']} output "
           f"tokens ({extra}), streamed chat (`results/peers/`)", "", machine_line(d), "",
           *table(["run", "concurrency", "output tok/s", "content events/s", "TTFT p50 / p99 (ms)",
                   "ITL p50 / p99 (ms)", "gap between content events p50 / p99 (ms)",
                   "CPU-ms per 1,000 output tokens, by process", "aiperf cores",
                   "errors"], rows), ""]
    ratio_rows = [[f"{r['pair']}: {r['ours']} / {r['vllm']}", str(r["concurrency"]), num(r["tok_s_ratio"], 2),
                   num(r["ttft_p99_ratio"], 2), num(r["itl_p50_ratio"], 2), num(r["frontend_cpu_ratio"], 2)]
                  for r in d["ratios"]]
    if ratio_rows:
        out += [*table(["pair, ours / vLLM", "concurrency", "output tok/s", "TTFT p99", "ITL p50",
                        "frontend CPU / API server CPU per token"], ratio_rows), ""]
    out += goal_lines(peers_goals(d), goals.PEERS)
    for name, t in d["runs"].items():
        out.append(f"* {name}: " + (f"{t.get('notes', '')}, ready in {t.get('startup_s')} s" if t.get("available")
                                    else f"not available here: {t.get('reason', '')[:300]}"))
    return out


def peers_goals(d: dict) -> list[dict]:
    """The goal list a peers run wrote; a run from before issue 27's goals (a dict of issue 18's)
    is evaluated from its own numbers by the same module."""
    g = d.get("goals")
    return g if isinstance(g, list) else goals.peers_goals(d["results"], d.get("capacity"))


def real_size_goals(d: dict) -> list[dict]:
    g = d.get("goals")
    return g if isinstance(g, list) else goals.real_size_goals(d.get("table") or [], d.get("roofline"))


def goal_lines(goal_list: list[dict], bench: str) -> list[str]:
    """One line per goal that `bench` measures (the combined table at the end has them all)."""
    return [f"* Goal, {g['goal']}: **{goals.status(g['met'])}** ({g['detail']})."
            for g in goal_list if g["measured_by"] == bench]


def real_size(d: dict) -> list[str]:
    s = d["setup"]
    cols = [("c1_tok_s", 2), ("c1_ttft_p50_ms", 0), ("c1_itl_p50_ms", 0), ("c1_tpot_p50_ms", 0), ("c8_tok_s", 1),
            ("c8_ttft_p50_ms", 0)]
    rows = [[r["target"], *[num(r.get(k), digits) for k, digits in cols]] for r in d["table"]]
    by = {r["target"]: r for r in d["table"]}
    if "ours" in by and "vllm" in by:
        ratio = lambda k: (num(by["ours"][k] / by["vllm"][k], 2) + "x"
                           if by["ours"].get(k) and by["vllm"].get(k) else "-")
        rows.append(["ours / vLLM", *[ratio(k) for k, _ in cols]])
    runs = s.get("runs_per_point", 1)
    out = [f"### Real size: 1.1B random-weight Llama (TinyLlama shape), {s['prompt_len']}-token prompts, "
           f"{s['output_len']} output tokens, {s['threads']} thread(s) each, ours in {s.get('ours_dtype', 'bfloat16')}"
           f"{f', better of {runs} runs per point' if runs > 1 else ''} (`results/real-size/`)", "", machine_line(d), "",
           *table(["target", "c=1 tok/s", "c=1 TTFT p50 (ms)", "c=1 ITL p50 (ms)", "c=1 TPOT p50 (ms)",
                   "c=8 tok/s", "c=8 TTFT p50 (ms)"], rows), ""]
    bw = d.get("bandwidth") or []
    if bw:
        out.append(f"Memory read bandwidth in this run (`benchmarks/membw.py`, the fastest streaming read of a "
                   f"{bw[0]['buffer_mib']:,} MiB buffer): "
                   + "; ".join(f"{b['when']} {num(b['gb_s'], 1)} GB/s ({b.get('kernel', 'sum float32')}, median "
                               f"{num(b['gb_s_median'], 1)}; "
                               + ", ".join(f"{k} {num(v, 1)}" for k, v in (b.get("gb_s_by_kernel") or {}).items())
                               + f"), {b['threads']} thread(s), load average {b['load_average'][0]:.1f}"
                               for b in bw) + ".")
    else:
        out.append("Memory read bandwidth: not measured in this run (before the roofline was part of the benchmark).")
    out += goal_lines(real_size_goals(d), goals.REAL_SIZE)
    for name, t in d["targets"].items():
        out.append(f"* {name}: " + (f"{t.get('notes', '')}, ready in {t.get('startup_s')} s" if t.get("available")
                                    else f"not available here: {t.get('reason', '')[:300]}"))
    return out


def goal_table(runs: Optional[dict[str, Optional[dict]]] = None) -> list[str]:
    """Issue 27's goals in one table, each from the run that measures it (`runs`: the peers and
    real-size JSON by name; default: the committed files)."""
    runs = runs if runs is not None else {"peers": load("peers"), "real-size": load("real-size")}
    sources = {goals.PEERS: ("peers", peers_goals), goals.REAL_SIZE: ("real-size", real_size_goals)}
    found: dict[str, tuple[dict, dict]] = {}
    for by, (name, fn) in sources.items():
        d = runs.get(name)
        if d is not None and (name != "peers" or "goals" in d):
            found.update({g["id"]: (g, d) for g in fn(d) if g["measured_by"] == by})
    rows = []
    for goal_id, (text, by) in goals.GOALS.items():
        g, d = found.get(goal_id, (None, None))
        if g is None:
            rows.append([text, "not measured", "-", f"make {by}"])
            continue
        m = d["machine"]
        rows.append([text, goals.status(g["met"]), g["detail"],
                     f"make {by}, commit {str(m.get('git_commit'))[:7]}, {str(m.get('date_utc'))[:10]}"])
    return ["### Issue 27's goals (`benchmarks/goals.py`, from the JSON of the runs above)", "",
            *table(["goal", "status", "numbers", "run"], rows, right=4)]


def peers_openai_load(d: dict) -> list[str]:
    s = d["setup"]
    rows = load_rows(d["results"], lambda r: [r["target"], str(r["config"]["concurrency"])])
    out = [f"### Peers: {s['prompt_len']}-token prompts, {s['output_len']} output tokens, {s['threads']} model "
           "thread(s) each (`results/peers/`)", "", machine_line(d), "",
           *table(["target", "concurrency", *LOAD_HEADER], rows), ""]
    for name, t in d["targets"].items():
        out.append(f"* {name}: " + (t.get("notes", "") if t.get("available") else
                                    f"not available here: {t.get('reason', '')[:300]}"))
    return out


def router_cost(d: dict) -> list[str]:
    rows = [[f"{r['path']} #{r['round']}", num(r["streamed_tokens_per_s"]), pair(r["ttft_ms"], digits=0),
             pair(r["itl_ms"], digits=1), num(r["serving_cpu_ms_per_1k_tokens"], 1),
             num(r["cpu_ms_per_1k_tokens"].get("router (smg)"), 1), num(r["replica_cpu_ms_per_1k_tokens"], 1),
             str(r["errors"] or 0)] for r in d["results"]]
    s, sm = d["setup"], d.get("summary") or {}
    out = [f"### Router cost: the router vs direct to one replica, zero-cost decoder, concurrency {s['concurrency']}, "
           f"{s['output_len']} tokens per request (`results/router_cost/`)", "", machine_line(d), "",
           "Paths: `direct` to the replica's frontend, `router` the cluster's public port (front door + SMG), "
           "`smg` SMG's own port behind the front door. The router process runs both SMG and the front door.", "",
           *table(["path, round", "streamed tok/s", "TTFT ms p50 / p99", "ITL ms p50 / p99",
                   "serving CPU-ms per 1k tokens", "of which the router process", "replica (frontend + Triton)",
                   "errors"], rows)]
    if sm:
        out += ["", f"Through the router / direct: throughput x{num(sm['throughput_ratio_router_over_direct'], 2)} "
                    f"best round against best round, x{num(sm['throughput_ratio_median'], 2)} median of the rounds "
                    f"({', '.join(num(x, 2) for x in sm['throughput_ratio_per_round'])}); serving CPU per token "
                    f"x{num(sm['serving_cpu_ratio_router_over_direct'], 2)} best/best, "
                    f"x{num(sm['serving_cpu_ratio_median'], 2)} median; the router process itself "
                    f"{num(sm['router_cpu_ms_per_1k_tokens'], 1)} CPU-ms per 1,000 streamed tokens. Load average "
                    f"before the run {', '.join(f'{x:.2f}' for x in s['load_average_before_start'])}."]
        if "front_door_cpu_ms_per_1k_tokens_median" in sm:
            out += ["", f"The front door's own share (router against smg, same round): "
                        f"{num(sm['front_door_cpu_ms_per_1k_tokens_median'], 1)} CPU-ms per 1,000 streamed tokens, "
                        f"median of ({', '.join(num(x, 1) for x in sm['front_door_cpu_ms_per_1k_tokens_per_round'])}); "
                        f"throughput with it / SMG alone x{num(sm['throughput_ratio_router_over_smg_alone_median'], 2)}."]
    return out


def block_hash(d: dict) -> list[str]:
    rows = [[str(r["block_size"]), num(r["tuple_hash_ns_per_token"], 1), num(r["sha256_ns_per_token"], 1),
             f"x{num(r['sha256_over_tuple_hash'], 1)}", num(r["block_manager_miss_ns_per_token"]),
             num(r["block_manager_hit_ns_per_token"])] for r in d["results"]]
    c = d["config"]
    return [f"### Prefix-cache block keys: SHA-256 against hash(), a {c['prompt_len']}-token prompt, best of "
            f"{c['repeats']} (`results/block_hash/`)", "", machine_line(d), "",
            *table(["block size", "hash() ns/token", "SHA-256 ns/token", "ratio",
                    "admission, miss ns/token", "admission, hit ns/token"], rows)]


def ttft_segments(d: dict) -> list[str]:
    def trio(st: dict) -> str:
        return f"{num(st.get('mean'), 1)} / {num(st.get('p50'), 1)} / {num(st.get('p99'), 1)}"
    w = d["workload"]
    out = [f"### TTFT by segment: {w['prompt_len']}-token prompts, {w['output_len']} output tokens, client "
           f"{d['client']}, {d.get('rounds', 1)} profiles per point pooled (`results/ttft_segments/`)", "",
           machine_line(d)] + (["", d["note"]] if d.get("note") else [])
    for run in d["runs"]:
        points = run["points"]
        header = ["segment"] + [f"c={p['concurrency']} mean / p50 / p99 (ms)" for p in points]
        rows = [[seg["segment"]] + [trio(p["segments"][i]) for p in points]
                for i, seg in enumerate(d["segment_definitions"])]
        edges = ("client start -> first byte", "first write -> client has the token")
        rows.append(["**sum: first byte -> first write**"] + [trio(p["server_ttft_ms"]) for p in points])
        rows.append(["**aiperf TTFT** (its per-request records)"] + [trio(p["aiperf_ttft_ms"]) for p in points])
        rows.append(["coverage (sum of means / aiperf mean)"] + [num(p.get("coverage"), 2) for p in points])
        for edge in edges:
            rows.append([f"outside the server: {edge}"] + [trio((p.get("client_edges") or {}).get(edge) or {})
                                                           for p in points])
        rows.append(["output tok/s; ITL p99 (ms), per attempt"] + ["; ".join(
            f"{num(a['aiperf']['output_tokens_per_s'])}, {num(a['aiperf']['itl_ms'].get('p99'), 1)}"
            for a in p["attempts"]) for p in points])
        rows.append(["stamped / aiperf requests"] + [f"{p['requests']} / {p['aiperf_requests']}" for p in points])
        out += ["", f"{run['config']} (`{run['target']}`):", "", *table(header, rows)]
    for lever in d.get("levers", []):
        if "median" in lever:       # sequence_length
            m = lever["median"]
            out += ["", f"Lever: {lever['lever']} ({lever['decoder']} decoder, {lever['path']}, c={lever['concurrency']}, "
                        f"{lever['output_len']} tokens per request, median of {lever['rounds']} A/B rounds), "
                        "CPU-ms per 1,000 streamed tokens:", "",
                    *table(["process", "output_ids", "+ sequence_length", "ratio", "extra µs per token"],
                           [[k, num(v["without"], 1), num(v["with"], 1), num(v["ratio_with_over_without"], 3),
                             num(v["extra_us_per_token"], 1)] for k, v in m.items()])]
        else:
            out += ["", f"Lever: {lever['lever']}, after / before, same run:", "",
                    *table(["concurrency", "TTFT mean", "TTFT p50", "TTFT p99", "server TTFT mean", "ITL p99",
                            "output tok/s"],
                           [[str(p["concurrency"]), num(p["ttft_mean_after_over_before"], 2),
                             num(p["ttft_p50_after_over_before"], 2), num(p["ttft_p99_after_over_before"], 2),
                             num(p["server_ttft_mean_after_over_before"], 2), num(p["itl_p99_after_over_before"], 2),
                             num(p["tok_s_after_over_before"], 2)] for p in lever["points"]])]
    return out


SECTIONS = (("engine", engine), ("triton_perf", triton_perf), ("openai_load", openai_load),
            ("layer_cost", layer_cost), ("serving_capacity", serving_capacity), ("peers", peers),
            ("real-size", real_size), ("router_cost", router_cost), ("block_hash", block_hash),
            ("ttft_segments", ttft_segments))


def render() -> str:
    parts = []
    for name, fn in SECTIONS:
        d = load(name)
        if d is not None:
            parts.append("\n".join(fn(d)))
    parts.append("\n".join(goal_table()))
    return "\n\n".join(parts) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--print", action="store_true", help="write the section to stdout, leave the README alone")
    args = ap.parse_args(argv)
    section = render()
    if args.print:
        sys.stdout.write(section)
        return 0
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{README} has no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{BEGIN}\n{section}{END}{tail}")
    print(f"rewrote the results section of {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
