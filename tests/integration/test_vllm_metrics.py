"""The vllm:-named metrics on a live /metrics (the session's CPU stack), against a known batch:
token counters rise by the usage totals, histogram counts by the request counts, finish reasons
are counted, running and waiting come back to 0, KV-cache usage is a fraction read from the
decoder. Names, types and labels are vLLM 0.32's (frontend/telemetry/vllm_metrics.py)."""
from __future__ import annotations

import concurrent.futures
import json
import re
import urllib.request

from tests.integration.stack import wait_for

def value(text: str, name: str, model: str, extra: str = "") -> float:
    """The sample of `name` whose labels are exactly model_name, engine="0" (and `extra`)."""
    want = {f'model_name="{model}"', 'engine="0"'} | ({extra} if extra else set())
    for m in re.finditer(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", text, re.M):
        if set(m.group(1).split(",")) == want:
            return float(m.group(2))
    raise AssertionError(f"{name}{{{','.join(sorted(want))}}} not on /metrics")


def scrape(stack) -> str:
    with urllib.request.urlopen(f"{stack.base_url}/metrics", timeout=30) as r:
        return r.read().decode()


def test_types_and_labels(stack):
    text = scrape(stack)
    for name, kind in (("vllm:num_requests_running", "gauge"), ("vllm:num_requests_waiting", "gauge"),
                       ("vllm:kv_cache_usage_perc", "gauge"), ("vllm:prompt_tokens", "counter"),
                       ("vllm:generation_tokens", "counter"), ("vllm:request_success", "counter"),
                       ("vllm:prefix_cache_queries", "counter"), ("vllm:prefix_cache_hits", "counter"),
                       ("vllm:time_to_first_token_seconds", "histogram"),
                       ("vllm:inter_token_latency_seconds", "histogram"),
                       ("vllm:e2e_request_latency_seconds", "histogram")):
        # prometheus_client (vLLM's exposition too) names a counter's family with its _total
        family = f"{name}_total" if kind == "counter" else name
        assert f"# TYPE {family} {kind}" in text, name
    usage = value(text, "vllm:kv_cache_usage_perc", stack.model_name)
    assert 0.0 <= usage <= 1.0
    if hasattr(stack, "metrics_port"):         # read from the decoder's own counts on Triton's /metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=30) as r:
            free = float(re.search(r'^llama_triton_engine\{[^}]*stat="num_free_blocks"[^}]*\} (\S+)$',
                                   r.read().decode(), re.M).group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.http_port}/v2/models/tensorrt_llm/config",
                                    timeout=30) as r:
            params = json.loads(r.read())["parameters"]
        total = int(params["max_num_tokens"]["string_value"]) // int(params["tokens_per_block"]["string_value"])
        assert usage == 1.0 - free / total


def test_counters_and_histograms_follow_a_known_batch(stack, openai_client):
    model = stack.model_name
    before = scrape(stack)
    prompt = "Tell me about the sea. " * 3

    def plain(i):
        r = openai_client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=4 + i, seed=i)
        return r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens, \
            r.choices[0].finish_reason

    def streamed(i):
        chunks = list(openai_client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=5, seed=10 + i, stream=True,
            stream_options={"include_usage": True}))
        usage = chunks[-1].usage
        reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][0]
        return usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens_details.cached_tokens, reason

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(plain, range(3))) + list(pool.map(streamed, range(3)))
    after = wait_for(lambda: (lambda t: t if value(t, "vllm:num_requests_running", model) == 0
                              and value(t, "vllm:num_requests_waiting", model) == 0 else None)(scrape(stack)),
                     timeout=30, what="running and waiting back to 0")

    def delta(name, extra=""):
        return value(after, name, model, extra) - value(before, name, model, extra)

    assert delta("vllm:prompt_tokens_total") == sum(r[0] for r in results)
    assert delta("vllm:generation_tokens_total") == sum(r[1] for r in results)
    assert delta("vllm:prefix_cache_queries_total") == sum(r[0] for r in results)
    assert delta("vllm:prefix_cache_hits_total") == sum(r[2] for r in results)
    assert delta("vllm:e2e_request_latency_seconds_count") == 6
    assert delta("vllm:time_to_first_token_seconds_count") == 3          # the streamed ones, as ours
    for reason in ("stop", "length"):
        assert delta("vllm:request_success_total", f'finished_reason="{reason}"') == \
            sum(1 for r in results if r[3] == reason)
    # ours and vllm's come from the same calls. Compared over this batch, not as totals: ours also
    # counts requests that never reached the decoder (max_tokens=0, a refusal after templating),
    # which vLLM's "prefill tokens processed" does not, and earlier tests on this stack sent some.
    ours = float(re.search(r"^llama_triton_prompt_tokens_total (\S+)$", after, re.M).group(1)) - \
        float(re.search(r"^llama_triton_prompt_tokens_total (\S+)$", before, re.M).group(1))
    assert ours == delta("vllm:prompt_tokens_total")
