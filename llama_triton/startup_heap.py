"""Keeps the garbage collector off the objects a long-running process made at start-up.

The decoder stub (torch, transformers, xgrammar) and the frontend (aiohttp, grpc, tokenizers) hold
hundreds of thousands of objects once loaded. Every oldest-generation collection walks all of them,
and on the per-token path those collections come often: each a stall of every stream in that
process. `gc.freeze()` moves what exists now to a permanent generation the collector skips (vLLM's
engine does the same after start-up).
"""
import gc


def freeze_startup_heap() -> None:
    gc.collect()
    gc.freeze()
