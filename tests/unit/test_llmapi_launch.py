"""Serving the LLM-API decoder: the rendered repository (config + model.yaml), the launcher's
command for one and several GPUs, and the dry run (llama_triton/serve/llmapi_launch.py)."""
from __future__ import annotations

import shlex
import stat

import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llama_triton.serve.common import LaunchError, free_port
from llama_triton.serve.launcher import build_parser, main
from llama_triton.serve.repository import MODELS, RepositorySettings, TemplateError, render_repository
from llama_triton.serve.supervisor import Supervisor
from llama_triton.trtllm.tensor_contract import decoder_io


def parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_cpu_repository_declares_the_cpu_tensors_and_an_llm_for_the_stand_in(tmp_path):
    repo = render_repository(RepositorySettings(model_dir="/models/m", decoder="llmapi", max_num_tokens=32768,
                                                max_seq_len=1024, max_batch_size=8, max_queue_size=8, dtype="float32"),
                             tmp_path / "r")
    configs = {m: parse(repo / m / "config.pbtxt") for m in MODELS}
    cfg = configs["tensorrt_llm"]
    assert cfg.backend == "python" and cfg.model_transaction_policy.decoupled
    inputs, outputs = decoder_io("llmapi")
    assert {i.name for i in cfg.input} == {t.name for t in inputs}          # min_p, num_top_log_probs
    # the CPU list less the scheduling inputs: the LLM API has no priority argument (tensor_contract.py)
    assert {t.name for t in decoder_io("cpu")[0]} - {i.name for i in cfg.input} == {"priority", "tenant_rank"}
    assert {o.name for o in cfg.output} == {t.name for t in outputs}        # top_log_probs, ...
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params == {"llm_api": "cpu", "max_batch_size": "8", "max_queue_size": "8", "max_seq_len": "1024",
                      "exclude_input_in_output": "true", "tokens_per_block": "16", "num_threads": "0"}
    assert "min_p" in {i.name for i in configs["ensemble"].input}
    args = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert args == {"model": "/models/m", "backend": "pytorch", "dtype": "float32", "tensor_parallel_size": 1,
                    "pipeline_parallel_size": 1, "max_batch_size": 8, "max_num_tokens": 2048, "max_seq_len": 1024,
                    "enable_chunked_prefill": True, "guided_decoding_backend": "xgrammar",
                    "kv_cache_config": {"enable_block_reuse": True, "tokens_per_block": 16, "max_tokens": 32768}}
    assert (repo / "tensorrt_llm" / "1" / "model.py").is_file()


def test_gpu_repository_takes_tp_pp_and_the_kv_fraction(tmp_path):
    repo = render_repository(RepositorySettings(model_dir='/models/a "quoted" dir', decoder="llmapi",
                                                llm_api="tensorrt_llm", tensor_parallel_size=4, pipeline_parallel_size=2,
                                                kv_cache_free_gpu_mem_fraction=0.85), tmp_path / "r")
    args = yaml.safe_load((repo / "tensorrt_llm" / "1" / "model.yaml").read_text())
    assert args["model"] == '/models/a "quoted" dir'
    assert (args["tensor_parallel_size"], args["pipeline_parallel_size"], args["max_num_tokens"]) == (4, 2, 8192)
    assert args["kv_cache_config"] == {"enable_block_reuse": True, "tokens_per_block": 16,
                                       "free_gpu_memory_fraction": 0.85}
    assert {k: v.string_value for k, v in parse(repo / "tensorrt_llm" / "config.pbtxt").parameters.items()}[
        "llm_api"] == "tensorrt_llm"
    with pytest.raises(TemplateError, match="llm_api 'gpu'"):
        render_repository(RepositorySettings(model_dir="m", decoder="llmapi", llm_api="gpu"), tmp_path / "x")


def fake_executable(path):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def serve_args(tmp_path, model_dir, *extra):
    ports = [str(free_port()) for _ in range(4)]
    return build_parser().parse_args([
        "serve", "--decoder-io", "llmapi", "--model-dir", str(model_dir),
        "--tritonserver", str(fake_executable(tmp_path / "tritonserver")), "--work-dir", str(tmp_path / "run"),
        "--port", ports[0], "--triton-grpc-port", ports[1], "--triton-http-port", ports[2],
        "--triton-metrics-port", ports[3], *extra])


def test_one_gpu_is_one_tritonserver(tmp_path, default_model_dir):
    cmd = Supervisor(serve_args(tmp_path, default_model_dir, "--llm-api", "tensorrt_llm")).prepare()
    assert cmd[0].endswith("tritonserver") and "mpirun" not in " ".join(cmd)


def test_several_gpus_run_under_trtllm_llmapi_launch(tmp_path, default_model_dir):
    mpirun = fake_executable(tmp_path / "mpirun")
    args = serve_args(tmp_path, default_model_dir, "--llm-api", "tensorrt_llm", "--tp", "2", "--pp", "2",
                      "--mpirun", str(mpirun))
    cmd = Supervisor(args).prepare()
    assert cmd[:5] == [str(mpirun), "--allow-run-as-root", "-n", "4", "trtllm-llmapi-launch"]
    assert cmd[5].endswith("tritonserver") and ":" not in cmd          # one server; the LLM spans the ranks
    assert f"--grpc-port={args.triton_grpc_port}" in cmd
    args = serve_args(tmp_path, default_model_dir, "--llm-api", "tensorrt_llm", "--tp", "2",
                      "--mpirun", str(tmp_path / "no-mpirun"))
    with pytest.raises(LaunchError, match="needs mpirun"):
        Supervisor(args).prepare()


def test_the_cpu_stand_in_is_one_process(tmp_path, default_model_dir):
    with pytest.raises(LaunchError, match="--tp 2 --pp 1 needs --llm-api tensorrt_llm"):
        Supervisor(serve_args(tmp_path, default_model_dir, "--tp", "2")).prepare()


def test_dry_run_prints_model_yaml_and_the_tp4_launch_for_llama_2_70b(tmp_path, capsys):
    code = main(["serve", "--decoder-io", "llmapi", "--llm-api", "tensorrt_llm", "--model-dir", "llama-2-70b",
                 "--tp", "4", "--dry-run", "--work-dir", str(tmp_path / "run")])
    assert code == 0
    out = capsys.readouterr().out
    body, launch = out.split("# launch (4 GPUs):\n")
    args = yaml.safe_load(body)
    assert args["model"] == "meta-llama/Llama-2-70b-chat-hf" and args["tensor_parallel_size"] == 4
    assert args["kv_cache_config"]["free_gpu_memory_fraction"] == 0.9
    cmd = shlex.split(launch.strip())
    assert cmd[:5] == ["mpirun", "--allow-run-as-root", "-n", "4", "trtllm-llmapi-launch"]
    assert cmd[5] in ("/opt/tritonserver/bin/tritonserver",) or cmd[5].endswith("tritonserver")
    assert f"--model-repository={(tmp_path / 'run' / 'model_repository').resolve()}" in cmd
    assert main(["serve", "--decoder-io", "llmapi", "--model-dir", "no-such-model", "--dry-run",
                 "--work-dir", str(tmp_path / "run2")]) == 1
