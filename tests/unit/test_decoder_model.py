"""The decoder model's request bookkeeping (llama_triton/backend/decoder_model.py), without Triton.

A stand-in `triton_python_backend_utils` and a recording engine replace the stub process and the
CPU engine; the tensor parsing (llama_triton/trtllm/request_decoding.py) is the real one.
"""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

MODEL_PY = Path(__file__).resolve().parents[2] / "model_repository" / "tensorrt_llm" / "1" / "model.py"
FINAL = 1


class _Tensor:
    def __init__(self, name, value):
        self.name, self.value = name, value

    def as_numpy(self):
        return self.value


class _Error:
    def __init__(self, message):
        self.message = message


class _Response:
    def __init__(self, output_tensors=(), error=None):
        self.output_tensors, self.error = list(output_tensors), error


class _Metric:
    def set(self, value):
        pass


class _Family:
    GAUGE = 0

    def __init__(self, **kw):
        pass

    def Metric(self, labels):
        return _Metric()


def _fake_pb_utils() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.Tensor, pb.InferenceResponse, pb.TritonError, pb.MetricFamily = _Tensor, _Response, _Error, _Family
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    pb.get_input_tensor_by_name = lambda request, name: (
        _Tensor(name, request.inputs[name]) if name in request.inputs else None)
    return pb


class Sender:
    def __init__(self):
        self.sent = []

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))


class Request:
    def __init__(self, rid, **inputs):
        self.rid, self.inputs, self.sender, self.cancelled = rid, inputs, Sender(), False

    def request_id(self):
        return self.rid

    def get_response_sender(self):
        return self.sender

    def requested_output_names(self):
        return ["output_ids"]

    def is_cancelled(self):
        return self.cancelled


class RecordingEngine:
    def __init__(self):
        self.submitted, self.cancelled, self.listeners = [], [], []

    def add_step_listener(self, fn, at_end=False):
        self.listeners.append(fn)

    def start(self):
        pass

    def shutdown(self):
        pass

    def submit(self, request, callback):
        self.submitted.append((request, callback))

    def cancel(self, request_id):
        self.cancelled.append(request_id)


CONFIG = {"parameters": {}, "input": [{"name": n} for n in ("input_ids", "input_lengths", "request_output_len",
                                                            "streaming", "stop")],
          "output": [{"name": "output_ids"}, {"name": "sequence_length"}]}


@pytest.fixture
def model():
    from llama_triton.backend.decoder_model import DecoderModel
    engine = RecordingEngine()
    m = DecoderModel(_fake_pb_utils(), CONFIG, engine_factory=lambda params: engine)
    m.engine_under_test = engine
    yield m
    m.finalize()


def test_the_triton_model_file_is_a_shell_over_decoder_model(monkeypatch):
    """What Triton loads delegates every call: the logic above is the logic that serves."""
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("tensorrt_llm_model_under_test", MODEL_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    engine = RecordingEngine()
    from llama_triton.backend import decoder_model
    monkeypatch.setattr(decoder_model, "build_engine", lambda params: engine)
    shell = module.TritonPythonModel()
    shell.initialize({"model_config": json.dumps(CONFIG)})
    assert isinstance(shell.model, decoder_model.DecoderModel) and shell.model.engine is engine
    request = _generate("s1")
    assert shell.execute([request]) is None
    assert [r.request_id for r, _ in engine.submitted] == ["s1"]
    shell.finalize()


def _generate(rid):
    return Request(rid, input_ids=np.array([[1, 2, 3]], np.int32), input_lengths=np.array([[3]], np.int32),
                   request_output_len=np.array([[8]], np.int32), streaming=np.array([[True]]))


def test_duplicate_request_id_is_refused_and_keeps_the_originals_cancellation(model):
    engine = model.engine_under_test
    first, second = _generate("r1"), _generate("r1")
    model.execute([first])
    model.execute([second])
    assert len(engine.submitted) == 1                       # the duplicate never reached the engine
    (response, flags), = second.sender.sent
    assert flags == FINAL and "already in flight" in response.error.message
    assert first.sender.sent == []                          # the original runs on
    # Triton's cancellation of the original still reaches the engine.
    first.cancelled = True
    model.last_cancel_poll = 0.0
    model._before_step()
    assert engine.cancelled == ["r1"]


def test_request_id_is_free_again_after_the_original_ends(model):
    engine = model.engine_under_test
    first = _generate("r2")
    model.execute([first])
    (_, callback), = engine.submitted
    from llama_triton.engine.types import SequenceOutput
    callback(SequenceOutput("r2", 0, [5], finished=True, finish_reason="length"))
    assert model.pump.drain()       # the final response has gone out: the id is free from then on
    (_, flags), = first.sender.sent
    assert flags == FINAL
    again = _generate("r2")
    model.execute([again])
    assert len(engine.submitted) == 2 and again.sender.sent == []


def test_both_engines_implement_the_one_engine_protocol():
    from llama_triton.engine import DecoderEngine, Engine
    from llama_triton.engine.zero_cost import ZeroCostEngine
    members = [name for name in vars(DecoderEngine) if not name.startswith("_")]
    assert set(members) == {"submit", "cancel", "add_step_listener", "start", "shutdown"}
    for cls in (Engine, ZeroCostEngine):
        for name in members:
            assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}"


@pytest.mark.parametrize("params, allowed", [({}, True), ({"decoder_kind": "zero_cost"}, False),
                                             ({"emulate_tensorrt_llm": "true"}, False)])
def test_merged_responses_only_on_the_cpu_model_decoder(params, allowed):
    """GPU mode answers as TensorRT-LLM (one response per step); the zero-cost decoder measures the
    serving path per token. Only the CPU model decoder merges, and only for requests that ask."""
    from llama_triton.backend.decoder_model import DecoderModel
    config = {**CONFIG, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    m = DecoderModel(_fake_pb_utils(), config, engine_factory=lambda p: RecordingEngine())
    try:
        assert m.merge_allowed is allowed
    finally:
        m.finalize()
