"""The decoder's dtype: what `auto` picks, weights and KV held in it, seeded sampling reproducible."""
from __future__ import annotations

import pytest
import torch

from llama_triton.engine.config import EngineConfig, auto_num_threads
from llama_triton.engine.engine import Engine
from llama_triton.engine.types import GenerationRequest, SamplingParams
from llama_triton.llama import dtype as dtypes
from llama_triton.llama.config import ModelConfig
from tests.unit.tiny_models import tiny_llama, torch_threads


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-bf16")
    tiny_llama().save_pretrained(str(path))
    return str(path)


def generate(engine: Engine, requests: dict[str, dict]) -> dict[str, list[int]]:
    tokens: dict[str, list[int]] = {rid: [] for rid in requests}
    for rid, kw in requests.items():
        ids = torch.randint(0, 1000, (kw.pop("prompt_len", 9),), generator=torch.Generator().manual_seed(1)).tolist()
        engine.submit(GenerationRequest(rid, ids, SamplingParams(**kw)), lambda out: tokens[out.request_id].extend(out.token_ids))
    while engine.has_work:
        engine.step()
    return tokens


def test_weights_and_kv_held_in_bfloat16_and_seeded_sampling_repeats(checkpoint):
    config = EngineConfig(max_num_tokens=512, block_size=4, max_seq_len=128, dtype="bfloat16")
    engine = Engine(checkpoint, config)
    assert engine.dtype == "bfloat16"
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert engine.runner.kv_cache.dtype == torch.bfloat16
    sampled = dict(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=7)
    first = generate(engine, {"a": dict(sampled)})["a"]
    again = generate(Engine(checkpoint, config), {"a": dict(sampled)})["a"]   # a fresh engine, same seed
    other_seed = generate(engine, {"b": dict(sampled, seed=8)})["b"]
    assert len(first) == 16 and first == again
    assert other_seed != first   # the seed is what makes them equal (16 tokens over 1000 ids)


def test_auto_is_bf16_only_with_native_bf16_instructions(monkeypatch):
    dtypes.cpu_has_native_bf16.cache_clear()
    base = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512vl{}\n"
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert dtypes.cpu_has_native_bf16(base.format("")) is False   # AVX-512 alone: emulated, slower than fp32
    assert dtypes.cpu_has_native_bf16(base.format(" avx512_bf16")) is onednn
    assert dtypes.cpu_has_native_bf16(base.format(" amx_bf16 amx_tile")) is onednn
    assert dtypes.cpu_has_native_bf16("no flags line") is False
    with open("/proc/cpuinfo") as f:
        native_here = bool({"avx512_bf16", "amx_bf16"} & set(f.read().split()))
    assert dtypes.resolve_dtype("auto") == ("bfloat16" if native_here and onednn else "float32")
    assert dtypes.resolve_dtype("float32") == "float32"
    with pytest.raises(ValueError, match="dtype must be one of"):
        dtypes.resolve_dtype("fp8")
    with pytest.raises(ValueError, match="EngineConfig.dtype"):
        EngineConfig(dtype="int8")


def test_auto_threads_by_model_size():
    tiny = ModelConfig(vocab_size=32000, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=32)
    tinyllama = ModelConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                            num_attention_heads=32, num_key_value_heads=4, head_dim=64)
    assert 0.9e9 < tinyllama.macs_per_token < 1.1e9   # ~1.0B of its 1.1B parameters are matmul weights
    assert auto_num_threads(tiny.macs_per_token, available_cores=8) == 1
    assert auto_num_threads(tinyllama.macs_per_token, available_cores=8) == 8


def test_dtype_reaches_the_decoder_parameters(tmp_path, monkeypatch):
    from llama_triton.serve.launcher import build_parser
    from llama_triton.serve.repository import RepositorySettings, render_repository

    monkeypatch.delenv("LLAMA_TRITON_DTYPE", raising=False)   # the suite sets float32 (tests/conftest.py)
    assert build_parser().parse_args(["serve"]).dtype == "auto"
    monkeypatch.setenv("LLAMA_TRITON_DTYPE", "float32")
    assert build_parser().parse_args(["serve"]).dtype == "float32"
    assert build_parser().parse_args(["serve", "--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--dtype", "float16"])
    assert build_parser().parse_args(["serve", "--decoder-threads", "3"]).decoder_threads == 3
    assert build_parser().parse_args(["serve"]).decoder_matmul == "auto"
    assert build_parser().parse_args(["serve", "--decoder-matmul", "prepacked"]).decoder_matmul == "prepacked"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--decoder-matmul", "fast"])
    repo = render_repository(RepositorySettings(model_dir=str(tmp_path), dtype="bfloat16", num_threads=3,
                                                matmul="swapped"), tmp_path / "repo")
    text = (repo / "tensorrt_llm" / "config.pbtxt").read_text()
    assert 'key: "dtype" value: { string_value: "bfloat16" }' in text
    assert 'key: "num_threads" value: { string_value: "3" }' in text
    assert 'key: "matmul" value: { string_value: "swapped" }' in text


def test_build_script_dtype_option(make_default_model):
    """--dtype in build/make_default_model.py: float32 builds keep their old completion marker
    (no rebuild, no --force for existing checkpoints); others are recorded; auto is resolved."""
    m = make_default_model
    assert "dtype" not in m.recorded_options(m.ModelOptions())
    assert m.recorded_options(m.ModelOptions(dtype="bfloat16"))["dtype"] == "bfloat16"
    assert m.resolve_dtype("auto") == dtypes.resolve_dtype("auto")
    assert m._parse_args(["--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(m.BuildError, match="--dtype"):
        m.ModelOptions(dtype="int8").validate()
