"""The `--dtype` choice: what `auto` means on this CPU, and the names the loader accepts.

`auto` is bfloat16 when the CPU has native bf16 dot products (AVX512-BF16's VDPBF16PS, or AMX
tiles), float32 otherwise. `torch.backends.cpu.get_cpu_capability()` cannot tell these apart: it
says "AVX512" on every AVX-512 CPU, with or without bf16. oneDNN runs bf16 matmuls on any AVX-512
CPU, but without those instructions it widens to fp32 first and is slower than plain fp32, so
holding weights in bf16 would save memory and cost speed. The CPU flags come from /proc/cpuinfo
(Linux, which Triton's CPU images are); elsewhere `auto` stays float32, the safe choice.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16(cpuinfo: Optional[str] = None) -> bool:
    """Whether bf16 matmuls run on native instructions here (see the module docstring)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    if not NATIVE_BF16_FLAGS & _cpu_flags(cpuinfo):
        return False
    # torch built without oneDNN (or with it disabled) would take the slow reference kernels
    is_supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(is_supported()) if is_supported is not None else torch.backends.mkldnn.is_available()


def resolve_dtype(name: str) -> str:
    """`auto` -> "bfloat16" or "float32" for this CPU; a concrete name is checked and returned."""
    if name == "auto":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}, got {name!r}")
    return name
