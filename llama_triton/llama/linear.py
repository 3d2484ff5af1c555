"""How the decoder multiplies activations by a weight matrix: one resident copy per weight, the
kernel picked by the number of rows.

Measured on the 1.1B shapes (see benchmarks/linear_kernels.py, which reruns the comparison on
any box):

* One row (a single decoding sequence) is a matrix-vector product bound by how fast the weights
  stream from memory. `torch.mv` is the fastest way to stream them: in bf16 it costs ~1.5-1.9x
  less CPU than oneDNN's GEMM on the same weights (AVX512-BF16); fp32 takes MKL's gemv either way.
* Several rows with plain row-major weights: `F.linear` hands x @ W^T to the BLAS with the large
  matrix as the operand it packs, so every call copies every weight once more (oneDNN in bf16,
  MKL in fp32). Asking for the transposed product W @ x^T instead (`swapped`) makes the small
  activation matrix the packed operand and reads W in place: 1.2-1.75x less CPU at 8 rows in
  fp32 on an AVX2 box, same memory, the one-row path untouched.
* oneDNN's prepacked (blocked) weights (`prepacked`) skip the copy too and were ~1.5x cheaper
  than `F.linear` batched in bf16, but oneDNN runs one row ~1.5x slower than `mv` on them, and
  holding both layouts would double the resident weights. So it is a whole-model choice that
  gives up the one-row speed; never a second copy.

Modes (EngineConfig.matmul): `plain` (mv / F.linear: the decoder before this module), `swapped`
(mv / W @ x^T), `auto` (mv / the faster of F.linear and W @ x^T, timed once per weight shape at
load, separately for decode-sized and prefill-sized row counts), `prepacked` (oneDNN for every
row count, weights held only in its blocked layout).
"""
from __future__ import annotations

import time
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

MATMUL_CHOICES = ("auto", "plain", "swapped", "prepacked")
# Row counts up to this are decode batches; above it prefill chunks. `auto` times the two kinds
# apart (at DECODE_ROWS and PREFILL_ROWS rows): the BLAS may pick different kernels for them.
# The LM head only ever sees one row per sequence, so it is timed for decode batches only: timing
# it at prefill sizes cost most of the ~27 s a first plan took for the 1.1B model in fp32 on two
# busy AVX2 cores (at 64 rows and without it: ~5 s).
DECODE_MAX_ROWS = 32
DECODE_ROWS, PREFILL_ROWS = 8, 64
_REDUCED = (torch.bfloat16, torch.float16)


class Linear(nn.Linear):
    """nn.Linear whose kernel depends on the row count (see the module docstring).

    `batched` is the kernel for more than one row, per row-count class: ("linear" | "swapped",
    for decode-sized, for prefill-sized). `packed` holds oneDNN's blocked weight in `prepacked`
    mode, and then `weight` is None: there is never a second copy.
    """

    batched: tuple[str, str] = ("linear", "linear")
    packed: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        rows = x.shape[0]
        if x.dim() != 2:
            return F.linear(x, self.weight, self.bias)
        if rows == 1 and x.dtype in _REDUCED:
            out = torch.mv(self.weight, x[0]).unsqueeze(0)
            return out if self.bias is None else out + self.bias
        if self.batched[rows > DECODE_MAX_ROWS] == "swapped" and rows > 1:
            # (W @ x^T)^T: rows of the result are needed contiguous by the views that follow
            out = torch.mm(self.weight, x.t()).t().contiguous()
            return out if self.bias is None else out + self.bias
        return F.linear(x, self.weight, self.bias)


def prepacked_supported(dtype: torch.dtype) -> Optional[str]:
    """None when oneDNN can hold and run weights of this dtype prepacked here, else why not."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN"
    if dtype in _REDUCED and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (f"oneDNN runs {str(dtype).removeprefix('torch.')} only on CPUs with native bf16 "
                "instructions (AVX512-BF16 or AMX)")
    if dtype not in (torch.float32, torch.bfloat16):
        return f"oneDNN prepacking takes float32 or bfloat16 weights, not {dtype}"
    return None


def _linears(model: nn.Module) -> Iterable[tuple[str, Linear]]:
    return ((name, m) for name, m in model.named_modules() if isinstance(m, Linear))


def configure_matmul(model: nn.Module, mode: str) -> dict[str, str]:
    """Sets every Linear of `model` to `mode`; returns the plan by weight shape, for the log."""
    if mode not in MATMUL_CHOICES:
        raise ValueError(f"matmul must be one of {', '.join(MATMUL_CHOICES)}, got {mode!r}")
    tied = {id(p) for name, p in model.named_parameters() if "embed" in name}
    plan: dict[str, str] = {}
    for name, lin in _linears(model):
        shape = f"{lin.out_features}x{lin.in_features}"
        if mode == "prepacked":
            if id(lin.weight) in tied:
                plan[shape] = "linear (tied to the embedding table: packing would add a copy)"
                continue
            reason = prepacked_supported(lin.weight.dtype)
            if reason:
                raise ValueError(f"matmul 'prepacked': {reason}")
            _pack(lin)
            plan[shape] = "prepacked"
            continue
        if mode == "auto":
            decode = _faster_batched(lin.weight, DECODE_ROWS)
            lin.batched = (decode, decode if name == "lm_head" else _faster_batched(lin.weight, PREFILL_ROWS))
        else:
            kernel = "swapped" if mode == "swapped" else "linear"
            lin.batched = (kernel, kernel)
        plan[shape] = f"{lin.batched[0]} (<= {DECODE_MAX_ROWS} rows), {lin.batched[1]} (more rows)"
    return plan


def _pack(lin: Linear) -> None:
    weight = lin.weight.detach()
    lin.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    lin.weight = None    # the dense copy goes: prepacked holds one copy, in oneDNN's layout
    del weight


# (weight shape, dtype, threads, rows) -> "linear" | "swapped". Owned by this module and written
# only by configure_matmul: all layers of a shape share one choice, and a second engine in the same
# process computes bit for bit like the first (seeded sampling repeats).
_batched_choices: dict[tuple, str] = {}


def _faster_batched(weight: torch.Tensor, rows: int) -> str:
    if prepacked_supported(weight.dtype) is not None and weight.dtype in _REDUCED:
        # bf16 without native instructions: both run torch's reference kernels (minutes to time
        # at prefill sizes); keep the decoder's original choice. `auto` dtype never lands here.
        return "linear"
    key = (tuple(weight.shape), weight.dtype, torch.get_num_threads(), rows)
    if key not in _batched_choices:
        _batched_choices[key] = _time_kernels(weight, rows)
    return _batched_choices[key]


def _time_kernels(weight: torch.Tensor, rows: int) -> str:
    x = torch.randn(rows, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
    kernels = {"linear": lambda: F.linear(x, weight), "swapped": lambda: torch.mm(weight, x.t()).t().contiguous()}
    best = {name: float("inf") for name in kernels}
    with torch.inference_mode():
        for fn in kernels.values():
            fn()                    # first calls set up oneDNN primitives / MKL buffers
        for _ in range(2):          # interleaved, best of two
            for name, fn in kernels.items():
                # CPU time of this process, not wall time: on a shared machine other processes'
                # slices would otherwise decide (wall time flipped choices between runs under load)
                t0 = time.process_time()
                fn()
                best[name] = min(best[name], time.process_time() - t0)
    return min(best, key=best.get)


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights the model holds resident, packed or dense, each tensor counted once."""
    seen: set[int] = set()
    total = 0
    for t in [p for p in model.parameters()] + [lin.packed for _, lin in _linears(model) if lin.packed is not None]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += torch.ops.mkldnn._nbytes(t) if t.is_mkldnn else t.numel() * t.element_size()
    return total
