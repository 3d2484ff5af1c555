#!/usr/bin/env python3
"""Sizing plan for serving a Llama checkpoint with TensorRT-LLM on TP x PP GPUs (`make plan`).

    python build/plan.py --model llama-2-70b --gpu h100-80g --tp 4 --quant fp8
    python build/plan.py --model path/to/Llama-2-7b-chat-hf --gpu a100-80g --tp 1

Prints weights per GPU, the runtime reserve, KV-cache bytes per token and how many tokens and
full-length sequences fit; exits 1 with the reasons when the layout breaks a rule or cannot fit.
Needs only the checkpoint's config.json (llama-2-7b and llama-2-70b ship in llama_triton/gpu/configs/).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # runs without installing the package

from llama_triton.defaults import KV_CACHE_FREE_GPU_MEM_FRACTION, MAX_BATCH_SIZE, TRTLLM_MAX_NUM_TOKENS  # noqa: E402
from llama_triton.gpu.plan import GPUS, KV_DTYPE_BYTES, QUANTS, PlanError, load_model_shape, make_plan  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-2-70b",
                   help="checkpoint directory, its config.json, or a known name (llama-2-7b, llama-2-70b)")
    p.add_argument("--gpu", default="h100-80g", choices=sorted(GPUS))
    p.add_argument("--tp", type=int, default=1, help="tensor parallelism")
    p.add_argument("--pp", type=int, default=1, help="pipeline parallelism")
    p.add_argument("--quant", default="none", choices=QUANTS + ("auto",),
                   help="weight quantisation (auto, --backend llmapi: as the checkpoint stores it)")
    p.add_argument("--kv-dtype", default=None, choices=sorted(KV_DTYPE_BYTES),
                   help="KV cache dtype (default: fp8 with fp8 weights, int8 with int4_awq, else the model's)")
    p.add_argument("--max-seq-len", type=int, default=None, help="default: the model's max_position_embeddings")
    p.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    p.add_argument("--max-num-tokens", type=int, default=TRTLLM_MAX_NUM_TOKENS)
    p.add_argument("--kv-fraction", type=float, default=KV_CACHE_FREE_GPU_MEM_FRACTION,
                   help="kv_cache_free_gpu_mem_fraction of the deployed repository")
    p.add_argument("--backend", default="engine", choices=("engine", "llmapi"),
                   help="engine: a TensorRT-LLM engine build (`make engine`); llmapi: TensorRT-LLM's LLM API "
                        "(PyTorch backend), which loads the checkpoint as stored (pre-quantized FP8 included)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        shape = load_model_shape(a.model)
    except ValueError as e:
        print(f"plan: {e}", file=sys.stderr)
        return 2
    try:
        if a.backend == "llmapi":
            from llama_triton.gpu.llmapi_plan import make_llmapi_plan
            plan = make_llmapi_plan(a.model, shape, a.gpu, a.tp, a.pp, a.quant, a.kv_dtype, max_seq_len=a.max_seq_len,
                                    max_batch_size=a.max_batch_size, max_num_tokens=a.max_num_tokens,
                                    kv_fraction=a.kv_fraction)
        elif a.quant == "auto":
            raise PlanError(["QUANT=auto is for --backend llmapi; an engine build chooses its quantisation"])
        else:
            plan = make_plan(shape, a.gpu, a.tp, a.pp, a.quant, a.kv_dtype, a.max_seq_len,
                             a.max_batch_size, a.max_num_tokens, a.kv_fraction)
    except PlanError as e:
        print(f"plan: {shape.name} cannot be served as TP{a.tp} x PP{a.pp} "
              f"(QUANT={a.quant}) on {a.gpu}:", file=sys.stderr)
        for reason in e.reasons:
            print(f"  - {reason}", file=sys.stderr)
        return 1
    print(json.dumps(plan.to_dict(), indent=2) if a.json else plan.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
