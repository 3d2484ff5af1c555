"""deploy/grafana/llama-triton.json queries only metrics that a live stack exports.

Every panel's PromQL is taken apart into its series selectors (metric name and `=` label matchers);
each must name a metric family declared in a live scrape of the frontend's /metrics or Triton's
(the CPU decoder's `llama_triton_engine`), and, where that family has samples, one sample must
carry the matched label values. A renamed metric or a misspelt label fails here.
"""
from __future__ import annotations

import json
import re
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.stack import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "llama-triton.json"
# PromQL words that look like metric names: functions are dropped by the "(" that follows them.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")
SUBJECTS = ("requests/s by status", "time to first token", "inter-token latency", "tokens/s", "queue depth",
            "active streams", "cancellations")


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """`sum by (le) (rate(x_bucket{a="b"}[5m]))` -> [("x_bucket", {"a": "b"})]."""
    e = re.sub(r"\[[^\]]*\]", "", expr)                       # range selectors, $__rate_interval
    e = re.sub(r"\b(by|without)\s*\([^)]*\)", "", e)          # grouping labels
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", e):
        name, braces = m.group(1), m.group(2) or ""
        if name in KEYWORDS or e[m.end():].lstrip().startswith("("):
            continue
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] in ".\"'"):
            continue                                          # inside a number or a string
        matchers = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', braces))   # `=` only (not =~, !=)
        out.append((name, matchers))
    return out


def scrape(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return list(text_string_to_metric_families(r.read().decode()))


def test_selectors_parse():
    assert selectors('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="1", y=~"z.*"}[$__rate_interval])))') \
        == [("a_bucket", {"x": "1"})]
    assert selectors("sum(b) / sum(rate(c_total[5m]))") == [("b", {}), ("c_total", {})]


def test_every_panel_queries_live_metrics(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    families = scrape(f"{stack.base_url}/metrics") + scrape(f"http://127.0.0.1:{stack.metrics_port}/metrics")
    declared = {f.name + suffix: f for f in families for suffix in SUFFIXES}
    titles = [p["title"].lower() for p in dashboard["panels"]]
    for subject in SUBJECTS:
        assert any(subject in t for t in titles), f"no panel for {subject}: {titles}"
    checked = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found = selectors(target["expr"])
            assert found, target["expr"]
            for name, matchers in found:
                family = declared.get(name)
                assert family is not None, f"panel {panel['title']!r} queries {name}, which no live /metrics has"
                samples = [s for s in family.samples if s.name == name]
                if samples and matchers:
                    assert any(all(s.labels.get(k) == v for k, v in matchers.items()) for s in samples), \
                        f"panel {panel['title']!r}: no {name} sample with labels {matchers}"
                checked.add(name)
    assert len(checked) >= 10, checked
