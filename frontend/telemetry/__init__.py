"""What the frontend tells operators: the request context and JSON logs, Prometheus metrics (ours and
the `vllm:` family), OpenTelemetry spans and the TTFT stamps of the benchmarks."""
