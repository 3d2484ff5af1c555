"""frontend/telemetry/vllm_metrics.py: the running/waiting bookkeeping through our own gauges' calls, and
the KV-cache fraction read from either decoder's Triton metrics."""
from __future__ import annotations

from frontend.telemetry.metrics import FrontendMetrics
from frontend.telemetry.vllm_metrics import kv_cache_usage


def sample(m: FrontendMetrics, name: str) -> float:
    return m.registry.get_sample_value(name, {"model_name": "m", "engine": "0"})


def test_running_and_waiting_follow_our_decoder_gauges():
    m = FrontendMetrics("m")
    m.decoder_streams.inc()
    m.decoder_queued.inc()                 # sent, no output yet
    assert (sample(m, "vllm:num_requests_waiting"), sample(m, "vllm:num_requests_running")) == (1, 0)
    m.decoder_queued.dec()                 # first output
    assert (sample(m, "vllm:num_requests_waiting"), sample(m, "vllm:num_requests_running")) == (0, 1)
    m.decoder_streams.dec()
    assert (sample(m, "vllm:num_requests_waiting"), sample(m, "vllm:num_requests_running")) == (0, 0)
    m.ttft.observe(0.2)
    assert sample(m, "vllm:time_to_first_token_seconds_count") == 1
    assert m.registry.get_sample_value("llama_triton_time_to_first_token_seconds_count") == 1


def test_kv_cache_usage_from_either_decoder():
    cpu = 'llama_triton_engine{model="tensorrt_llm",stat="num_free_blocks",version="1"} 48\n'
    assert kv_cache_usage(cpu, 64) == 0.25
    assert kv_cache_usage(cpu, None) is None
    gpu = ('nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 10\n'
           'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} '
           '0.125\n')
    assert kv_cache_usage(gpu, 64) == 0.125
    assert kv_cache_usage("nothing here\n", 64) is None


def test_engine_counters_are_published_before_the_first_step():
    """A Triton metric reads 0 until set: 0 free blocks from an engine that has not stepped yet
    read as a full KV cache (vllm:kv_cache_usage_perc 1.0), and a router sent every request to the
    other replica."""
    from llama_triton.backend.engine_setup import EngineMetrics

    class Metric:
        def __init__(self, labels):
            self.labels, self.value = labels, 0.0

        def set(self, v):
            self.value = v

    class Family:
        GAUGE = "gauge"

        def __init__(self, **_):
            self.made = []

        def Metric(self, labels):
            self.made.append(Metric(labels))
            return self.made[-1]

    class PbUtils:
        MetricFamily = Family

    class Engine:
        num_running, num_waiting, num_free_blocks, num_steps = 0, 0, 128, 0

    metrics = EngineMetrics(PbUtils, Engine())
    values = {m.labels["stat"]: m.value for m in metrics._family.made}
    assert values["num_free_blocks"] == 128
    text = "".join(f'llama_triton_engine{{model="tensorrt_llm",stat="{k}",version="1"}} {v}\n' for k, v in values.items())
    assert kv_cache_usage(text, 128) == 0.0
