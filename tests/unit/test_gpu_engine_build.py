"""`make engine` dry runs for Llama-2-70B: the commands, and filled configs Triton can parse and wire."""
import json
import re
import shlex

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llama_triton.gpu.build import (EngineSpec, BuildError, convert_script, plan_build, write_repository,
                                       xgrammar_tokenizer_info)
from llama_triton.gpu.plan import PlanError, load_model_shape
from llama_triton.serve.repository import MODELS
from llama_triton.trtllm.tensor_contract import TRTLLM_RELEASE, decoder_io
from tests.conftest import load_build_script

LAYOUTS = [  # (tp, pp, quant): the published Llama-2-70B recipes
    (8, 1, "none"),
    (4, 1, "fp8"),
    (2, 1, "fp8"),
    (4, 1, "int4_awq"),
    (4, 2, "fp8"),
]


@pytest.fixture(scope="module")
def l70():
    return load_model_shape("llama-2-70b")


def options(argv: list[str]) -> dict[str, object]:
    """`--flag value` pairs (value True for bare flags) of a command line."""
    out: dict[str, object] = {}
    for i, a in enumerate(argv):
        if a.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[a[2:]] = nxt if nxt is not None and not nxt.startswith("--") else True
    return out


def parse(text: str):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def check_repository(repo, configs=None):
    """Every config parses, nothing is left unfilled, and the ensemble's wiring matches what the
    GPU `tensorrt_llm` config declares."""
    if configs is None:
        texts = {m: (repo / m / "config.pbtxt").read_text() for m in MODELS}
    else:
        texts = configs
    for m, text in texts.items():
        assert "${" not in text, m
    cfg = {m: parse(t) for m, t in texts.items()}
    decoder = cfg["tensorrt_llm"]
    assert decoder.backend == "tensorrtllm" and decoder.model_transaction_policy.decoupled
    declared_in = {i.name for i in decoder.input}
    declared_out = {o.name for o in decoder.output}
    gpu_in, gpu_out = decoder_io("gpu")
    assert declared_in == {t.name for t in gpu_in} and declared_out == {t.name for t in gpu_out}
    assert {"seed", "min_tokens"} <= declared_in and not {"random_seed", "min_length"} & declared_in
    assert not {"min_p", "num_top_log_probs"} & declared_in          # what TensorRT-LLM lacks
    ens = cfg["ensemble"]
    produced = {i.name for i in ens.input}
    for step in ens.ensemble_scheduling.step:
        inputs = {i.name for i in cfg[step.model_name].input}
        for key, value in step.input_map.items():
            assert key in inputs, (step.model_name, key)
            assert value in produced, (step.model_name, key, value)
        outputs = {o.name for o in cfg[step.model_name].output}
        for key, value in step.output_map.items():
            assert key in outputs, (step.model_name, key)
            produced.add(value)
    assert {o.name for o in ens.output} <= produced
    decoder_step = next(s for s in ens.ensemble_scheduling.step if s.model_name == "tensorrt_llm")
    assert set(decoder_step.input_map) <= declared_in and set(decoder_step.output_map) <= declared_out
    post = next(s for s in ens.ensemble_scheduling.step if s.model_name == "postprocessing")
    assert "IS_FINAL" not in post.input_map                         # the GPU backend has no is_final
    return cfg


@pytest.mark.parametrize("tp,pp,quant", LAYOUTS)
def test_dry_run_70b_commands_and_configs(tmp_path, l70, tp, pp, quant):
    out = tmp_path / "out"
    bp = plan_build(EngineSpec(model="llama-2-70b", out_dir=str(out), tp=tp, pp=pp, quant=quant, gpu="h100-80g"),
                    l70)
    ckpt, build, tok = (bp.stage(n).argv for n in ("checkpoint", "engine", "tokenizer"))
    c, b = options(ckpt), options(build)

    # 1. checkpoint: the converter for FP16, ModelOpt for quantised weights; split TP x PP ways.
    assert (c["tp_size"], c["pp_size"], c["dtype"]) == (str(tp), str(pp), "float16")
    assert c["output_dir"] == str(out / "trtllm_checkpoint")
    if quant == "none":
        assert ckpt[1].endswith("examples/models/core/llama/convert_checkpoint.py")
        assert "qformat" not in c and "int8_kv_cache" not in c
    else:
        assert ckpt[1].endswith("examples/quantization/quantize.py")
        assert c["qformat"] == quant
        assert c["kv_cache_dtype"] == {"fp8": "fp8", "int4_awq": "int8"}[quant]
        assert c["calib_size"] == {"fp8": "512", "int4_awq": "32"}[quant]
        assert ("awq_block_size" in c) == (quant == "int4_awq")

    # 2. trtllm-build: paged KV, in-flight batching plugins, KV reuse + chunked context, sizes.
    assert build[0] == "trtllm-build"
    assert b["checkpoint_dir"] == c["output_dir"] and b["output_dir"] == str(out / "engine")
    assert (b["gemm_plugin"], b["gpt_attention_plugin"]) == ("auto", "auto")
    assert (b["kv_cache_type"], b["use_paged_context_fmha"], b["remove_input_padding"]) == ("paged", "enable", "enable")
    assert (b["max_batch_size"], b["max_input_len"], b["max_seq_len"], b["max_num_tokens"]) == \
        ("64", "4096", "4096", "8192")
    assert b["max_beam_width"] == "1" and b["workers"] == str(min(tp * pp, 8))
    assert ("use_fp8_context_fmha" in b) == (quant == "fp8")
    assert "paged_kv_cache" not in b and "max_output_len" not in b        # removed / deprecated flags

    # 3. tokenizer info, 4. repository
    assert tok[2:] == ["tokenizer-info", "--model-dir", "llama-2-70b",
                       "--out", str(out / "xgrammar_tokenizer_info.json")]
    repo = write_repository(bp, tmp_path / "repo")
    cfg = check_repository(repo)
    params = {k: v.string_value for k, v in cfg["tensorrt_llm"].parameters.items()}
    assert params["gpt_model_path"] == str(out / "engine")
    assert params["xgrammar_tokenizer_info_path"] == str(out / "xgrammar_tokenizer_info.json")
    assert params["guided_decoding_backend"] == "xgrammar"
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["max_tokens_in_paged_kv_cache"] == ""          # unset: the memory fraction sizes the KV cache
    assert params["enable_kv_cache_reuse"] == params["enable_chunked_context"] == "true"
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.9"
    assert cfg["tensorrt_llm"].max_batch_size == cfg["ensemble"].max_batch_size == 64
    info = json.loads((repo / "build-info.json").read_text())
    assert info["trtllm_release"] == TRTLLM_RELEASE == "v1.2.1"
    assert (info["tp"], info["pp"], info["world_size"], info["quant"]) == (tp, pp, tp * pp, quant)
    assert shlex.split(info["commands"]["engine"]) == build
    assert info["plan"]["kv_bytes_per_token"] == 80 * 8 * 128 * 2 * (2 if quant == "none" else 1)
    assert ("--world-size" in info["serve"]) == (tp * pp > 1)
    assert not out.exists()                                               # planning writes nothing


def test_dry_run_cli_prints_commands_and_filled_configs(tmp_path, capsys):
    engine = load_build_script("engine")
    out = tmp_path / "out"
    assert engine.main(["--model", "llama-2-70b", "--tp", "4", "--quant", "fp8", "--gpu", "h100-80g",
                        "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    assert f"TensorRT-LLM {TRTLLM_RELEASE}" in text and "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3" in text
    assert "quantize.py" in text and "trtllm-build" in text and "tokenizer-info" in text
    assert "Sizing plan" in text and "KV per token 160.0 KiB" in text
    assert "${" not in text and "random_seed" not in text and "min_length" not in text
    # The configs printed by the dry run are the filled ones: parse them straight from the output.
    sections = dict(re.findall(r"^### (\S+)\n(.*?)(?=\n\n##|\Z)", text, flags=re.S | re.M))
    configs = {m: sections[str(out / "model_repository" / m / "config.pbtxt")] for m in MODELS}
    check_repository(None, configs)
    info = json.loads(sections[str(out / "model_repository" / "build-info.json")])
    assert info["trtllm_release"] == TRTLLM_RELEASE and info["world_size"] == 4
    assert "llama-triton serve" in text and "--max-context 4096" in text


def test_refused_layouts_stop_before_any_command(tmp_path, l70, capsys):
    with pytest.raises(PlanError, match="TP3 does not divide the 8 KV heads"):
        plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path), tp=3), l70)
    with pytest.raises(PlanError, match="weights need"):
        plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path), tp=1, gpu="h100-80g"), l70)
    with pytest.raises(PlanError, match="KV_DTYPE=int8 cannot be built with QUANT=fp8"):
        plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path), tp=4, quant="fp8", kv_dtype="int8"), l70)
    with pytest.raises(BuildError, match="a 16-bit KV cache has the weights' dtype"):
        plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path), tp=8, kv_dtype="bf16"), l70)
    engine = load_build_script("engine")
    assert engine.main(["--model", "llama-2-70b", "--tp", "16", "--out", str(tmp_path / "x"), "--dry-run"]) == 1
    assert "8 KV heads" in capsys.readouterr().err


def test_kv_cache_routes_and_paths(tmp_path, l70):
    def spec(**kw):
        return plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path / "o"), tp=8, **kw), l70)

    int8 = options(spec(kv_dtype="int8").stage("checkpoint").argv)        # FP16 weights, INT8 KV: converter
    assert int8["int8_kv_cache"] is True and "qformat" not in int8
    fp8kv = spec(kv_dtype="fp8", calib_dataset="/data/calib")             # FP16 weights, FP8 KV: ModelOpt
    o = options(fp8kv.stage("checkpoint").argv)
    assert (o["qformat"], o["kv_cache_dtype"], o["calib_dataset"]) == ("full_prec", "fp8", "/data/calib")
    assert "use_fp8_context_fmha" not in options(fp8kv.stage("engine").argv)
    bf16 = spec(dtype="bfloat16")
    assert options(bf16.stage("checkpoint").argv)["dtype"] == "bfloat16" and bf16.kv_dtype == "bf16"
    moved = spec(deploy_dir="/engines/70b", deploy_model_dir="/models/Llama-2-70b-chat-hf",
                 max_seq_len=2048, max_input_len=1024, kv_cache_max_tokens=100000)
    assert moved.repository.engine_dir == "/engines/70b/engine"
    assert moved.repository.xgrammar_tokenizer_info_path == "/engines/70b/xgrammar_tokenizer_info.json"
    assert moved.repository.model_dir == "/models/Llama-2-70b-chat-hf"
    assert moved.repository.values()["max_num_tokens"] == 100000
    assert moved.build_info["repository"]["max_tokens_in_paged_kv_cache"] == 100000
    e = options(moved.stage("engine").argv)
    assert (e["max_seq_len"], e["max_input_len"]) == ("2048", "1024")
    assert moved.build_info["serve"].startswith("llama-triton serve --repository /engines/70b/model_repository")
    with pytest.raises(BuildError, match="larger than MAX_SEQ_LEN"):
        spec(max_seq_len=1024, max_input_len=2048)


def test_convert_script_follows_the_examples_layout(tmp_path):
    assert convert_script(str(tmp_path)) == str(tmp_path / "models/core/llama/convert_checkpoint.py")
    old = tmp_path / "llama" / "convert_checkpoint.py"
    old.parent.mkdir()
    old.write_text("")
    assert convert_script(str(tmp_path)) == str(old)


def test_xgrammar_tokenizer_info_from_the_default_model(default_model_dir, tmp_path):
    """The JSON TensorRT-LLM's backend reads, checked against xgrammar's own reading of the tokenizer."""
    import xgrammar as xgr
    from transformers import AutoTokenizer

    engine = load_build_script("engine")
    out = tmp_path / "xgrammar_tokenizer_info.json"
    assert engine.main(["tokenizer-info", "--model-dir", str(default_model_dir), "--out", str(out)]) == 0
    info = json.loads(out.read_text())
    assert set(info) == {"encoded_vocab", "tokenizer_str", "stop_token_ids"}
    assert info == xgrammar_tokenizer_info(str(default_model_dir))
    vocab = info["encoded_vocab"]
    assert len(vocab) == 32000 and vocab[:3] == ["<unk>", "<s>", "</s>"] and vocab[15043] == "▁Hello"
    assert info["stop_token_ids"] == [2]
    # The backend builds xgrammar's TokenizerInfo from these three fields (vocabulary type and
    # prefix-space rule detected from tokenizer_str); it must equal xgrammar's from the HF tokenizer.
    meta = xgr.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])
    ours = xgr.TokenizerInfo(vocab, vocab_type=meta["vocab_type"], add_prefix_space=meta["add_prefix_space"],
                             stop_token_ids=info["stop_token_ids"])
    ref = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(default_model_dir))
    assert ours.vocab_type == ref.vocab_type == xgr.VocabType.BYTE_FALLBACK
    assert ours.add_prefix_space == ref.add_prefix_space
    assert ours.vocab_size == ref.vocab_size and ours.stop_token_ids == ref.stop_token_ids
    assert ours.decoded_vocab == ref.decoded_vocab


FAKE_TRTLLM = '''#!{python}
"""Stands in for the NGC image's python3 (tensorrt_llm) and trtllm-build: writes the outputs."""
import json, sys
from pathlib import Path
args = sys.argv[1:]
if args[:1] == ["-c"]:
    print("[TensorRT-LLM] TensorRT-LLM version: {version}")
    print("{version}")
    sys.exit(0)
out = Path(args[args.index("--output_dir") + 1])
out.mkdir(parents=True, exist_ok=True)
with open(out.parent / "calls.log", "a") as log:
    log.write(Path(sys.argv[0]).name + "\\n")
cfg = {{"pretrained_config": {{"mapping": {{"world_size": 1, "tp_size": 1, "pp_size": 1}}}},
        "build_config": {{"max_seq_len": 1024, "plugin_config": {{"use_paged_context_fmha": True}}}}}}
(out / "config.json").write_text(json.dumps(cfg))
'''


def fake_tools(tmp_path, version="1.2.1"):
    import stat
    import sys

    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("python3", "trtllm-build"):
        path = tools / name
        path.write_text(FAKE_TRTLLM.format(python=sys.executable, version=version))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    examples = tmp_path / "examples" / "models" / "core" / "llama"
    examples.mkdir(parents=True)
    (examples / "convert_checkpoint.py").write_text("")
    return tools


def test_real_run_stages_progress_and_resume(tmp_path, default_model_dir, capfd):
    """The runner with stand-ins for TensorRT-LLM's tools: every stage runs once, in order, with
    progress lines; a second run skips them; the repository records the release."""
    tools = fake_tools(tmp_path)
    engine = load_build_script("engine")
    out = tmp_path / "out"
    argv = ["--model", str(default_model_dir), "--out", str(out), "--max-seq-len", "1024",
            "--trtllm-python", str(tools / "python3"), "--trtllm-build", str(tools / "trtllm-build"),
            "--trtllm-examples", str(tmp_path / "examples")]
    assert engine.main(argv) == 0
    log = capfd.readouterr().out
    for stage in ("stage 1/4 checkpoint", "stage 2/4 engine", "stage 3/4 tokenizer", "stage 4/4 repository"):
        assert stage in log
    assert "done in" in log and "engine: world size 1" in log and "llama-triton serve" in log
    info = json.loads((out / "model_repository" / "build-info.json").read_text())
    assert info["trtllm_release"] == TRTLLM_RELEASE and info["tensorrt_llm_version"] == "1.2.1"
    assert json.loads((out / "build-info.json").read_text())["built_at"] == info["built_at"]
    tok = json.loads((out / "xgrammar_tokenizer_info.json").read_text())
    assert len(tok["encoded_vocab"]) == 32000
    check_repository(out / "model_repository")
    assert engine.main(argv) == 0
    log = capfd.readouterr().out
    assert log.count("done earlier with the same command, skipped") == 3
    assert (out / "calls.log").read_text().split() == ["python3", "trtllm-build"]   # nothing ran twice


def test_real_run_refuses_another_release(tmp_path, default_model_dir, capfd):
    tools = fake_tools(tmp_path, version="0.20.0")
    engine = load_build_script("engine")
    argv = ["--model", str(default_model_dir), "--out", str(tmp_path / "out"),
            "--trtllm-python", str(tools / "python3"), "--trtllm-build", str(tools / "trtllm-build"),
            "--trtllm-examples", str(tmp_path / "examples")]
    assert engine.main(argv) == 1
    assert "tensorrt_llm 0.20.0 here, but this repository targets v1.2.1" in capfd.readouterr().err
    assert not (tmp_path / "out").exists()
