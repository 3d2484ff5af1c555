"""`make plan BACKEND=llmapi`: the checkpoint's stored format decides the weights (pre-quantized FP8
included), and the figures are the engine path's for that format (llama_triton/gpu/llmapi_plan.py)."""
from __future__ import annotations

import json
import shutil

import pytest

from llama_triton.gpu.llmapi_plan import checkpoint_format, make_llmapi_plan
from llama_triton.gpu.plan import CONFIGS_DIR, PlanError, load_model_shape, make_plan
from tests.conftest import load_build_script


def checkpoint(tmp_path, quantization_config=None, hf=None):
    d = tmp_path / "ckpt"
    d.mkdir()
    cfg = json.loads((CONFIGS_DIR / "llama-2-70b.json").read_text())
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (d / "config.json").write_text(json.dumps(cfg))
    if hf is not None:
        (d / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}, "quantization": hf}))
    return d


@pytest.mark.parametrize("qc,hf,want", [
    (None, None, ("none", None)),
    (None, {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}, ("fp8", "fp8")),
    (None, {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": None}, ("int4_awq", None)),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, None, ("fp8", None)),
    ({"quant_method": "modelopt", "quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}, None, ("fp8", "fp8")),
    ({"quant_method": "awq", "bits": 4, "group_size": 128}, None, ("int4_awq", None)),
    ({"quant_method": "compressed-tensors",
      "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float"}}}}, None, ("fp8", None)),
])
def test_stored_format(tmp_path, qc, hf, want):
    fmt = checkpoint_format(str(checkpoint(tmp_path, qc, hf)))
    assert (fmt.quant, fmt.kv_dtype) == want


@pytest.mark.parametrize("qc,hf,text", [
    (None, {"quant_algo": "NVFP4"}, "quant_algo NVFP4 is not one this plan sizes"),
    ({"quant_method": "gptq", "bits": 4}, None, "quant_method gptq) is a format this plan does not size"),
])
def test_formats_it_cannot_size_are_named(tmp_path, qc, hf, text):
    with pytest.raises(PlanError, match=text.replace("(", r"\(").replace(")", r"\)")):
        checkpoint_format(str(checkpoint(tmp_path, qc, hf)))


def test_pre_quantized_fp8_sizes_as_the_fp8_engine(tmp_path):
    d = checkpoint(tmp_path, hf={"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"})
    shape = load_model_shape(str(d))
    p = make_llmapi_plan(str(d), shape, "h100-80g", tp=4)
    engine = make_plan(shape, "h100-80g", tp=4, quant="fp8")
    assert (p.plan.quant, p.plan.kv_dtype) == ("fp8", "fp8")
    assert p.plan.weight_bytes_per_gpu == engine.weight_bytes_per_gpu and p.plan.kv_tokens == engine.kv_tokens
    text = p.render()
    assert "LLM API (PyTorch backend)" in text and "hf_quant_config.json: quant_algo FP8" in text
    assert "target       TensorRT-LLM v" not in text      # the engine path's target line is replaced
    with pytest.raises(PlanError, match="QUANT=none, but .* stores fp8 weights"):
        make_llmapi_plan(str(d), shape, "h100-80g", tp=4, quant="none")
    with pytest.raises(PlanError, match="asks for a fp8 KV cache"):
        make_llmapi_plan(str(d), shape, "h100-80g", tp=4, kv_dtype="fp16")


def test_plan_script_backend_llmapi(tmp_path, capsys):
    plan = load_build_script("plan")
    d = checkpoint(tmp_path, hf={"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"})
    assert plan.main(["--model", str(d), "--tp", "4", "--backend", "llmapi", "--quant", "auto", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["backend"] == "llmapi" and out["quant"] == "fp8" and out["trtllm_release"] == "1.2.1"
    assert plan.main(["--model", "llama-2-70b", "--tp", "4", "--quant", "auto"]) == 1   # auto is llmapi's
    shutil.rmtree(d)
