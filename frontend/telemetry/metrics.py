"""Prometheus metrics of the frontend, in a registry owned by the application (no globals).

With several frontend workers (the launcher's --frontend-workers) $PROMETHEUS_MULTIPROC_DIR is
set: every worker's samples go to files there, and /metrics renders the sum over all workers
(gauges as the sum over live workers), whichever worker answers.
"""
from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from frontend.telemetry.vllm_metrics import Tee, VllmMetrics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
MAX_USER_LABELS = 1000      # distinct hashed users with their own series; the rest count as "other"


class FrontendMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str = "") -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("llama_triton_http_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.request_seconds = Histogram("llama_triton_http_request_seconds", "Time to the last byte",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("llama_triton_time_to_first_token_seconds", "Time to the first content chunk",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("llama_triton_inter_token_latency_seconds", "Time between streamed chunks",
                             buckets=ITL_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llama_triton_prompt_tokens", "Prompt tokens, as responses' usage counts them",
                                     registry=r)
        self.completion_tokens = Counter("llama_triton_completion_tokens",
                                         "Completion tokens, as responses' usage counts them", registry=r)
        self.active_streams = Gauge("llama_triton_active_streams", "Open SSE streams", registry=r,
                                    multiprocess_mode="livesum")
        self.in_flight = Gauge("llama_triton_requests_in_flight", "Requests being served", registry=r,
                               multiprocess_mode="livesum")
        self.cancellations = Counter("llama_triton_cancellations",
                                     "Requests cancelled (client_disconnect, timeout, slow_client, shutdown)",
                                     ["reason"], registry=r)
        self.decoder_queued = Gauge("llama_triton_decoder_queued",
                                    "Decoder requests sent to Triton that have no response yet (queue depth "
                                    "seen from the frontend)", registry=r, multiprocess_mode="livesum")
        self.decoder_streams = Gauge("llama_triton_decoder_streams", "Open gRPC streams to the decoder",
                                     registry=r, multiprocess_mode="livesum")
        self.fair_share_waiting = Gauge("llama_triton_fair_share_waiting",
                                        "Requests of keys below their fair share waiting for a decoder place "
                                        "(frontend/tenancy/fair_share.py)", registry=r, multiprocess_mode="livesum")
        self.fair_share_refused = Counter("llama_triton_fair_share_refused",
                                          "429s of the fair-share gate by API key id", ["key_id"], registry=r)
        self.decoder_errors = Counter("llama_triton_decoder_errors", "Decoder failures by kind (busy, "
                                      "unavailable, error)", ["kind"], registry=r)
        self.user_requests = Counter("llama_triton_user_requests",
                                     "Requests by user (keyed hash of the request's `user`, never the user; 'other' "
                                     f"past {MAX_USER_LABELS} distinct users)", ["user"], registry=r)
        # Per API key: labelled by the key's id (frontend/tenancy/tenants.py), never the key. The ids are the
        # configured keys', so the label set is bounded by the keys file.
        self.key_requests = Counter("llama_triton_key_requests", "Authenticated requests by API key id",
                                    ["key_id"], registry=r)
        self.key_tokens = Counter("llama_triton_key_tokens", "Prompt and completion tokens by API key id",
                                  ["key_id", "kind"], registry=r)
        # vLLM-named metrics fed from the same calls (frontend/telemetry/vllm_metrics.py)
        self.vllm = VllmMetrics(r, model_name)
        self.decoder_queued = Tee(self.decoder_queued, (self.vllm.waiting, 1), (self.vllm.running, -1))
        self.decoder_streams = Tee(self.decoder_streams, (self.vllm.running, 1))
        self.ttft = Tee(self.ttft, (self.vllm.ttft, 1))
        self.itl = Tee(self.itl, (self.vllm.itl, 1))
        self._users: set[str] = set()
        self._lock = threading.Lock()
        self._exposition = r
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self._exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._exposition)

    def count_user(self, user_hash: str | None) -> None:
        if user_hash is None:
            return
        with self._lock:
            if user_hash not in self._users and len(self._users) >= MAX_USER_LABELS:
                user_hash = "other"
            else:
                self._users.add(user_hash)
        self.user_requests.labels(user_hash).inc()

    def count_key(self, key_id: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.key_requests.labels(key_id).inc()
        if prompt_tokens:
            self.key_tokens.labels(key_id, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.key_tokens.labels(key_id, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self._exposition)

    def render_load(self) -> bytes:
        """Only the load gauges a router reads to place requests (SMG 1.13 polls a worker's
        /metrics for these): no per-key, per-user or per-route series."""
        return b"".join(line for line in self.render().splitlines(keepends=True)
                        if _metric_name(line) in LOAD_GAUGES)


# What SMG reads from a worker's /metrics (docs/SCALE-OUT.md).
LOAD_GAUGES = frozenset({b"vllm:num_requests_running", b"vllm:num_requests_waiting", b"vllm:kv_cache_usage_perc"})


def _metric_name(line: bytes) -> bytes:
    if line.startswith((b"# HELP ", b"# TYPE ")):
        return line[7:].split(b" ", 1)[0]
    return line.split(b"{", 1)[0].split(b" ", 1)[0]
