"""Prometheus metrics of the frontend, in a registry owned by the application (no globals)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class FrontendMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llama_triton_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("llama_triton_http_request_seconds", "Time to the last byte",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llama_triton_time_to_first_token_seconds", "Time to the first content chunk",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("llama_triton_inter_token_latency_seconds", "Time between streamed chunks",
                             buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llama_triton_prompt_tokens", "Prompt tokens", registry=r)
        self.completion_tokens = Counter("llama_triton_completion_tokens", "Generated tokens", registry=r)
        self.active_streams = Gauge("llama_triton_active_streams", "Open SSE streams", registry=r)
        self.in_flight = Gauge("llama_triton_requests_in_flight", "Requests being served", registry=r)
        self.cancellations = Counter("llama_triton_cancellations", "Requests cancelled (client gone, timeout)",
                                     ["reason"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
