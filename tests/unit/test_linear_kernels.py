"""The linear layers' kernels (llama_triton/llama/linear.py): every mode computes transformers'
logits, one row stays a matrix-vector product, the batched path takes the kernel its mode names,
and no mode holds a weight twice."""
from __future__ import annotations

import pytest
import torch

from llama_triton.engine.config import MATMULS, EngineConfig
from llama_triton.llama.loader import load_model
from llama_triton.llama.linear import MATMUL_CHOICES, Linear, configure_matmul, prepacked_supported, weight_bytes
from tests.unit.test_llama_forward import BF16_TOL, hf_logits, make_checkpoint, new_cache, run
from tests.unit.tiny_models import torch_threads

BF16_NATIVE = prepacked_supported(torch.bfloat16) is None
# float32 against transformers: every mode measured 1.9e-6 max abs on logits up to 3.7 (one
# float32 rounding of sums over 64-128 terms); 1e-5 leaves room for other BLAS builds, and a wrong
# kernel (a transposed weight, a row of another sequence) is off by ~1.
F32_TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def gqa_checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gqa"), num_key_value_heads=2)


def forward_all_shapes(model, ids, dtype=torch.float32):
    """Prefill 20 tokens, then decode one at a time, then a batch of 3 decode rows: logits of
    every position of `ids` (the batch's rows are three copies of the last position)."""
    kv, table = new_cache(model, dtype=dtype), [3, 0, 5, 1, 7, 2, 9, 4]
    got = [run(model, kv, [(0, 20, table)], ids[:20])]
    got += [run(model, kv, [(pos, 1, table)], [ids[pos]]) for pos in range(20, len(ids) - 1)]
    # three sequences sharing the cached prefix: a 3-row decode batch through the batched kernels
    last = len(ids) - 1
    batch = run(model, kv, [(last, 1, table)] * 3, [ids[last]] * 3)
    return torch.cat(got + [batch[:1]]), batch


@pytest.mark.parametrize("mode", ["plain", "swapped", "auto", "prepacked"])
def test_float32_every_mode_matches_transformers(gqa_checkpoint, mode):
    path, hf = gqa_checkpoint
    model = load_model(path)
    configure_matmul(model, mode)
    ids = torch.randint(0, 1000, (29,), generator=torch.Generator().manual_seed(4)).tolist()
    ours, batch = forward_all_shapes(model, ids)
    full = hf_logits(hf, ids)
    assert (ours - full).abs().max().item() < F32_TOL
    # the rows of a batch do not leak into each other
    assert (batch - full[-1]).abs().max().item() < F32_TOL


@pytest.mark.parametrize("mode", ["plain", "swapped", "prepacked"])
def test_bfloat16_modes_match_transformers_in_bfloat16(gqa_checkpoint, mode):
    import transformers
    path, hf32 = gqa_checkpoint
    model = load_model(path, dtype="bfloat16")
    if mode == "prepacked" and not BF16_NATIVE:
        # refused with the reason, not run on oneDNN's slow emulation or silently left plain
        with pytest.raises(ValueError, match="native bf16"):
            configure_matmul(model, mode)
        return
    configure_matmul(model, mode)
    hf16 = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                         attn_implementation="eager").eval()
    ids = torch.randint(0, 1000, (29,), generator=torch.Generator().manual_seed(4)).tolist()
    ours, _ = forward_all_shapes(model, ids, dtype=torch.bfloat16)
    assert (ours - hf_logits(hf16, ids)).abs().max().item() < BF16_TOL
    full = hf_logits(hf32, ids)
    assert (ours - full).abs().mean() <= 1.5 * (hf_logits(hf16, ids) - full).abs().mean()


def ops_of(model, rows: int, dtype) -> set[str]:
    lin = model.layers[0].mlp.gate_up_proj
    x = torch.randn(rows, lin.in_features).to(dtype)
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        lin(x)
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("mode", ["plain", "swapped", "auto"])
def test_one_row_is_a_matrix_vector_product_in_every_mode_with_dense_weights(gqa_checkpoint, mode):
    model = load_model(gqa_checkpoint[0], dtype="bfloat16")
    configure_matmul(model, mode)
    ops = ops_of(model, 1, torch.bfloat16)
    assert "aten::mv" in ops and "aten::mm" not in ops and "aten::linear" not in ops


def test_batched_rows_take_the_kernel_the_mode_names(gqa_checkpoint):
    model = load_model(gqa_checkpoint[0])
    configure_matmul(model, "swapped")
    assert "aten::mm" in ops_of(model, 8, torch.float32) and "aten::linear" not in ops_of(model, 8, torch.float32)
    configure_matmul(model, "plain")
    assert "aten::linear" in ops_of(model, 8, torch.float32)
    configure_matmul(model, "prepacked")
    for rows in (1, 8):
        assert "mkldnn::_linear_pointwise" in ops_of(model, rows, torch.float32)


def test_auto_picks_one_timed_kernel_per_shape_and_keeps_it_for_the_process(gqa_checkpoint):
    first, second = load_model(gqa_checkpoint[0]), load_model(gqa_checkpoint[0])
    plan = configure_matmul(first, "auto")
    assert plan == configure_matmul(second, "auto")
    for a, b in zip(first.modules(), second.modules()):
        if isinstance(a, Linear):
            assert a.batched == b.batched and set(a.batched) <= {"linear", "swapped"}
    if not BF16_NATIVE:
        # bf16 on emulated kernels is not timed (both are torch's slow reference code): the old choice
        emulated = load_model(gqa_checkpoint[0], dtype="bfloat16")
        configure_matmul(emulated, "auto")
        assert {m.batched for m in emulated.modules() if isinstance(m, Linear)} == {("linear", "linear")}


def test_prepacked_holds_each_weight_once(gqa_checkpoint):
    model = load_model(gqa_checkpoint[0])
    dense = weight_bytes(model)
    configure_matmul(model, "prepacked")
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.packed is not None and m.weight is None for m in linears)
    # oneDNN's blocks may pad a dimension to their width; nothing like a second copy
    assert dense <= weight_bytes(model) <= 1.1 * dense


def test_prepacked_leaves_a_tied_lm_head_on_the_embedding_table(tmp_path):
    path, _ = make_checkpoint(tmp_path, tie_word_embeddings=True, head_dim=32)
    model = load_model(path)
    dense = weight_bytes(model)
    plan = configure_matmul(model, "prepacked")
    assert model.lm_head.weight is model.embed_tokens.weight and model.lm_head.packed is None
    assert any("tied" in v for v in plan.values())
    assert weight_bytes(model) <= 1.1 * dense


def test_modes_are_the_engine_configs():
    assert MATMULS == MATMUL_CHOICES
    with pytest.raises(ValueError, match="matmul"):
        EngineConfig(matmul="fast")
    with pytest.raises(ValueError, match="matmul"):
        configure_matmul(torch.nn.Module(), "fast")
