"""The LLM-API stand-in reproduces what a client of TensorRT-LLM 1.2.1's LLM sees
(llama_triton/backend/llmapi_standin.py and llmapi_standin_params.py; the upstream lines are cited
there): SamplingParams validation and its texts, how results carry new tokens and log-probs,
finish reasons, abort."""
from __future__ import annotations

import asyncio

import pytest

from llama_triton.backend import llmapi_standin as s
from llama_triton.backend.llmapi_standin import Logprob, RequestError, _Response
from llama_triton.backend.llmapi_standin_params import GuidedDecodingParams, SamplingParams


@pytest.mark.parametrize("kwargs,text", [
    ({"top_p": 1.5}, "require 0 <= top_p <= 1, got top_p=1.5"),
    ({"top_k": -1}, "require top_k >= 0, got top_k=-1"),
    ({"temperature": -0.5}, "require temperature >= 0, got temperature=-0.5"),
    ({"n": 3, "best_of": 2, "temperature": 1.0}, "best_of (2) cannot be less than n (3)"),
    ({"truncate_prompt_tokens": 0}, "truncate_prompt_tokens must be >= 1, got 0"),
])
def test_validation_texts(kwargs, text):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs)
    assert str(e.value) == text


def test_greedy_with_several_returns_needs_the_environment_switch(monkeypatch):
    monkeypatch.delenv("TLLM_ALLOW_N_GREEDY_DECODING", raising=False)
    for greedy in ({"top_k": 1, "temperature": 1.0}, {"temperature": 0}, {}):
        with pytest.raises(ValueError, match="Greedy decoding in the LLM API does not allow multiple returns"):
            SamplingParams(n=2, **greedy)
    SamplingParams(n=2, temperature=1.0)                # sampling: fine
    monkeypatch.setenv("TLLM_ALLOW_N_GREEDY_DECODING", "1")
    assert SamplingParams(n=2, top_k=1).best_of == 2


def test_one_guide_per_request():
    with pytest.raises(ValueError, match=r"^Only one guide can be used for a request, but got 2\.$"):
        SamplingParams(guided_decoding=GuidedDecodingParams(regex="a", json_object=True))


def test_defaults_and_coercions():
    sp = SamplingParams(end_id=2, n=2, temperature=1.0, logprobs=True)
    assert sp.pad_id == 2 and sp.best_of == 2 and sp.logprobs == 1 and sp.max_tokens == 32
    assert SamplingParams(logprobs=0).logprobs == 0
    with pytest.raises(TypeError):
        SamplingParams(top_p_decay=0.5)                 # not implemented: refused, never ignored


class _Tok:
    eos_token_id, pad_token_id = 2, None

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False              # stop words are tokenized alone
        return [ord(c) for c in text]


def test_setup_fills_the_end_id_and_tokenizes_stop_words():
    sp = SamplingParams(stop=["ab"], stop_token_ids=[9], bad="c")._setup(_Tok())
    assert (sp.end_id, sp.pad_id) == (2, 2)
    assert sp._get_stop_words() == [[9], [97, 98]] and sp._get_bad_words() == [[99]]
    assert sp._get_stop_reasons_and_words() == [(9, [9]), ("ab", [97, 98])]


def _result(**kwargs) -> s.RequestOutput:
    sp = SamplingParams(end_id=2, temperature=1.0, **kwargs)
    return s.RequestOutput(1, [1, 5], sp, None, lambda rid: None)


def lp(token, value, rank=1):
    return {token: Logprob(value, rank)}


def test_streamed_results_accumulate_and_diff():
    r = _result(logprobs=1)
    r._handle(_Response(0, [10], [lp(10, -1.0)], cached_tokens=16))
    r._handle(_Response(0, [11, 12], [lp(11, -2.0), lp(12, -3.0)]))
    out = r.outputs[0]
    assert out.token_ids == [10, 11, 12] and out.token_ids_diff == [11, 12]
    assert [d for d in out.logprobs_diff] == [lp(11, -2.0), lp(12, -3.0)]   # new tokens' only (PR #8785)
    assert out.cumulative_logprob == -6.0 and r.cached_tokens == 16 and not r.finished


def test_end_token_is_returned_and_finishes_with_stop():
    r = _result(logprobs=1)
    r._handle(_Response(0, [10], [lp(10, -1.0)]))
    r._handle(_Response(0, [], [], finish="stop"))      # the CPU engine dropped the end token
    out = r.outputs[0]
    assert out.token_ids == [10, 2] and out.token_ids_diff == [2] and len(out.logprobs) == 2
    assert r.finished and out.finish_reason == "stop" and out.stop_reason is None


@pytest.mark.parametrize("include,tokens", [(False, [10]), (True, [10, 97, 98])])
def test_stop_words_are_stripped_unless_asked(include, tokens):
    r = _result(stop="ab", include_stop_str_in_output=include)
    r.sampling_params._setup(_Tok())
    r._handle(_Response(0, [10, 97], None))
    r._handle(_Response(0, [98], None, finish="stop"))
    out = r.outputs[0]
    assert out.token_ids == tokens and out.finish_reason == "stop" and out.stop_reason == "ab"


def test_with_two_sequences_only_the_final_response_sets_a_reason():
    r = _result(n=2)
    r._handle(_Response(0, [10], None))
    r._handle(_Response(1, [20], None))
    r._handle(_Response(0, [11], None, finish="length"))
    assert r.outputs[0].finish_reason is None and not r.finished
    assert r.outputs[1].token_ids_diff == [20]          # a sequence not in this response keeps its old diff
    r._handle(_Response(1, [21], None, finish="length"))
    assert r.finished and r.outputs[1].finish_reason == "length" and r.outputs[0].finish_reason is None


def test_cancelled_and_errors():
    r = _result()
    r._handle(_Response(0, [10], None, finish="cancelled"))
    assert r.finished and r.outputs[0].finish_reason == "cancelled"
    r = _result()
    with pytest.raises(RequestError, match="^boom$"):
        r._handle(_Response(0, [], None, error="boom"))


def test_async_iteration_ends_when_finished():
    async def run():
        r = s.RequestOutput(1, [1], SamplingParams(end_id=2, temperature=1.0), asyncio.get_running_loop(),
                            lambda rid: None)
        r._push(_Response(0, [7], None))
        r._push(_Response(0, [8], None, finish="length"))
        return [list(out.outputs[0].token_ids_diff) async for out in r]
    assert asyncio.run(run()) == [[7], [8]]


def test_llm_refuses_what_it_does_not_implement(default_model_dir):
    base = {"kv_cache_config": {"max_tokens": 4096}}
    with pytest.raises(TypeError, match="speculative_config"):
        s.LLM(str(default_model_dir), speculative_config={}, **base)
    with pytest.raises(TypeError, match="kv_cache_config.host_cache_size"):
        s.LLM(str(default_model_dir), kv_cache_config={"max_tokens": 4096, "host_cache_size": 1})
    with pytest.raises(ValueError, match="one engine process"):
        s.LLM(str(default_model_dir), tensor_parallel_size=2, **base)
    with pytest.raises(ValueError, match="kv_cache_config.max_tokens is required on CPU"):
        s.LLM(str(default_model_dir), kv_cache_config={"free_gpu_memory_fraction": 0.9})
    with pytest.raises(ValueError, match="local checkpoint directory"):
        s.LLM("meta-llama/Llama-2-70b-chat-hf", **base)


def test_cache_salt_ids_are_uint64_and_tell_salts_apart():
    """get_cache_salt_id (tensorrt_llm/inputs/utils.py): 8 bytes of a hash of the string."""
    ids = {s.get_cache_salt_id(text) for text in ("1", "2", "10", "", "é")}
    assert len(ids) == 5 and all(0 <= i < 1 << 64 for i in ids)
    assert s.get_cache_salt_id("1") == s.get_cache_salt_id("1")
    with pytest.raises(AttributeError):         # a string only, as upstream's `.encode`
        s.get_cache_salt_id(1)


def test_requests_share_cached_blocks_only_within_one_cache_salt(default_model_dir):
    """The stand-in's executor scopes its prefix cache by the request's salt: a repeated prompt
    reuses blocks under its own salt, none under another one or none at all."""
    llm = s.LLM(str(default_model_dir), kv_cache_config={"max_tokens": 4096, "tokens_per_block": 16})
    prompt = list(range(100, 164))          # four whole blocks

    async def cached(salt):
        result = llm.generate_async(prompt, SamplingParams(max_tokens=1, temperature=0), cache_salt=salt)
        async for _ in result:
            pass
        return result.cached_tokens

    async def run():
        return [await cached(salt) for salt in ("a", "a", "b", None, None, "b")]
    try:
        got = asyncio.run(run())
    finally:
        llm.shutdown()
    assert got[0] == 0 and got[1] >= 48, got          # the same salt reuses the prompt's blocks
    assert got[2] == 0 and got[3] == 0, got           # another salt, and the unsalted scope, do not
    assert got[4] >= 48 and got[5] >= 48, got         # each scope reuses its own
