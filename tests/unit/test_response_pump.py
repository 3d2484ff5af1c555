"""The decoder's response thread: order, merging when sending falls behind, and nothing lost."""
import threading

from llama_triton.backend.response_pump import ResponsePump, merge_outputs
from llama_triton.engine.types import SequenceOutput


def _out(tokens, *, seq=0, lps=None, finished=False, reason=None, reused=0, error=None):
    return SequenceOutput("r", seq, list(tokens), lps, None, finished, reason, reused, error)


def test_merging_keeps_every_token_log_prob_and_the_final_flag_once():
    outs = [_out([1], lps=[-0.1], reused=16), _out([2], lps=[-0.2]), _out([3], lps=[-0.3], finished=True, reason="length")]
    (m,) = merge_outputs(outs)
    assert m.token_ids == [1, 2, 3] and m.log_probs == [-0.1, -0.2, -0.3]
    assert m.finished and m.finish_reason == "length" and m.num_reused_tokens == 16


def test_an_error_is_never_merged_into_tokens():
    outs = [_out([1]), _out([2]), _out([], finished=True, reason="error", error="boom")]
    merged = merge_outputs(outs)
    assert [m.token_ids for m in merged] == [[1, 2], []] and merged[1].error == "boom"


def test_a_slow_sender_gets_several_tokens_per_response_and_loses_none():
    gate = threading.Event()
    got: list[SequenceOutput] = []

    def handler(out):
        gate.wait(5)            # the first send blocks: everything after it queues up
        got.append(out)

    pump = ResponsePump()
    try:
        pump.put(handler, _out([0]))
        for t in range(1, 10):
            pump.put(handler, _out([t], finished=t == 9, reason="length" if t == 9 else None))
        gate.set()
    finally:
        pump.close()            # sends what is queued, then stops
    assert [t for o in got for t in o.token_ids] == list(range(10))
    assert len(got) < 10 and [o.finished for o in got] == [False] * (len(got) - 1) + [True]


def test_a_request_that_did_not_ask_for_merging_gets_every_output_as_its_own_response():
    gate = threading.Event()
    got = []

    def handler(out):
        gate.wait(5)
        got.append(out.token_ids)

    pump = ResponsePump()
    try:
        for t in range(5):
            pump.put(handler, _out([t]), merge=False)
        gate.set()
    finally:
        pump.close()            # sends what is queued, then stops
    assert got == [[0], [1], [2], [3], [4]]


def test_sequences_of_one_request_are_separate_streams():
    got = {0: [], 1: []}
    gate = threading.Event()

    def handler(out):
        gate.wait(5)
        got[out.sequence_index].append(out.token_ids)

    pump = ResponsePump()
    try:
        pump.put(handler, _out([9], seq=1))
        for t in range(3):
            pump.put(handler, _out([t], seq=0))
            pump.put(handler, _out([10 + t], seq=1))
        gate.set()
    finally:
        pump.close()            # sends what is queued, then stops
    assert [t for ids in got[0] for t in ids] == [0, 1, 2]
    assert [t for ids in got[1] for t in ids] == [9, 10, 11, 12]


def test_close_sends_what_is_queued():
    got = []
    pump = ResponsePump()
    for t in range(20):
        pump.put(lambda out: got.extend(out.token_ids), _out([t]))
    pump.close()
    assert got == list(range(20))


def test_the_merge_parameter_is_read_from_the_triton_request():
    import json

    from llama_triton.backend.decoder_model import MERGE_PARAMETER, wants_merged_responses

    class Request:
        def __init__(self, params):
            self.params = params

        def parameters(self):
            return self.params

    assert wants_merged_responses(Request(json.dumps({MERGE_PARAMETER: True})))
    assert not wants_merged_responses(Request(json.dumps({MERGE_PARAMETER: "yes"})))
    assert not wants_merged_responses(Request("{}")) and not wants_merged_responses(Request(""))
    assert not wants_merged_responses(object())     # a request object without parameters()
