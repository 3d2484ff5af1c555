import numpy as np
import pytest

from llama_triton.backend.request_decoding import StopRequest, parse_request
from llama_triton.contract import RequestError
from llama_triton.trtllm.request_encoding import DecodeSettings, UnsupportedField, decoder_arrays, normalize_seed
from llama_triton.trtllm.tensor_contract import decoder_io
from llama_triton.trtllm.word_lists import WordListError, from_word_list, to_word_list

CPU = frozenset(t.name for t in decoder_io("cpu")[0])
GPU = frozenset(t.name for t in decoder_io("gpu")[0])


def test_word_list_round_trip_and_ragged():
    words = [[5, 6], [7], [8, 9, 10]]
    assert from_word_list(to_word_list(words)) == words
    assert from_word_list(to_word_list([])) == []
    with pytest.raises(WordListError):
        from_word_list(np.array([[1, 2], [3, 1]]))          # offsets going backwards
    with pytest.raises(WordListError):
        from_word_list(np.array([[1, 2, 3]]))               # not [2, L]


def test_seed_normalisation():
    assert normalize_seed(-1) == 2 ** 64 - 1
    assert normalize_seed(5) == 5
    assert normalize_seed(None) != normalize_seed(None)


def test_min_p_refused_where_decoder_lacks_it():
    s = DecodeSettings(prompt_ids=[1, 2], max_new_tokens=4, min_p=0.1)
    assert "min_p" in decoder_arrays(s, CPU)
    with pytest.raises(UnsupportedField) as e:
        decoder_arrays(s, GPU)
    assert e.value.field == "min_p"
    # The default value is not "asking" for min_p: no error.
    decoder_arrays(DecodeSettings(prompt_ids=[1], max_new_tokens=1), GPU)
    with pytest.raises(UnsupportedField):
        decoder_arrays(DecodeSettings(prompt_ids=[1], max_new_tokens=1, logprobs=True, top_logprobs=2), GPU)


def test_greedy_maps_to_top_k_1():
    a = decoder_arrays(DecodeSettings(prompt_ids=[1], max_new_tokens=1, temperature=0.0), CPU)
    assert a["runtime_top_k"].item() == 1


def arrays_getter(arrays):
    return lambda name: arrays.get(name)


def test_parse_request_round_trip():
    s = DecodeSettings(prompt_ids=[1, 2, 3], max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, min_p=0.05,
                       seed=-2, n=2, end_id=2, stop_token_ids=[13], logprobs=True, top_logprobs=3)
    req, exclude = parse_request(arrays_getter(decoder_arrays(s, CPU)), "r1")
    assert exclude and req.streaming
    p = req.params
    assert req.prompt_ids == [1, 2, 3] and p.max_new_tokens == 7
    assert (p.top_k, p.num_return_sequences, p.end_id, p.stop_words, p.top_logprobs) == (3, 2, 2, [[13]], 3)
    assert p.seed == 2 ** 64 - 2
    assert abs(p.min_p - 0.05) < 1e-6


@pytest.mark.parametrize("name,value,match", [
    ("temperature", np.array([[np.nan]], np.float32), "finite"),
    ("stop_words_list", np.array([[[1, 2], [3, 1]]], np.int32), "stop_words_list"),
    ("guided_decoding_guide_type", np.array([[b"yaml"]], dtype=object), "not one of"),
    ("input_lengths", np.array([[9]], np.int32), "input_lengths"),
    ("beam_width", np.array([[2]], np.int32), "beam_width"),
])
def test_malformed_tensors_fail_the_request(name, value, match):
    arrays = decoder_arrays(DecodeSettings(prompt_ids=[1, 2], max_new_tokens=3), CPU)
    arrays[name] = value
    with pytest.raises(RequestError, match=match):
        parse_request(arrays_getter(arrays), "r")


def test_stop_request():
    req, _ = parse_request(arrays_getter({"stop": np.array([[True]])}), "abc")
    assert isinstance(req, StopRequest) and req.request_id == "abc"


def test_the_cache_salt_reaches_the_engine_request_where_the_decoder_takes_it():
    salt = 2 ** 64 - 5
    s = DecodeSettings(prompt_ids=[1, 2], max_new_tokens=3, cache_salt=salt)
    arrays = decoder_arrays(s, CPU)
    assert arrays["cache_salt_id"].dtype == np.uint64
    req, _ = parse_request(arrays_getter(arrays), "r")
    assert req.cache_salt == salt
    unsalted, _ = parse_request(arrays_getter(decoder_arrays(DecodeSettings(prompt_ids=[1, 2], max_new_tokens=3),
                                                             CPU)), "r")
    assert unsalted.cache_salt is None
    # TensorRT-LLM's C++ backend has no such input: the frontend's own per-key salt is left out ...
    assert "cache_salt_id" not in decoder_arrays(s, GPU)
    # ... and a salt the client asked for by name is refused, never dropped
    with pytest.raises(UnsupportedField) as e:
        decoder_arrays(DecodeSettings(prompt_ids=[1, 2], max_new_tokens=3, cache_salt=1, cache_salt_asked=True), GPU)
    assert e.value.field == "cache_salt"
