"""Sizing plan: Llama-2 figures against hand-computed and published values, refused layouts."""
import json

import pytest

from llama_triton.gpu.plan import (CONFIGS_DIR, GPUS, PlanError, default_kv_dtype, layout_errors, load_model_shape,
                                   make_plan, weight_bytes)
from tests.conftest import load_build_script


# Hand-computed from the public config.json values (llama_triton/gpu/configs/):
# 70B: per layer q,o 8192*8192 each, k,v 8192*1024 each, gate/up/down 8192*28672 each, 2 norms of 8192.
L70_LINEAR = 2 * 8192 * 8192 + 2 * 8192 * 1024 + 3 * 8192 * 28672        # 855,638,016
L70_PARAMS = 80 * (L70_LINEAR + 2 * 8192) + 2 * 32000 * 8192 + 8192     # + embedding, LM head, final norm
L7_LINEAR = 4 * 4096 * 4096 + 3 * 4096 * 11008                          # MHA: k, v as big as q
L7_PARAMS = 32 * (L7_LINEAR + 2 * 4096) + 2 * 32000 * 4096 + 4096


@pytest.fixture(scope="module")
def l70():
    return load_model_shape("llama-2-70b")


@pytest.fixture(scope="module")
def l7():
    return load_model_shape("llama-2-7b")


def test_parameter_counts_match_published(l70, l7):
    assert L70_LINEAR == 855_638_016
    assert l70.num_params == L70_PARAMS == 68_976_648_192          # "69B"
    assert l7.num_params == L7_PARAMS == 6_738_415_616             # "6.7B"
    assert (l70.num_layers, l70.num_heads, l70.num_kv_heads, l70.head_dim) == (80, 64, 8, 128)
    assert (l7.num_layers, l7.num_heads, l7.num_kv_heads, l7.head_dim) == (32, 32, 32, 128)


def test_weight_bytes_70b(l70):
    fp16_total, fp16_tp8 = weight_bytes(l70, "none", tp=8)
    assert fp16_total == 2 * L70_PARAMS == 137_953_296_384          # "about 140 GB of FP16 weights"
    # TP8: every linear layer split 8 ways, the embedding replicated, the LM head split 8 ways.
    assert fp16_tp8 == 2 * 80 * L70_LINEAR // 8 + 2 * 80 * 2 * 8192 + 2 * 32000 * 8192 + 2 * 4000 * 8192 + 2 * 8192
    assert fp16_tp8 == 17_705_222_144                               # "about 18 GB per GPU" at TP8
    fp8_total, fp8_tp1 = weight_bytes(l70, "fp8", tp=1)
    # FP8 linear layers (1 byte); embedding, LM head and norms stay FP16.
    assert fp8_total == fp8_tp1 == 80 * L70_LINEAR + 2 * (2 * 32000 * 8192 + 80 * 2 * 8192 + 8192)
    assert fp8_total == 69_502_255_104                              # "about 70 GB in FP8"
    awq_total, _ = weight_bytes(l70, "int4_awq")
    assert awq_total == int(80 * L70_LINEAR * (0.5 + 2 / 128)) + 2 * (2 * 32000 * 8192 + 80 * 2 * 8192 + 8192)
    assert 35e9 < awq_total < 37e9


def test_kv_cache_bytes_per_token(l70, l7):
    assert l70.kv_bytes_per_token("fp8") == 80 * 8 * 128 * 2 * 1 == 163_840         # 160 KiB
    assert l70.kv_bytes_per_token("fp16") == 327_680                                # 320 KiB
    assert l70.kv_bytes_per_token("fp8") * 32768 == 5_368_709_120                    # ~5 GB per 32K tokens
    assert round(l70.kv_bytes_per_token("fp8") * 32000 / 1e9, 1) == 5.2
    assert l7.kv_bytes_per_token("fp16") == 32 * 32 * 128 * 2 * 2 == 524_288         # 512 KiB, no GQA


def check_capacity(plan, kv_per_gpu_token):
    gpu = GPUS[plan.gpu_key].memory_bytes
    assert plan.kv_bytes_per_token_per_gpu == kv_per_gpu_token
    free = gpu - plan.weight_bytes_per_gpu - plan.runtime_bytes - plan.activation_bytes
    assert plan.kv_cache_bytes_per_gpu == int(free * 0.9)
    assert plan.kv_tokens == plan.kv_cache_bytes_per_gpu // kv_per_gpu_token
    assert plan.concurrent_sequences == plan.kv_tokens // plan.max_seq_len


def test_plan_70b_fp16_tp8_h100(l70):
    p = make_plan(l70, "h100-80g", tp=8, quant="none")
    assert p.kv_dtype == "fp16" and p.max_seq_len == 4096 and p.world_size == 8
    check_capacity(p, 80 * 1 * 128 * 2 * 2)                 # one KV head per GPU: 40 KiB per token
    assert p.weight_bytes_per_gpu == 17_705_222_144
    assert 1.3e6 < p.kv_tokens < 1.5e6 and 320 < p.concurrent_sequences < 370
    text = p.render()
    assert "137.95 GB" in text and "17.71 GB" in text and "320.0 KiB in total (40.0 KiB per GPU)" in text


def test_plan_70b_fp8_tp4_h100(l70):
    p = make_plan(l70, "h100-80g", tp=4, quant="fp8")
    assert p.kv_dtype == "fp8"
    check_capacity(p, 80 * 2 * 128 * 2 * 1)                 # two FP8 KV heads per GPU: 40 KiB per token
    assert p.weight_bytes_total == 69_502_255_104
    assert "5.37 GB (5.00 GiB) per 32K tokens" in p.render()


def test_plan_70b_fp8_tp1_h200_and_h100(l70):
    h200 = make_plan(l70, "h200-141g", tp=1, quant="fp8")
    check_capacity(h200, 163_840)
    assert h200.weight_bytes_per_gpu == 69_502_255_104
    # perf-anchors section 4: about 72 GB for KV on an H200, about 440k tokens; about 11 GB / 67k on an H100.
    assert 400_000 < h200.kv_tokens < 450_000 and h200.concurrent_sequences == h200.kv_tokens // 4096
    h100 = make_plan(l70, "h100-80g", tp=1, quant="fp8")
    assert 60_000 < h100.kv_tokens < 70_000
    assert any("fewer than max_batch_size" in w for w in h100.warnings)


def test_plan_7b_fp16_tp1(l7):
    p = make_plan(l7, "a100-80g", tp=1)
    check_capacity(p, 524_288)
    assert p.weight_bytes_total == 2 * L7_PARAMS == 13_476_831_232     # "13.5 GB in FP16"
    assert p.weight_bytes_per_gpu == p.weight_bytes_total
    assert p.max_seq_len == 4096 and p.concurrent_sequences >= 25


def refused(shape, gpu, **kw) -> str:
    with pytest.raises(PlanError) as e:
        make_plan(shape, gpu, **kw)
    return str(e.value)


def test_impossible_layouts_are_refused_with_the_reason(l70, l7):
    msg = refused(l70, "h100-80g", tp=3)
    assert "TP3 does not divide the 8 KV heads" in msg and "[1, 2, 4, 8]" in msg
    msg = refused(l70, "h100-80g", tp=1, quant="none")
    assert "weights need 128.48 GiB per GPU" in msg and "79.65 GiB" in msg
    assert "try TP2 or TP1 with QUANT=fp8" in msg
    msg = refused(l70, "h100-80g", tp=16)
    assert "TP16 does not divide the 8 KV heads" in msg and "more than one 8-GPU node" in msg
    assert "TP16 spans more than one" in refused(l7, "h100-80g", tp=16)   # 32 heads divide, the node does not
    assert "PP3 does not divide the 80 layers" in refused(l70, "h100-80g", tp=8, pp=3)
    assert "no FP8 tensor cores" in refused(l70, "a100-80g", tp=4, quant="fp8")
    assert "KV_DTYPE=int8 cannot be built with QUANT=fp8" in refused(l70, "h100-80g", tp=4, quant="fp8",
                                                                        kv_dtype="int8")
    assert "beyond the model's 4096 positions" in refused(l70, "h200-141g", tp=8, max_seq_len=8192)
    # FP16 on one H200 fits the weights but leaves little KV cache: allowed, with a note.
    assert make_plan(l70, "h200-141g", tp=1).concurrent_sequences < 10


def test_layout_rules_without_a_gpu(l70):
    assert layout_errors(l70, 8, 1) == []
    assert layout_errors(l70, 4, 2, "int4_awq") == []
    assert default_kv_dtype("fp8") == "fp8" and default_kv_dtype("int4_awq") == "int8"
    assert default_kv_dtype("none", "bfloat16") == "bf16"


def test_model_names_directories_and_config_files(tmp_path):
    assert load_model_shape("meta-llama/Llama-2-70b-chat-hf").num_layers == 80
    assert load_model_shape("Llama-2-7b-hf").num_kv_heads == 32
    ckpt = tmp_path / "my-llama"
    ckpt.mkdir()
    cfg = json.loads((CONFIGS_DIR / "llama-2-7b.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(cfg))
    shape = load_model_shape(str(ckpt))
    assert shape.name == "my-llama" and shape.num_params == L7_PARAMS
    assert load_model_shape(str(ckpt / "config.json")).num_params == L7_PARAMS
    with pytest.raises(ValueError, match="not a checkpoint directory"):
        load_model_shape("llama-3-405b")


def test_plan_cli(capsys):
    plan = load_build_script("plan")
    assert plan.main(["--model", "llama-2-70b", "--gpu", "h100-80g", "--tp", "8"]) == 0
    out = capsys.readouterr().out
    assert "TP8 x PP1" in out and "137.95 GB" in out and "KV tokens" in out
    assert plan.main(["--model", "llama-2-70b", "--gpu", "h100-80g", "--tp", "3"]) == 1
    err = capsys.readouterr().err
    assert "cannot be served as TP3 x PP1" in err and "8 KV heads" in err
    assert plan.main(["--model", "llama-2-7b", "--gpu", "h200-141g", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["kv_bytes_per_token"] == 524_288 and figures["trtllm_release"] == "v1.2.1"
