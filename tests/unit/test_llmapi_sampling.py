"""Every field of our decoder request onto TensorRT-LLM 1.2.1's SamplingParams
(llama_triton/backend/llmapi_sampling.py), and the stand-in accepts exactly what is mapped."""
from __future__ import annotations

import numpy as np
import pytest

from llama_triton.backend import llmapi_standin_params as standin
from llama_triton.backend.llmapi_sampling import to_llmapi, word_text_for
from llama_triton.contract import RequestError
from llama_triton.engine.types import SamplingParams


def no_text(ids):
    raise AssertionError(f"no multi-token word expected, got {ids}")


def test_every_field_is_mapped():
    bias = np.zeros(32000, np.float32)
    bias[5] = 3.0
    p = SamplingParams(max_new_tokens=17, temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2,
                       presence_penalty=0.5, frequency_penalty=-0.5, seed=2 ** 63 + 5, end_id=2,
                       stop_words=[[13], [29889]], bad_words=[[7]], min_tokens=3, num_return_sequences=2,
                       return_log_probs=True, top_logprobs=4, embedding_bias=bias, guide_type="regex", guide="(a|b)")
    r = to_llmapi(p, no_text)
    assert r.sampling == {
        "max_tokens": 17, "n": 2, "temperature": 0.7, "top_k": 40, "top_p": 0.9, "seed": 2 ** 63 + 5,
        "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5, "min_tokens": 3,
        "min_p": 0.05, "include_stop_str_in_output": True, "exclude_input_from_output": True, "detokenize": False,
        "end_id": 2, "pad_id": 2, "stop_token_ids": [13, 29889], "bad_token_ids": [7], "embedding_bias": bias,
        "logprobs": 4}
    assert r.guided == {"regex": "(a|b)"}
    sp = standin.SamplingParams(**r.sampling, guided_decoding=standin.GuidedDecodingParams(**r.guided))
    assert sp.best_of == 2 and sp.pad_id == 2


def test_defaults_keep_the_runtime_defaults():
    r = to_llmapi(SamplingParams(max_new_tokens=4, end_id=2), no_text)
    assert r.sampling["min_tokens"] is None and r.sampling["min_p"] is None     # "no effect" values
    assert "logprobs" not in r.sampling and "stop_token_ids" not in r.sampling and "bad" not in r.sampling
    assert r.guided is None


def test_no_end_token_is_ignore_eos_not_the_tokenizers_eos():
    # An absent end_id would become the tokenizer's EOS in SamplingParams._setup; ours means none.
    r = to_llmapi(SamplingParams(max_new_tokens=4, end_id=None), no_text)
    assert r.sampling["ignore_eos"] is True and "end_id" not in r.sampling


def test_top_p_at_or_below_zero_is_off_not_greedy():
    assert to_llmapi(SamplingParams(max_new_tokens=1, top_p=0.0), no_text).sampling["top_p"] is None
    assert to_llmapi(SamplingParams(max_new_tokens=1, top_p=-1.0), no_text).sampling["top_p"] is None


@pytest.mark.parametrize("top,want", [(0, 1), (5, 5)])
def test_log_probs_ask_for_at_least_one(top, want):
    r = to_llmapi(SamplingParams(max_new_tokens=1, return_log_probs=True, top_logprobs=top), no_text)
    assert r.sampling["logprobs"] == want


@pytest.mark.parametrize("guide_type,guide,field,value", [
    ("json", None, "json_object", True), ("json_schema", '{"type": "object"}', "json", '{"type": "object"}'),
    ("regex", "a+", "regex", "a+"), ("ebnf_grammar", 'root ::= "x"', "grammar", 'root ::= "x"')])
def test_guide_types(guide_type, guide, field, value):
    r = to_llmapi(SamplingParams(max_new_tokens=1, guide_type=guide_type, guide=guide), no_text)
    assert r.guided == {field: value}
    standin.GuidedDecodingParams(**r.guided)._validate()


def test_multi_token_words_become_text_when_they_round_trip(default_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    word = tok.encode("Hello world", add_special_tokens=False)
    assert len(word) > 1
    r = to_llmapi(SamplingParams(max_new_tokens=1, stop_words=[word, [13]], bad_words=[word]), word_text_for(tok))
    assert r.sampling["stop"] == ["Hello world"] and r.sampling["stop_token_ids"] == [13]
    assert r.sampling["bad"] == ["Hello world"]
    # Ids no text tokenizes to ("Hello" split as "▁Hel" "lo") cannot be said as a string.
    odd = tok.convert_tokens_to_ids(["▁Hel", "lo"])
    assert tok.encode(tok.decode(odd), add_special_tokens=False) != odd
    with pytest.raises(RequestError, match="stop_words_list: the multi-token word"):
        to_llmapi(SamplingParams(max_new_tokens=1, stop_words=[odd]), word_text_for(tok))
