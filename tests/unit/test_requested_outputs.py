"""Which decoder outputs the frontend asks Triton for: each costs per streamed token, so only those it reads."""
import numpy as np

from frontend.decoder.interface import DecoderCapabilities
from frontend.decoder.triton_client import TritonDecoder
from llama_triton.trtllm.tensor_contract import COMMON_OUTPUTS, CPU_ONLY_OUTPUTS, PERF_METRIC_OUTPUTS


def _decoder() -> TritonDecoder:
    d = TritonDecoder("localhost:1")
    outputs = frozenset(t.name for t in COMMON_OUTPUTS + CPU_ONLY_OUTPUTS + PERF_METRIC_OUTPUTS)
    d._caps = DecoderCapabilities(frozenset(), outputs, {})
    return d


def _names(d, **arrays) -> list[str]:
    base = {"input_ids": np.zeros((1, 3), np.int32), "streaming": np.ones((1, 1), bool)}
    return sorted(o.name() for o in d._outputs({**base, **arrays}))


def test_a_single_choice_stream_reads_only_the_new_ids_and_the_cached_count():
    assert _names(_decoder()) == ["num_reused_tokens", "output_ids"]


def test_n_choices_add_the_sequence_index_and_log_probs_their_outputs():
    d = _decoder()
    assert _names(d, num_return_sequences=np.full((1, 1), 2, np.int32)) == \
        ["num_reused_tokens", "output_ids", "sequence_index"]
    assert _names(d, return_log_probs=np.ones((1, 1), bool), num_top_log_probs=np.ones((1, 1), np.int32)) == \
        ["num_reused_tokens", "output_ids", "output_log_probs", "top_log_prob_ids", "top_log_probs"]


def test_a_non_streamed_decoder_request_also_reads_sequence_length():
    d = _decoder()
    assert "sequence_length" in _names(d, streaming=np.zeros((1, 1), bool))
