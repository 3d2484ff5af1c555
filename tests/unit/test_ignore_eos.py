"""`ignore_eos`: the request field, its OpenAPI entry, and its decoder tensors (end_id -1) in both modes."""
from __future__ import annotations

import json

import pytest

from frontend.errors import APIError
from frontend.http.openapi import build_openapi
from frontend.openai.request_models import ChatCompletionRequest, CompletionRequest
from frontend.openai.request_base import parse_request
from llama_triton.backend.request_decoding import parse_request as parse_tensors
from llama_triton.trtllm.request_encoding import DecodeSettings, decoder_arrays
from llama_triton.trtllm.tensor_contract import decoder_io

BODIES = {
    ChatCompletionRequest: {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    CompletionRequest: {"model": "m", "prompt": "hi"},
}
MODES = {mode: frozenset(t.name for t in decoder_io(mode)[0]) for mode in ("cpu", "gpu")}


@pytest.mark.parametrize("cls", list(BODIES))
def test_ignore_eos_is_an_accepted_bool_defaulting_to_false(cls):
    def parse(**fields):
        return parse_request(cls, json.dumps({**BODIES[cls], **fields}))
    assert parse().ignore_eos is False
    assert parse(ignore_eos=None).ignore_eos is False          # null == absent
    assert parse(ignore_eos=False).ignore_eos is False
    r = parse(ignore_eos=True)
    assert r.ignore_eos is True and r.ignored_fields == []      # known: neither rejected nor ignored


@pytest.mark.parametrize("cls", list(BODIES))
@pytest.mark.parametrize("value", ["yes", "true", 1, 0, [True], {"on": True}])
def test_a_non_bool_ignore_eos_is_a_400_naming_it(cls, value):
    with pytest.raises(APIError) as info:
        parse_request(cls, json.dumps({**BODIES[cls], "ignore_eos": value}))
    assert info.value.status == 400 and info.value.param == "ignore_eos", info.value


def test_the_openapi_document_describes_ignore_eos():
    schemas = build_openapi(auth=False)["components"]["schemas"]
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        prop = schemas[name]["properties"]["ignore_eos"]
        assert prop["default"] is False and {"type": "boolean"} in prop["anyOf"], prop
        assert "max_tokens" in prop["description"]


@pytest.mark.parametrize("mode", MODES)
def test_ignore_eos_sends_end_id_minus_one_and_keeps_pad_id(mode):
    s = DecodeSettings(prompt_ids=[1, 5], max_new_tokens=8, end_id=2, ignore_eos=True, min_tokens=8,
                       stop_token_ids=[13])
    a = decoder_arrays(s, MODES[mode])
    assert (a["end_id"].item(), a["pad_id"].item()) == (-1, 2)
    # TensorRT-LLM masks logits[end_id] for min_tokens, logits[-1] here: an explicit 0 with ignore_eos
    assert a["min_tokens"].item() == 0
    assert "stop_words_list" in a                              # the request's own stop ids still stop
    plain = decoder_arrays(DecodeSettings(prompt_ids=[1, 5], max_new_tokens=8, end_id=2, min_tokens=8), MODES[mode])
    assert (plain["end_id"].item(), plain["pad_id"].item(), plain["min_tokens"].item()) == (2, 2, 8)


@pytest.mark.parametrize("trtllm", [False, True])
def test_the_decoder_reads_end_id_minus_one_as_no_end_token(trtllm):
    a = decoder_arrays(DecodeSettings(prompt_ids=[1, 5], max_new_tokens=8, end_id=2, ignore_eos=True),
                       MODES["gpu" if trtllm else "cpu"])
    req, _ = parse_tensors(lambda name: a.get(name), "r", trtllm=trtllm)
    assert req.params.end_id is None and req.params.min_tokens == 0
