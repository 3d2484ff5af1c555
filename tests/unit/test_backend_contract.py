"""Issue 22: TensorRT-LLM 1.2.1's backend contract (llama_triton/trtllm/backend_contract.py): the
configs we render keep it, a served config that breaks it is named, and every request the frontend
builds for such a decoder asks for output_ids and sequence_length."""
import json

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from frontend.decoder.interface import DecoderCapabilities
from frontend.decoder.triton_client import TritonDecoder, decoder_capacity
from llama_triton.gpu.build import EngineSpec, plan_build
from llama_triton.gpu.plan import load_model_shape
from llama_triton.serve.repository import RepositorySettings, render_repository
from llama_triton.trtllm import backend_contract as bc
from llama_triton.trtllm.tensor_contract import decoder_io


def served(tmp_path, **kw) -> dict:
    """A rendered `tensorrt_llm` config as Triton serves it (get_model_config(as_json=True))."""
    repo = render_repository(RepositorySettings(model_dir="m", engine_dir="e", xgrammar_tokenizer_info_path="t.json",
                                                **kw), tmp_path / "r")
    cfg = text_format.Parse((repo / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return json.loads(json_format.MessageToJson(cfg, preserving_proto_field_name=True))


def without(cfg: dict, kind: str, name: str) -> dict:
    return dict(cfg, **{kind: [t for t in cfg[kind] if t["name"] != name]})


def test_our_gpu_tensor_list_is_the_upstream_one():
    """Every tensor of our GPU list is one the 1.2.1 config declares, with its type and dims."""
    inputs, outputs = decoder_io("gpu")
    for t in inputs:
        assert bc.UPSTREAM_INPUTS[t.name] == (t.dtype, t.dims), t.name
    for t in outputs:
        assert bc.UPSTREAM_OUTPUTS[t.name] == (t.dtype, t.dims), t.name
    assert {t.name for t in inputs} >= set(bc.ALWAYS_SENT_INPUTS)
    assert set(bc.REQUIRED_OUTPUTS) <= {t.name for t in outputs}
    assert set(bc.PERF_METRIC_OUTPUTS) <= {t.name for t in outputs}


@pytest.mark.parametrize("decoder", ["gpu", "cpu"])
def test_rendered_gpu_configs_keep_the_contract(tmp_path, decoder):
    """The C++ backend's config, and the CPU decoder rendered in GPU mode, both hold."""
    cfg = served(tmp_path, decoder=decoder, decoder_io="gpu")
    assert bc.follows_trtllm(cfg)
    assert bc.config_problems(cfg) == []
    assert bc.required_outputs(cfg) == ("output_ids", "sequence_length")


def test_the_cpu_decoder_is_not_held_to_it(tmp_path):
    cfg = served(tmp_path)
    assert not bc.follows_trtllm(cfg) and bc.config_problems(cfg) == []
    assert bc.required_outputs(cfg) == ("output_ids",)


def test_the_engine_build_renders_a_config_that_keeps_it(tmp_path):
    bp = plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp_path / "o"), tp=4, pp=2),
                    load_model_shape("llama-2-70b"))
    repo = render_repository(bp.repository, tmp_path / "r")
    cfg = text_format.Parse((repo / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    as_served = json.loads(json_format.MessageToJson(cfg, preserving_proto_field_name=True))
    assert bc.config_problems(as_served) == []
    assert bc.pipeline_parallel_size(as_served) == 2


@pytest.mark.parametrize("mutate,named", [
    (lambda c: without(c, "output", "sequence_length"), "output 'sequence_length'"),
    (lambda c: without(c, "output", "output_ids"), "output 'output_ids'"),
    (lambda c: without(c, "output", "kv_cache_reused_blocks"), "output 'kv_cache_reused_blocks'"),
    (lambda c: without(c, "input", "seed"), "input 'seed'"),
    (lambda c: dict(c, input=c["input"] + [{"name": "min_p", "data_type": "TYPE_FP32", "dims": ["1"]}]),
     "input 'min_p'"),
    (lambda c: dict(c, input=[dict(t, data_type="TYPE_INT64") if t["name"] == "seed" else t for t in c["input"]]),
     "input 'seed' is TYPE_INT64"),
    (lambda c: dict(c, input=[dict(t, dims=["2"]) if t["name"] == "end_id" else t for t in c["input"]]),
     "input 'end_id' has dims [2]"),
    (lambda c: dict(c, model_transaction_policy={}), "decoupled"),
    (lambda c: dict(c, parameters=dict(c["parameters"], guided_decoding_backend={"string_value": ""})),
     "parameter 'guided_decoding_backend'"),
    (lambda c: dict(c, parameters=dict(c["parameters"],
                                       xgrammar_tokenizer_info_path={"string_value": "${xgrammar_tokenizer_info_path}"})),
     "parameter 'xgrammar_tokenizer_info_path'"),
])
def test_a_mismatched_served_config_is_named(tmp_path, mutate, named):
    problems = bc.config_problems(mutate(served(tmp_path, decoder="gpu", decoder_io="gpu")))
    assert any(named in p for p in problems), problems


def _decoder(cfg: dict) -> TritonDecoder:
    d = TritonDecoder("localhost:1")
    d._caps = DecoderCapabilities(frozenset(i["name"] for i in cfg["input"]),
                                  frozenset(o["name"] for o in cfg["output"]), {})
    d._required = bc.required_outputs(cfg)
    return d


def test_every_request_to_tensorrt_llm_asks_for_output_ids_and_sequence_length(tmp_path):
    """Finding: a streamed request asked only for output_ids (plus log-probs), which the backend
    fails at its first response. Each shape of request now asks for both."""
    d = _decoder(served(tmp_path, decoder="gpu", decoder_io="gpu"))
    base = {"input_ids": np.zeros((1, 3), np.int32), "streaming": np.ones((1, 1), bool)}
    for extra in ({}, {"return_log_probs": np.ones((1, 1), bool)}, {"num_return_sequences": np.full((1, 1), 2)},
                  {"return_perf_metrics": np.ones((1, 1), bool)}, {"streaming": np.zeros((1, 1), bool)}):
        names = [o.name() for o in d._outputs({**base, **extra})]
        assert {"output_ids", "sequence_length"} <= set(names), (extra, names)
        assert not [p for p in bc.request_problems([], names) if p.startswith("output")]


def test_pipeline_parallel_capacity(tmp_path):
    """Finding: with PP stages the executor holds PP x max_batch_size running requests, so the
    frontend's 429 gate counted too few."""
    cfg = served(tmp_path, decoder="gpu", decoder_io="gpu", triton_max_batch_size=8, max_queue_size=8,
                 pipeline_parallel_size=2)
    assert decoder_capacity(cfg, {}) == 2 * 8 + 8
    one = served(tmp_path, decoder="gpu", decoder_io="gpu", triton_max_batch_size=8, max_queue_size=8)
    assert decoder_capacity(one, {}) == 8 + 8


def test_request_problems():
    ok = [("input_ids", "INT32", (1, 3)), ("input_lengths", "INT32", (1, 1)),
          ("request_output_len", "INT32", (1, 1)), ("seed", "UINT64", (1, 1)),
          ("guided_decoding_guide_type", "BYTES", (1, 1))]
    assert bc.request_problems(ok, ["output_ids", "sequence_length"], "json_schema") == []
    assert bc.request_problems(ok, None) == []          # none asked for: Triton sends every output
    probs = bc.request_problems(ok[:2] + [("seed", "INT64", (1, 1)), ("min_p", "FP32", (1, 1))],
                                ["output_ids", "num_reused_tokens"], "json_object")
    assert any("sequence_length" in p for p in probs) and any("'seed' is INT64" in p for p in probs)
    assert any("'min_p'" in p for p in probs) and any("'num_reused_tokens'" in p for p in probs)
    assert any("request_output_len" in p for p in probs) and any("json_object" in p for p in probs)
    # a stop request is answered before its outputs are looked at
    assert bc.request_problems(ok[:3] + [("stop", "BOOL", (1, 1))], []) == []
