"""What the frontend tells operators: the request context and JSON logs, Prometheus metrics (ours and
the `vllm:` family), OpenTelemetry spans and the TTFT stamps of the benchmarks.

Depends on tenancy (a request's tenant). `tracing` and `ttft_stamps` are exported as modules: their
callers read switches (`ttft_stamps.ENABLED`) at call time, and tests flip them there."""
from frontend.telemetry import tracing, ttft_stamps
from frontend.telemetry.logging_setup import RequestContext, client_request_id, current_request, hash_user
from frontend.telemetry.logging_setup import configure as configure_logging
from frontend.telemetry.metrics import FrontendMetrics
from frontend.telemetry.vllm_metrics import refresh_kv_cache_usage

__all__ = ["FrontendMetrics", "RequestContext", "client_request_id", "configure_logging", "current_request",
           "hash_user", "refresh_kv_cache_usage", "tracing", "ttft_stamps"]
