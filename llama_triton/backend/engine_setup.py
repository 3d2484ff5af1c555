"""Builds the CPU decoder's engine from the Triton model parameters and exports its counters.

Used by llama_triton/backend/decoder_model.py. The counters become Triton custom metrics
(`llama_triton_engine_*` at Triton's /metrics), which is how tests and operators see batching,
queueing and cancellation at work.
"""
from __future__ import annotations

import logging
import time

from llama_triton import defaults
from llama_triton.engine.config import EngineConfig
from llama_triton.engine.types import DecoderEngine


def build_engine(params: dict[str, str]) -> DecoderEngine:
    kind = params.get("decoder_kind", "llama")
    config = EngineConfig(
        max_batch_size=int(params.get("max_batch_size", defaults.MAX_BATCH_SIZE)),
        max_num_tokens=int(params.get("max_num_tokens", defaults.MAX_NUM_TOKENS)),
        max_seq_len=int(params.get("max_seq_len", defaults.MAX_SEQ_LEN)),
        max_queue_size=int(params.get("max_queue_size", defaults.MAX_QUEUE_SIZE)),
        prefill_chunk_size=int(params.get("prefill_chunk_size", defaults.PREFILL_CHUNK_SIZE)),
        block_size=int(params.get("tokens_per_block", defaults.TOKENS_PER_BLOCK)),
        enable_prefix_reuse=params.get("enable_kv_cache_reuse", "true") == "true",
        # 0: one intra-op thread for small models (tiny matmuls across threads cost more than they
        # save, and the frontend and Triton share the cores), every core for real sizes.
        num_threads=int(params.get("num_threads", "0")),
        dtype=params.get("dtype", defaults.DTYPE),
        matmul=params.get("matmul", "auto"),
    )
    if kind == "zero_cost":
        from llama_triton.engine.zero_cost import ZeroCostEngine
        logging.getLogger(__name__).warning("decoder_kind zero_cost: this decoder runs NO model and streams "
                                            "made-up tokens (serving-path measurements only)")
        return ZeroCostEngine(params["model_dir"], config)
    from llama_triton.engine.engine import Engine
    engine = Engine(params["model_dir"], config)
    import torch
    # one line in Triton's log: what the decoder holds its weights in and how many threads it runs
    print(f"llama-triton CPU decoder: dtype {engine.dtype}, {torch.get_num_threads()} torch thread(s), "
          f"matmul {config.matmul}: " + "; ".join(f"{k} {v}" for k, v in engine.matmul_plan.items()), flush=True)
    return engine


COUNTERS = ("num_steps", "num_forward_passes", "num_decode_passes", "num_prefill_tokens",
            "num_generated_tokens", "num_reused_tokens", "num_cancelled")
UPDATE_PERIOD_S = 0.1
GAUGES = ("num_running", "num_waiting", "num_free_blocks", "last_cancel_latency_steps")


class EngineMetrics:
    """Mirrors engine counters into Triton custom metrics (gauges hold the running totals)."""

    def __init__(self, pb_utils, engine):
        self.engine = engine
        family = pb_utils.MetricFamily(name="llama_triton_engine", description="CPU decoder engine state",
                                       kind=pb_utils.MetricFamily.GAUGE)
        self.metrics = {name: family.Metric(labels={"stat": name})
                        for name in COUNTERS + GAUGES if hasattr(engine, name)}
        self._family = family
        self._values: dict[str, float] = {}
        self._last = 0.0
        self._occupancy = (None, None)
        # Published at once: a Triton metric reads 0 until set, and 0 free KV blocks on an engine that
        # has not stepped yet read as a full cache (vllm:kv_cache_usage_perc 1.0, which sent a
        # router's every request to the other replica).
        self.update()

    def update(self) -> None:
        # Every set() is a message to the Triton process: at most every 100 ms while the engine
        # works (it steps every few ms), but at once when a request joins or leaves (the running
        # and waiting gauges are what readers poll for), and only values that moved.
        now = time.monotonic()
        occupancy = (getattr(self.engine, "num_running", 0), getattr(self.engine, "num_waiting", 0))
        if now - self._last < UPDATE_PERIOD_S and occupancy == self._occupancy and any(occupancy):
            return      # busy, no request joined or left; an idle engine's totals are always sent
        self._occupancy = occupancy
        self._last = now
        for name, metric in self.metrics.items():
            value = getattr(self.engine, name, None)
            if value is not None and value != self._values.get(name):
                self._values[name] = value
                metric.set(float(value))
