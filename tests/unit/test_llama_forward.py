"""The plain-PyTorch Llama forward pass against transformers' LlamaForCausalLM on the same weights."""
from __future__ import annotations

import json
import os

import pytest
import torch
import transformers

from llama_triton.engine.kv_cache import allocate_kv_cache
from llama_triton.llama.config import ModelConfig
from llama_triton.llama.loader import load_model
from llama_triton.llama.model import AttentionMetadata

TOL = 1e-4  # max abs logit difference in float32
BLOCK = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: torch's thread pool only adds contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_checkpoint(path, max_shard_size=None, **overrides):
    kwargs = dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                  initializer_range=0.1, attn_implementation="eager")
    kwargs.update(overrides)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    save = {"max_shard_size": max_shard_size} if max_shard_size else {}
    hf.save_pretrained(str(path), **save)
    return str(path), hf


def run(model, kv, chunks, token_ids):
    """chunks: (num_cached, num_new, block_table) per sequence; token_ids: the new tokens, packed."""
    meta = AttentionMetadata.build(chunks, BLOCK)
    with torch.inference_mode():
        return model.compute_logits(model(torch.tensor(token_ids), meta, kv))


def new_cache(model, num_blocks=64, dtype=torch.float32):
    cfg = model.config
    return allocate_kv_cache(cfg.num_hidden_layers, num_blocks, BLOCK, cfg.num_key_value_heads, cfg.head_dim, dtype)


def hf_logits(hf, ids):
    with torch.inference_mode():
        return hf(torch.tensor([ids])).logits[0].float()


CONFIGS = {
    "mha": ({}, None),
    "gqa": (dict(num_key_value_heads=2), None),
    "gqa-sharded": (dict(num_key_value_heads=1, num_attention_heads=8, hidden_size=128), "200KB"),
    "llama3-rope": (dict(num_key_value_heads=2, rope_theta=500000.0,
                         rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=16)), None),
    "linear-rope": (dict(rope_scaling=dict(rope_type="linear", factor=2.0)), None),
    "tied": (dict(tie_word_embeddings=True, head_dim=32), None),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    overrides, shard = CONFIGS[request.param]
    path, hf = make_checkpoint(tmp_path_factory.mktemp(request.param), shard, **overrides)
    return request.param, path, hf, load_model(path)


def test_prefill_matches_transformers(checkpoint):
    name, path, hf, model = checkpoint
    if name == "gqa-sharded":
        assert os.path.exists(os.path.join(path, "model.safetensors.index.json"))
        assert len(set(json.load(open(os.path.join(path, "model.safetensors.index.json")))["weight_map"].values())) > 1
    ids = torch.randint(0, 1000, (37,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = run(model, new_cache(model), [(0, len(ids), list(range(10)))], ids)
    diff = (ours - hf_logits(hf, ids)).abs().max().item()
    assert diff < TOL, f"{name}: max abs diff {diff}"


def test_prefill_then_decode_matches_full_sequence(checkpoint):
    _, _, hf, model = checkpoint
    ids = torch.randint(0, 1000, (23,), generator=torch.Generator().manual_seed(2)).tolist()
    full = hf_logits(hf, ids)
    kv, table = new_cache(model), [7, 3, 9, 1, 12, 5]  # blocks need not be contiguous
    got = [run(model, kv, [(0, 6, table)], ids[:6])]
    got.append(run(model, kv, [(6, 9, table)], ids[6:15]))   # a prefill chunk over a cached prefix
    for pos in range(15, len(ids)):
        got.append(run(model, kv, [(pos, 1, table)], [ids[pos]]))
    diff = (torch.cat(got) - full).abs().max().item()
    assert diff < TOL


def test_mixed_batch_matches_single_sequences(checkpoint):
    """Decode rows of different lengths and a prefill chunk packed into one pass."""
    _, _, hf, model = checkpoint
    gen = torch.Generator().manual_seed(3)
    a, b, c = (torch.randint(0, 1000, (n,), generator=gen).tolist() for n in (9, 14, 11))
    kv = new_cache(model)
    ta, tb, tc = [0, 1, 2], [3, 4, 5, 6], [7, 8, 9]
    run(model, kv, [(0, 8, ta), (0, 13, tb)], a[:8] + b[:13])
    out = run(model, kv, [(8, 1, ta), (0, 11, tc), (13, 1, tb)], [a[8]] + c + [b[13]])[[0, 11, 12]]
    expected = torch.stack([hf_logits(hf, a)[-1], hf_logits(hf, c)[-1], hf_logits(hf, b)[-1]])
    assert (out - expected).abs().max().item() < TOL


def test_dynamic_rope_beyond_max_positions(tmp_path):
    path, hf = make_checkpoint(tmp_path, max_position_embeddings=16,
                               rope_scaling=dict(rope_type="dynamic", factor=2.0))
    model = load_model(path)
    for n in (12, 30):  # within, then beyond max_position_embeddings
        ids = torch.randint(0, 1000, (n,), generator=torch.Generator().manual_seed(n)).tolist()
        ours = run(model, new_cache(model), [(0, n, list(range(8)))], ids)
        hf_model = transformers.LlamaForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
        assert (ours - hf_logits(hf_model, ids)).abs().max().item() < TOL


# bfloat16 keeps 8 significant bits: one rounding moves a value by up to 2^-9 of itself, and one
# unit in the last place of a logit of magnitude 2-4 (these models' range) is 2^-6 = 0.016. Our
# kernels and transformers' round at different places (fused QKV and gate/up matmuls, SDPA over
# the paged bf16 cache against eager attention, the decode steps reading K/V back from the cache),
# so two correct bf16 implementations differ by a few such units: measured max 0.031-0.039 over
# the three configs (2-3 units). The tolerance, 0.1, is 6 units: a real bug (a wrong rotary
# position, a missed residual, the KV cache read back in the wrong dtype) moves logits by far more.
# Second, the precision lost must be bf16's and not ours: our mean error against the float32
# reference must be within 1.5x of transformers' own bf16 error (measured ratio 0.97-1.0).
BF16_TOL = 0.1


@pytest.mark.parametrize("name", ["mha", "gqa", "tied"])
def test_bfloat16_matches_transformers_in_bfloat16(tmp_path, name):
    overrides, _ = CONFIGS[name]
    path, hf32 = make_checkpoint(tmp_path, **overrides)
    hf16 = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.bfloat16,
                                                         attn_implementation="eager").eval()
    model = load_model(path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ids = torch.randint(0, 1000, (29,), generator=torch.Generator().manual_seed(4)).tolist()
    kv = new_cache(model, dtype=torch.bfloat16)
    table = [3, 0, 5, 1, 7, 2, 9, 4]
    # prefill 20, then decode the rest token by token through the bf16 paged cache
    got = [run(model, kv, [(0, 20, table)], ids[:20])]
    got += [run(model, kv, [(pos, 1, table)], [ids[pos]]) for pos in range(20, len(ids))]
    ours = torch.cat(got)
    assert ours.dtype == torch.float32  # sampling works on fp32 logits
    ref16, ref32 = hf_logits(hf16, ids), hf_logits(hf32, ids)
    assert (ours - ref16).abs().max().item() < BF16_TOL
    ours_err, hf_err = (ours - ref32).abs().mean().item(), (ref16 - ref32).abs().mean().item()
    assert ours_err < 1.5 * hf_err, (ours_err, hf_err)
    # and the argmax (greedy) agrees with transformers' bf16 wherever its top-2 gap exceeds the tolerance
    top2 = ref16.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * BF16_TOL
    assert torch.equal(ours.argmax(-1)[clear], ref16.argmax(-1)[clear])


def test_config_reads_legacy_and_new_rope_layouts():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                num_attention_heads=2)
    legacy = ModelConfig.from_hf({**base, "rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 4.0}})
    assert (legacy.rope.rope_type, legacy.rope.theta, legacy.rope.factor) == ("linear", 1e6, 4.0)
    new = ModelConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}})
    assert (new.rope.rope_type, new.rope.theta, new.num_key_value_heads) == ("default", 5e5, 2)
    with pytest.raises(ValueError, match="unsupported rope type"):
        ModelConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="model_type"):
        ModelConfig.from_hf({**base, "model_type": "gpt2"})
