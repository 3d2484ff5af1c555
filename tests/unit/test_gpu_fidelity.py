"""Issue 11 without a server: the frontend's side of each TensorRT-LLM finding and the CPU
decoder's GPU-mode stand-in (llama_triton/backend/trtllm_emulation.py). The rendered GPU config and the
ensemble's postprocessing: test_gpu_config_contract.py."""
import json

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import InferenceServerException

from frontend.decoder import DecoderBusy
from frontend.decoder.triton_client import TritonDecoder, classify_error
from llama_triton.backend import trtllm_emulation as trtllm
from llama_triton.backend.request_decoding import parse_request
from llama_triton.engine.types import SequenceOutput
from llama_triton.serve.repository import RepositorySettings, render_repository
from llama_triton.trtllm.request_encoding import DecodeSettings, decoder_arrays
from llama_triton.trtllm.tensor_contract import PERF_METRIC_OUTPUTS, decoder_io

GPU_INPUTS = frozenset(t.name for t in decoder_io("gpu")[0])
QUEUE_FULL = "Maximum queue size of 8 has been reached, please try again later"


def gpu_config(tmp_path, **kw) -> model_config_pb2.ModelConfig:
    repo = render_repository(RepositorySettings(model_dir="m", decoder="gpu", decoder_io="gpu", engine_dir="e", **kw),
                             tmp_path / "r")
    return text_format.Parse((repo / "tensorrt_llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


# ----------------------------------------------------------------------------- finding 1 and the seed

def test_sampling_always_sends_top_k_and_top_p():
    a = decoder_arrays(DecodeSettings(prompt_ids=[1], max_new_tokens=4, temperature=1.0), GPU_INPUTS)
    # Absent, TensorRT-LLM would read top_k 0 and top_p 0.0: greedy.
    assert a["runtime_top_k"].item() == 0 and a["runtime_top_p"].item() == 1.0
    assert trtllm.sampling_top_k_top_p(int(a["runtime_top_k"].item()), float(a["runtime_top_p"].item())) == (0, 1.0)


def test_a_seed_is_always_sent():
    seeds = {decoder_arrays(DecodeSettings(prompt_ids=[1], max_new_tokens=4), GPU_INPUTS)["seed"].item()
             for _ in range(3)}
    assert len(seeds) == 3


@pytest.mark.parametrize("top_k,top_p,expected", [
    (None, None, (1, 1.0)), (0, None, (1, 1.0)), (None, 0.0, (1, 1.0)), (None, -1.0, (1, 1.0)),
    (5, None, (5, 1.0)), (None, 0.9, (0, 0.9)), (0, 1.0, (0, 1.0)), (3, 0.5, (3, 0.5)),
])
def test_trtllm_top_k_top_p_rule(top_k, top_p, expected):
    assert trtllm.sampling_top_k_top_p(top_k, top_p) == expected


def test_gpu_mode_parse_defaults():
    get = {"input_ids": np.array([[5, 6]]), "request_output_len": np.array([[3]]),
           "temperature": np.array([[1.0]], np.float32)}.get
    req, _ = parse_request(get, "r", trtllm=True)
    assert (req.params.top_k, req.params.seed) == (1, trtllm.DEFAULT_SEED)
    req, _ = parse_request(get, "r")
    assert req.params.top_k == 0       # the CPU decoder samples


# ----------------------------------------------------------------------------- finding 2

class _Resp:
    """A ModelInferResponse as TensorRT-LLM streams it: one new id, every log-prob so far."""

    def __init__(self, ids, lps):
        self.outputs = [service_pb2.ModelInferResponse.InferOutputTensor(name=n)
                        for n in ("output_ids", "sequence_length", "output_log_probs")]
        self.raw_output_contents = [np.asarray(ids, np.int32).tobytes(), np.asarray([len(ids)], np.int32).tobytes(),
                                    np.asarray(lps, np.float32).tobytes()]


def test_streamed_log_probs_are_the_tail():
    r = TritonDecoder._parse(_Resp([7], [-0.5, -1.5, -2.5]), False)
    assert r.token_ids == [7] and r.log_probs == [-2.5]
    r = TritonDecoder._parse(_Resp([7, 8], [-0.5, -1.5]), True)     # non-streamed / CPU: one per id
    assert r.log_probs == [-0.5, -1.5]


# ----------------------------------------------------------------------------- finding 4

def test_executor_queue_message_is_busy():
    err = InferenceServerException(f"{QUEUE_FULL} (/src/executorImpl.cpp:1234)\n1 0x7f stack")
    assert isinstance(classify_error(err), DecoderBusy)


def test_capacity_gate_reads_the_gpu_config(tmp_path):
    from frontend.decoder.triton_client import decoder_capacity
    cfg = json.loads(json_format.MessageToJson(gpu_config(tmp_path, triton_max_batch_size=16, max_queue_size=32),
                                               preserving_proto_field_name=True))
    params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items()}
    assert decoder_capacity(cfg, params) == 48


# ----------------------------------------------------------------------------- the GPU-mode responses

def shaper(**kw):
    args = dict(num_sequences=1, streaming=True, prompt_len=20, perf_metrics=False, block_size=16,
                declared=frozenset(t.name for t in decoder_io("gpu")[1]))
    args.update(kw)
    return trtllm.ResponseShaper(**args)


def out(i, ids, lps, *, reused=0, seq=0):
    return SequenceOutput("r", seq, ids, lps, num_reused_tokens=reused)


def base(lps, seq=0):
    return {"output_ids": np.zeros((1, 1, 1), np.int32), "sequence_length": np.ones((1, 1), np.int32),
            "sequence_index": np.asarray([[seq]], np.int32), "output_log_probs": np.asarray(lps, np.float32)}


def test_shaper_streams_cumulative_log_probs_without_sequence_index():
    s = shaper()
    a = s.shape(out(0, [5], [-1.0]), base([-1.0]))
    b = s.shape(out(0, [6], [-2.0]), base([-2.0]))
    assert b["output_log_probs"].reshape(-1).tolist() == [-1.0, -2.0] and a["output_log_probs"].size == 1
    assert "sequence_index" not in b
    assert "sequence_index" in shaper(num_sequences=2).shape(out(0, [5], [-1.0], seq=1), base([-1.0], 1))


def test_shaper_perf_metrics_and_missing_outputs():
    s = shaper(perf_metrics=True)
    a = s.shape(out(0, [5], [-1.0], reused=16), base([-1.0]))
    assert a["kv_cache_reused_blocks"].item() == 1 and a["kv_cache_alloc_total_blocks"].item() == 2
    assert set(t.name for t in PERF_METRIC_OUTPUTS) <= set(a)
    lacking = shaper(perf_metrics=True,
                     declared=frozenset({"output_ids", "sequence_length", "kv_cache_reused_blocks"}))
    with pytest.raises(trtllm.MissingOutput, match="Could not get response output for output tensor"):
        lacking.shape(out(0, [5], None), base([]))


def test_error_texts():
    assert trtllm.queue_full_text(8) == QUEUE_FULL
    assert trtllm.executor_error_text("bad").endswith(
        " due to the following error: Encountered an error when fetching new request: bad")
    with pytest.raises(Exception, match="request_output_len is not present"):
        parse_request({"input_ids": np.array([[1]])}.get, "r", trtllm=True)
