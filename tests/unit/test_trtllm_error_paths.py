"""Issue 22, item 3: GPU mode fails where TensorRT-LLM 1.2.1's backend fails, with its text
(llama_triton/backend/trtllm_emulation.py; docs/GPU.md section 5.3 is the table these rows test)."""
import numpy as np
import pytest

from llama_triton.backend import trtllm_emulation as trtllm
from llama_triton.backend.request_decoding import parse_request
from llama_triton.contract import RequestError
from llama_triton.engine.types import SequenceOutput
from llama_triton.trtllm.word_lists import to_word_list
from tests.unit.test_decoder_model import FINAL, RecordingEngine, Request, _fake_pb_utils

ASSERT = "[TensorRT-LLM][ERROR] Assertion failed: "


def req(**over):
    a = {"input_ids": np.array([[1, 2, 3]], np.int32), "input_lengths": np.array([[3]], np.int32),
         "request_output_len": np.array([[4]], np.int32)}
    a.update(over)
    return {k: v for k, v in a.items() if v is not None}


def refused(**over) -> str:
    with pytest.raises(RequestError) as e:
        parse_request(req(**over).get, "r", trtllm=True)
    return str(e.value)


def one(value, dtype):
    return np.array([[value]], dtype)


@pytest.mark.parametrize("over,text", [
    # utils.cc splitBatchInputsTensors, before createRequestsFromInputTensors's own check
    (dict(input_ids=None), "inputTokens or encoderInputFeatures tensor not provided"),
    # executor SamplingConfig checks, in the constructor's order
    (dict(beam_width=one(0, np.int32)), ASSERT + "beamWidth > 0 && beamWidth <= "),
    (dict(runtime_top_k=one(-1, np.int32)), ASSERT + "topK.value() >= 0"),
    (dict(runtime_top_p=one(1.5, np.float32)), ASSERT + "topP.value() <= 1.f"),
    (dict(runtime_top_p_reset_ids=one(-1, np.int32)), ASSERT + "topPResetIds.value() >= 0"),
    (dict(runtime_top_p_decay=one(0.0, np.float32)), ASSERT + "topPDecay.value() > 0.f"),
    (dict(runtime_top_p_decay=one(1.5, np.float32)), ASSERT + "topPDecay.value() <= 1.f"),
    (dict(temperature=one(-0.5, np.float32)), ASSERT + "temperature.value() >= 0.f"),
    (dict(temperature=one(np.nan, np.float32)), ASSERT + "temperature.value() >= 0.f"),
    (dict(min_tokens=one(-1, np.int32)), ASSERT + "minTokens.value() >= 0"),
    (dict(beam_search_diversity_rate=one(-1.0, np.float32)), ASSERT + "beamSearchDiversityRate.value() >= 0.f"),
    (dict(repetition_penalty=one(0.0, np.float32)), ASSERT + "repetitionpenalty.value() > 0.f"),
    (dict(len_penalty=one(-1.0, np.float32)), ASSERT + "lengthPenalty.value() >= 0.f"),
    (dict(num_return_sequences=one(0, np.int32)), ASSERT + "numReturnSequences.value() > 0"),
    # utils.cc convertWordList, bad words before stop words
    (dict(stop_words_list=np.array([[[5, 6, 0], [1, -1, 2]]], np.int32)),
     ASSERT + "Sparse list must not have additional -1s: 5 6 0 1 -1 2 "),
    (dict(stop_words_list=np.array([[[5, 6], [3, -1]]], np.int32)),
     ASSERT + "Sparse list must not have out-of-bound offsets: 5 6 3 -1 "),
    (dict(bad_words_list=np.array([[[5, 6], [1, 1]]], np.int32)),
     ASSERT + "Sparse list must not have non-increasing offsets: 5 6 1 1 "),
    # executor Request::Impl::validate
    (dict(input_ids=np.zeros((1, 0), np.int32)), ASSERT + "!mInputTokenIds.empty()"),
    (dict(request_output_len=one(0, np.int32)), ASSERT + "mMaxNewTokens > 0"),
    # executor GuidedDecodingParams: only `json` may come without a guide
    (dict(guided_decoding_guide_type=np.array([[b"regex"]], object)),
     ASSERT + "The guide string must be provided unless using GuideType::kJSON."),
])
def test_enqueue_refusals_have_the_backends_text(over, text):
    assert refused(**over).startswith(text)


def test_what_the_backend_accepts_gpu_mode_accepts():
    """top_p <= 0 is dropped before its check; an unknown guide type runs unguided; input_lengths
    is read only to split batches; a first word offset of 0 is an empty word."""
    parsed, _ = parse_request(req(runtime_top_p=one(0.0, np.float32),
                                  guided_decoding_guide_type=np.array([[b"json_object"]], object),
                                  guided_decoding_guide=np.array([[b"{}"]], object),
                                  input_lengths=one(2, np.int32),
                                  stop_words_list=np.array([[[0, 7], [0, 1]]], np.int32)).get, "r", trtllm=True)
    assert parsed.params.guide_type is None and parsed.params.guide is None
    assert parsed.prompt_ids == [1, 2, 3]
    assert parsed.params.stop_words == [[0]]
    ok, _ = parse_request(req(guided_decoding_guide_type=np.array([[b"json"]], object)).get, "r", trtllm=True)
    assert ok.params.guide_type == "json"
    words = to_word_list([[5, 6], [7]])[None]
    assert parse_request(req(stop_words_list=words).get, "r", trtllm=True)[0].params.stop_words == [[5, 6], [7]]


def test_the_cpu_mode_keeps_its_own_checks():
    with pytest.raises(RequestError, match="input_lengths"):
        parse_request(req(input_lengths=one(5, np.int32)).get, "r")


@pytest.mark.parametrize("end_id,prompt,text", [
    (-2, 3, ASSERT + "EndId (-2) is not within acceptable range [-1, 100)."),
    (100, 3, ASSERT + "EndId (100) is not within acceptable range [-1, 100)."),
    (2, 11, "Prompt length (11) exceeds maximum input length (10). Set log level to info and check TRTGptModel "
            "logs for how maximum input length is set"),
])
def test_executor_refusals(end_id, prompt, text):
    assert trtllm.executor_refusal(prompt, end_id, vocab_size=100, max_input_len=10) == text
    assert trtllm.executor_refusal(3, -1, vocab_size=100, max_input_len=10) is None


GPU_CONFIG = {"parameters": {"emulate_tensorrt_llm": {"string_value": "true"}},
              "input": [{"name": n} for n in ("input_ids", "input_lengths", "request_output_len", "streaming",
                                              "stop", "end_id")],
              "output": [{"name": "output_ids"}, {"name": "sequence_length"}]}


class GpuRequest(Request):
    def __init__(self, rid, outputs, **inputs):
        super().__init__(rid, **inputs)
        self.outputs = outputs

    def requested_output_names(self):
        return self.outputs


@pytest.fixture
def gpu_model():
    from llama_triton.backend.decoder_model import DecoderModel
    engine = RecordingEngine()
    engine.vocab_size, engine.max_seq_len = 100, 16
    m = DecoderModel(_fake_pb_utils(), GPU_CONFIG, engine_factory=lambda params: engine)
    yield m, engine
    m.finalize()


def _inputs(**over):
    a = dict(input_ids=np.array([[1, 2, 3]], np.int32), input_lengths=np.array([[3]], np.int32),
             request_output_len=np.array([[8]], np.int32), streaming=np.array([[True]]))
    a.update(over)
    return a


@pytest.mark.parametrize("outputs,missing", [(["output_ids"], "sequence_length"),
                                             (["sequence_length"], "output_ids"),
                                             (["sequence_length", "num_reused_tokens"], "output_ids")])
def test_a_request_without_both_outputs_fails_at_its_first_response(gpu_model, outputs, missing):
    """The backend enqueues the request and fails its first response: that response is the last."""
    m, engine = gpu_model
    r = GpuRequest("g1", outputs, **_inputs())
    m.execute([r])
    (_, callback), = engine.submitted
    callback(SequenceOutput("g1", 0, [5]))
    callback(SequenceOutput("g1", 0, [6], finished=True, finish_reason="length"))
    m.pump.close()                  # sends what is queued, then stops
    (response, flags), = r.sender.sent
    assert flags == FINAL and response.error.message == (
        f"Error encountered while populating response: {missing} tensor must be present in list of output tensors")
    assert engine.cancelled == ["g1"]


def test_a_request_with_both_outputs_is_answered(gpu_model):
    m, engine = gpu_model
    r = GpuRequest("g2", ["output_ids", "sequence_length"], **_inputs())
    m.execute([r])
    (_, callback), = engine.submitted
    callback(SequenceOutput("g2", 0, [5], finished=True, finish_reason="length"))
    m.pump.close()                  # sends what is queued, then stops
    (response, flags), = r.sender.sent
    assert flags == FINAL and response.error is None
    assert {t.name for t in response.output_tensors} == {"output_ids", "sequence_length"}


def test_executor_refusals_are_worded_as_the_backend_sends_them(gpu_model):
    m, engine = gpu_model
    r = GpuRequest("g3", ["output_ids", "sequence_length"], **_inputs(end_id=np.array([[-2]], np.int32)))
    m.execute([r])
    assert engine.submitted == []
    (response, flags), = r.sender.sent
    assert flags == FINAL
    assert response.error.message.startswith("Executor failed process requestId ")
    assert response.error.message.endswith(" due to the following error: Encountered an error when fetching new "
                                           "request: " + ASSERT + "EndId (-2) is not within acceptable range [-1, 100).")
