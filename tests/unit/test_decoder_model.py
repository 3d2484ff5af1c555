"""The decoder model's request bookkeeping (llama_triton/backend/decoder_model.py), without Triton.

A stand-in `triton_python_backend_utils` and a recording engine replace the stub process and the
CPU engine; the tensor parsing (llama_triton/backend/request_decoding.py) is the real one.
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


class SenderClosed(Exception):
    """What the Python backend raises for a send on a closed sender (as pb_utils.TritonModelException)."""


class Sender:
    """As strict as the Python backend's `InferenceResponseSender`: flags are 0 or FINAL, a
    response is required unless the flags are FINAL, and after the FINAL flag every send raises
    (triton-inference-server/python_backend src/response_sender.cc, AssertResponseSenderArgumentsWellFormed
    and UpdateStateAndCounters, read at 10aafa7). Each refused send is also recorded, because the
    decoder's sender thread catches and logs what a send raises."""

    def __init__(self):
        self.sent = []
        self.refused = []
        self.closed = False

    def send(self, response=None, flags=0):
        if flags not in (0, FINAL):
            self.refused.append((response, flags))
            raise SenderClosed("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            self.refused.append((response, flags))
            raise SenderClosed("Inference Response object must be provided when the response flags is set to zero.")
        if self.closed:
            self.refused.append((response, flags))
            raise SenderClosed("Unable to send response. Response sender has been closed.")
        if flags == FINAL:
            self.closed = True
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
        if self.sender.closed:
            # Triton has released the request with its FINAL response: asking after that reached
            # freed memory in tritonserver (it died with SIGSEGV).
            self.sender.refused.append(("is_cancelled", "after FINAL"))
            raise SenderClosed("is_cancelled() on a request released by its FINAL response")
        return self.cancelled


class RecordingEngine:
    """Records what the model asks of the engine; as strict as `Engine` where the model must cope:
    a submit after shutdown raises EngineStopped."""

    def __init__(self):
        self.submitted, self.cancelled, self.listeners = [], [], []
        self.stopped = False

    def add_step_listener(self, fn, at_end=False):
        self.listeners.append(fn)

    def start(self):
        pass

    def shutdown(self):
        self.stopped = True

    def submit(self, request, callback):
        from llama_triton.contract import EngineStopped
        if self.stopped:
            raise EngineStopped("the engine has shut down")
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
    model.pump.close()              # sends what is queued (the final response): the id is free from then on
    (_, flags), = first.sender.sent
    assert flags == FINAL
    again = _generate("r2")
    model.execute([again])
    assert len(engine.submitted) == 2 and again.sender.sent == []


def test_both_engines_implement_the_one_engine_protocol():
    from llama_triton.engine.engine import Engine
    from llama_triton.engine.types import DecoderEngine
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


def _finals(request) -> list:
    return [(r, f) for r, f in request.sender.sent if f == FINAL]


def test_cancellation_poll_holds_no_lock_across_its_round_trips(model):
    """Finding 4 (issue 24): is_cancelled() is one IPC round trip per live request; holding the lock
    across them stalled execute(), which needs it to admit every new request."""
    held = []

    class Polled(Request):
        def is_cancelled(self):
            held.append(model.lock.locked())
            return True

    request = Polled("p1", **_generate("p1").inputs)
    model.execute([request])
    model.last_cancel_poll = 0.0
    model._before_step()
    assert held == [False]
    assert model.engine_under_test.cancelled == ["p1"]


def test_engine_error_with_two_sequences_answers_once(model):
    """Finding 9: with n > 1 an engine error fails every unfinished sequence; only the first may
    answer, with the FINAL flag: a second FINAL on the closed sender raises in Triton."""
    from llama_triton.engine.types import SequenceOutput
    request = Request("n2", **_generate("n2").inputs, num_return_sequences=np.array([[2]], np.int32))
    model.declared_inputs = model.declared_inputs | {"num_return_sequences"}
    model.execute([request])
    (_, callback), = model.engine_under_test.submitted
    for index in (0, 1):
        callback(SequenceOutput("n2", index, [], finished=True, finish_reason="error", error="internal error: boom"))
    model.pump.close()              # sends what is queued, then stops
    assert request.sender.refused == []
    (response, flags), = request.sender.sent
    assert flags == FINAL and response.error.message == "[llama-triton:internal_error] internal error: boom"


@pytest.fixture
def real_decoder(default_model_dir, request):
    """A DecoderModel over a real engine of the default model (`request.param`: its decoder_kind)."""
    from llama_triton.backend.decoder_model import DecoderModel
    params = {"model_dir": str(default_model_dir), "decoder_kind": request.param, "max_seq_len": "256",
              "max_num_tokens": "4096", "dtype": "float32", "num_threads": "1"}
    config = {**CONFIG, "parameters": {k: {"string_value": v} for k, v in params.items()}}
    m = DecoderModel(_fake_pb_utils(), config)
    yield m
    m.finalize()


@pytest.mark.parametrize("real_decoder", ["llama", "zero_cost"], indirect=True)
def test_every_admitted_request_is_answered_once_across_shutdown(real_decoder):
    """Findings 10 and the shutdown part of "Correct shutdown": requests in flight when Triton
    unloads the model get one final answer each, and a request that arrives after the engine shut
    down gets a final error (a typed "shutting_down": the frontend answers 503), not silence."""
    long = [Request(f"long-{i}", input_ids=np.array([[1, 2, 3]], np.int32), input_lengths=np.array([[3]], np.int32),
                    request_output_len=np.array([[200]], np.int32), streaming=np.array([[True]]))
            for i in range(3)]
    real_decoder.execute(long)
    real_decoder.finalize()
    late = _generate("late")
    real_decoder.execute([late])
    for request in long + [late]:
        assert request.sender.refused == [], request.rid
        assert len(_finals(request)) == 1, request.rid
    (response, _), = late.sender.sent
    assert response.error.message.startswith("[llama-triton:shutting_down] ")


def test_a_request_is_never_polled_once_its_final_response_is_out(model):
    """The cancellation poll and a request's final response never overlap, and no poll follows the
    final response (Triton frees the request then). The final response waits for a poll of the
    same request that is in flight; admission does not."""
    import threading
    from llama_triton.engine.types import SequenceOutput
    order, entered, release = [], threading.Event(), threading.Event()

    class Polled(Request):
        def is_cancelled(self):
            order.append("poll")
            entered.set()
            release.wait(30)
            order.append("poll done")
            return super().is_cancelled()

    polled = Polled("q1", **_generate("q1").inputs)
    model.execute([polled])
    (_, callback), = model.engine_under_test.submitted
    poll = threading.Thread(target=lambda: (setattr(model, "last_cancel_poll", 0.0), model._before_step()))
    poll.start()
    assert entered.wait(30)
    model.execute([_generate("q2")])                     # admission goes on meanwhile
    assert len(model.engine_under_test.submitted) == 2
    final_out = threading.Event()
    polled.sender.send = (lambda send: lambda *a, **kw: (order.append("final"), final_out.set(),
                                                         send(*a, **kw)))(polled.sender.send)
    callback(SequenceOutput("q1", 0, [5], finished=True, finish_reason="length"))
    final_out.wait(timeout=1.0)                          # the final waits on the poll (or, unguarded, goes out)
    release.set()
    poll.join(30)
    model.pump.close()                                   # sends what is queued, then stops
    assert order == ["poll", "poll done", "final"]
    model.last_cancel_poll = 0.0
    model._before_step()                                 # q1 is not polled again
    assert polled.sender.refused == []
