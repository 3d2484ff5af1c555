"""Wire format: request validation (ranges, unknown and rejected fields, error paths), the error
envelope, chunk encoders against the pydantic response models, and the OpenAPI document."""
from __future__ import annotations

import json
import logging
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from frontend import errors
from frontend.errors import APIError
from frontend.http.openapi import build_openapi
from frontend.errors import validation_error_to_envelope
from frontend.openai.request_models import ChatCompletionRequest, CompletionRequest
from frontend.openai.message_models import NamedToolChoice
from frontend.openai.request_base import parse_request
from frontend.openai.response_models import (
    ChatCompletionChunk, ChatCompletionChunkChoice, ChatCompletionResponse, ChatCompletionChoice, ChatMessageOut,
    ChoiceLogprobs, CompletionChoice, CompletionChunk, CompletionLogprobs, CompletionResponse, DeltaFunctionCall,
    DeltaMessage, DeltaToolCall, ModelCard, ModelList, ResponseFunctionCall, ResponseToolCall, Usage,
)
from frontend.openai.sse import (SSE_DONE, ChatChunkEncoder, CompletionChunkEncoder, completion_logprobs, token_logprob,
                                 usage_dict)

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, json.dumps({"model": "m", "messages": MESSAGES, **fields}))


def completion(**fields) -> CompletionRequest:
    return parse_request(CompletionRequest, json.dumps({"model": "m", "prompt": "hi", **fields}))


def chat_error(**fields) -> APIError:
    with pytest.raises(APIError) as info:
        chat(**fields)
    assert info.value.status == 400 and info.value.type == "invalid_request_error"
    return info.value


def completion_error(**fields) -> APIError:
    with pytest.raises(APIError) as info:
        completion(**fields)
    assert info.value.status == 400
    return info.value


# ----------------------------------------------------------------------------------------------------
# Ranges: the edge is accepted, just past it is a 400 naming the field

CHAT_RANGES = [
    # field, accepted edges, rejected values just past them
    ("temperature", [0, 0.0, 2, 2.0], [-1e-9, 2.0000001]),
    ("top_p", [1e-9, 1], [0, -0.1, 1.0000001]),
    ("min_p", [0, 1], [-1e-9, 1.0000001]),
    ("top_k", [0, 999], [-1, 1000]),
    ("max_tokens", [0, 1_000_000], [-1, 1_000_001]),
    ("max_completion_tokens", [0, 1_000_000], [-1, 1_000_001]),
    ("n", [1, 4], [0, 5]),
    ("presence_penalty", [-2, 2], [-2.0000001, 2.0000001]),
    ("frequency_penalty", [-2, 2], [-2.0000001, 2.0000001]),
    ("repetition_penalty", [0.01, 5], [0.0099999, 5.0000001, 0]),
    ("seed", [-(2 ** 63), 2 ** 64 - 1, 0], [-(2 ** 63) - 1, 2 ** 64]),
    ("min_tokens", [0, 1_000_000], [-1, 1_000_001]),
]


@pytest.mark.parametrize("field,good,bad", CHAT_RANGES, ids=[r[0] for r in CHAT_RANGES])
def test_chat_ranges(field, good, bad):
    for value in good:
        assert getattr(chat(**{field: value}), field) == value
    for value in bad:
        err = chat_error(**{field: value})
        assert err.param == field, (value, err)
        assert field in err.message


def test_seed_bounds_are_exact_in_raw_json():
    # orjson would read these as floats (and -2**63-1 == -2**63 as a float); pydantic's parser must not
    for raw, ok in ((b"-9223372036854775808", True), (b"-9223372036854775809", False),
                    (b"18446744073709551615", True), (b"18446744073709551616", False)):
        body = b'{"model":"m","messages":[{"role":"user","content":"x"}],"seed":' + raw + b"}"
        if ok:
            assert parse_request(ChatCompletionRequest, body).seed == int(raw)
        else:
            with pytest.raises(APIError) as info:
                parse_request(ChatCompletionRequest, body)
            assert info.value.param == "seed"
            assert raw.decode().lstrip("-")[:5] in info.value.message


def test_top_logprobs_range_with_logprobs():
    assert chat(logprobs=True, top_logprobs=0).top_logprobs == 0
    assert chat(logprobs=True, top_logprobs=20).top_logprobs == 20
    for value in (-1, 21):
        assert chat_error(logprobs=True, top_logprobs=value).param == "top_logprobs"


def test_top_logprobs_requires_logprobs():
    for extra in ({}, {"logprobs": False}):
        err = chat_error(top_logprobs=2, **extra)
        assert err.param == "top_logprobs" and "logprobs" in err.message


@pytest.mark.parametrize("field,good,bad", [
    ("max_tokens", [1, 1_000_000], [0, 1_000_001]),  # the seed: exclusiveMinimum 0 on completions
    ("logprobs", [0, 5], [-1, 6]),
    ("temperature", [0, 2], [-0.01, 2.01]),
    ("n", [1, 4], [0, 5]),
])
def test_completion_ranges(field, good, bad):
    for value in good:
        assert getattr(completion(**{field: value}), field) == value
    for value in bad:
        assert completion_error(**{field: value}).param == field


def test_defaults_follow_the_seed():
    r = chat()
    assert (r.stream, r.temperature, r.top_p, r.min_p, r.top_k, r.n) == (False, 1.0, 1.0, 0.0, 0, 1)
    assert (r.presence_penalty, r.frequency_penalty, r.repetition_penalty) == (0.0, 0.0, 1.0)
    assert r.max_tokens is None and r.max_new_tokens is None and r.parallel_tool_calls is True
    assert r.stop_strings == [] and r.stream_options is None and r.tool_choice_mode == "none"
    opts = chat(stream=True, stream_options={}).stream_options
    assert opts.include_usage is True and opts.continuous_usage_stats is False


def test_null_means_default():
    r = chat(temperature=None, top_p=None, n=None, stream=None, parallel_tool_calls=None, max_tokens=None)
    assert (r.temperature, r.top_p, r.n, r.stream, r.parallel_tool_calls, r.max_tokens) == (1.0, 1.0, 1, False, True,
                                                                                             None)


def test_types_are_strict():
    assert chat_error(temperature=True).param == "temperature"
    assert chat_error(temperature="0.5").param == "temperature"
    assert chat_error(stream=1).param == "stream"
    assert chat_error(n="2").param == "n"
    assert chat(n=2.0).n == 2 and chat(temperature=1).temperature == 1.0  # JSON Schema: 2.0 is an integer
    assert chat_error(n=2.5).param == "n"


def test_max_completion_tokens_wins():
    assert chat(max_tokens=10, max_completion_tokens=20).max_new_tokens == 20
    assert chat(max_tokens=10).max_new_tokens == 10
    assert chat_error(max_tokens=5, min_tokens=6).param == "min_tokens"


# ----------------------------------------------------------------------------------------------------
# stop, logit_bias, stream_options

def test_stop():
    assert chat(stop="x").stop_strings == ["x"]
    assert chat(stop=[str(i) for i in range(16)]).stop_strings == [str(i) for i in range(16)]
    assert chat(stop=[]).stop_strings == []
    assert chat_error(stop=[str(i) for i in range(17)]).param == "stop"
    assert chat_error(stop=["a", "b", "c", ""]).param == "stop[3]"
    assert chat_error(stop="").param == "stop"
    assert chat_error(stop=["a", 5]).param == "stop[1]"
    assert chat_error(stop=5).param == "stop"


def test_logit_bias():
    assert chat(logit_bias={"50256": -100, "1": 100, "2": 0.5}).logit_bias == {50256: -100.0, 1: 100.0, 2: 0.5}
    for key in ("abc", "-1", "1.5", ""):
        err = chat_error(logit_bias={"5": 1, key: 1})
        assert err.param == f"logit_bias.{key}", err
        assert "token id" in err.message
    assert chat_error(logit_bias={"5": 100.5}).param == "logit_bias.5"
    assert chat_error(logit_bias={"7": -100.5}).param == "logit_bias.7"
    assert chat_error(logit_bias={"7": "x"}).param == "logit_bias.7"


def test_stream_options_need_stream():
    err = chat_error(stream_options={"include_usage": True})
    assert err.param == "stream_options" and "stream" in err.message
    assert chat_error(stream=False, stream_options={}).param == "stream_options"
    assert completion_error(stream_options={"include_usage": False}).param == "stream_options"
    r = chat(stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert r.stream_options.include_usage and r.stream_options.continuous_usage_stats
    assert chat(stream=True, stream_options=None).stream_options is None


# ----------------------------------------------------------------------------------------------------
# Messages and content parts

def test_content_parts_text():
    r = chat(messages=[{"role": "system", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                       {"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert r.messages[0].text() == "ab" and r.messages[1].text() == "hello" and r.messages[0].role == "system"


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
])
def test_image_and_audio_parts_parse_but_are_unsupported(part):
    err = chat_error(messages=[{"role": "system", "content": "s"},
                               {"role": "user", "content": [{"type": "text", "text": "look"}, part]}])
    assert err.param == "messages[1].content[1]" and err.code == "unsupported_value"
    assert part["type"] in err.message


def test_malformed_parts_are_named():
    bad_image = {"type": "image_url", "image_url": {"detail": "auto"}}
    assert chat_error(messages=[{"role": "user", "content": [bad_image]}]).param == \
        "messages[0].content[0].image_url.url"
    assert chat_error(messages=[{"role": "user", "content": [{"type": "video"}]}]).param == \
        "messages[0].content[0].type"
    assert chat_error(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]).param == \
        "messages[0].content[0].text"
    system_image = {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert chat_error(messages=[system_image]).param == "messages[0].content[0].type"
    assert chat_error(messages=[{"role": "user", "content": 5}]).param == "messages[0].content"
    assert chat_error(messages=[{"role": "user"}]).param == "messages[0].content"


def test_message_rules():
    assert chat_error(messages=[]).param == "messages"
    err = chat_error(messages=[{"role": "function", "content": "x"}])
    assert err.param == "messages[0].role" and "function" in err.message
    assert chat_error(messages=[{"content": "x"}]).param == "messages[0].role"
    assert chat_error(messages=["hi"]).param == "messages[0].role"
    # tool messages need tool_call_id; assistant messages need content unless they carry tool calls
    assert chat_error(messages=[{"role": "tool", "content": "x"}]).param == "messages[0].tool_call_id"
    assert chat_error(messages=[{"role": "assistant"}]).param == "messages[0].content"
    assert chat_error(messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": None,
                                                                    "tool_calls": []}]).param == "messages[1].content"
    r = chat(messages=[
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ])
    assert r.messages[0].role == "system"  # developer is read as system
    assert r.messages[2].tool_calls[0].function.arguments == '{"city":"Paris"}'
    assert r.messages[3].tool_call_id == "call_1"
    # order rules are not enforced here
    assert chat(messages=[{"role": "assistant", "content": "first"}]).messages[0].role == "assistant"


# ----------------------------------------------------------------------------------------------------
# Unknown and rejected fields

def test_unknown_fields_are_accepted_and_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="frontend.request_models"):
        r = chat(foo=1, bar=None, messages=[{"role": "user", "content": "x", "weird": {"a": 1}, "nothing": None}],
                 response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {}, "extra": 1}})
    assert sorted(r.ignored_fields) == ["foo", "messages[0].weird", "response_format.json_schema.extra"]
    assert "foo" in caplog.text and "messages[0].weird" in caplog.text
    assert chat().ignored_fields == []
    # store/metadata do not change this answer: ignored, not rejected
    assert sorted(chat(store=True, metadata={"k": "v"}).ignored_fields) == ["metadata", "store"]


@pytest.mark.parametrize("field,value", [
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]), ("prediction", {"type": "content", "content": "x"}),
    ("web_search_options", {}), ("service_tier", "flex"), ("service_tier", "priority"), ("verbosity", "low"),
    ("echo", True), ("guided_json", {"type": "object"}), ("guided_regex", "a+"), ("guided_choice", ["a"]),
    ("structured_outputs", {"json": {}}), ("use_beam_search", True),
    ("include_stop_str_in_output", True), ("skip_special_tokens", False), ("bad_words", ["x"]),
    ("allowed_token_ids", [1]), ("chat_template", "{{x}}"), ("add_generation_prompt", False),
    ("continue_final_message", True), ("truncate_prompt_tokens", 10),
])
def test_rejected_fields_are_named(field, value):
    err = chat_error(**{field: value})
    assert err.param == field and err.code == "unsupported_parameter", err


@pytest.mark.parametrize("field,value", [
    ("functions", []), ("function_call", "none"), ("modalities", ["text"]), ("service_tier", "auto"),
    ("service_tier", "default"), ("verbosity", "medium"), ("echo", False),
    ("skip_special_tokens", True), ("audio", None), ("prediction", None),
])
def test_rejected_fields_with_no_op_values_pass_silently(field, value):
    assert chat(**{field: value}).ignored_fields == []


def test_rejected_field_names_are_not_model_fields():
    for cls in (ChatCompletionRequest, CompletionRequest):
        assert not set(cls._rejected) & set(cls.model_fields)


# ----------------------------------------------------------------------------------------------------
# Tools, response_format

TOOL = {"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}}


def test_tool_choice_forms():
    assert chat(tools=[TOOL]).tool_choice_mode == "auto"
    for mode in ("none", "auto", "required"):
        assert chat(tools=[TOOL], tool_choice=mode).tool_choice_mode == mode
    r = chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get"}})
    assert r.tool_choice_mode == "named" and r.named_tool.function.name == "get"
    # the seed's ChatTools form (a whole tool definition) is accepted too
    r = chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get", "parameters": {}}})
    assert isinstance(r.tool_choice, NamedToolChoice) and r.ignored_fields == []
    assert chat(tools=[]).tools is None
    assert chat_error(tool_choice="sometimes").param == "tool_choice"
    assert chat_error(tool_choice=5).param == "tool_choice"
    assert chat_error(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "other"}}).param == \
        "tool_choice.function.name"
    assert chat_error(tool_choice="required").param == "tool_choice"
    assert chat_error(tools=[{"type": "web_search", "function": {"name": "x"}}]).param == "tools[0].type"
    assert chat_error(tools=[{"type": "function"}]).param == "tools[0].function"


def test_response_format():
    assert chat(response_format={"type": "text"}).response_format.type == "text"
    assert chat(response_format={"type": "json_object"}).response_format.type == "json_object"
    r = chat(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"},
                                                                     "strict": True, "description": "d"}})
    assert r.response_format.json_schema.schema_ == {"type": "object"} and r.response_format.json_schema.strict
    assert chat(response_format={"type": "regex", "regex": "[a-z]+"}).response_format.regex == "[a-z]+"
    assert chat_error(response_format={"type": "json_schema"}).param == "response_format.json_schema"
    assert chat_error(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": 5}}).param == \
        "response_format.json_schema.schema"
    assert chat_error(response_format={"type": "json_schema", "json_schema": {"schema": {}}}).param == \
        "response_format.json_schema.name"
    assert chat_error(response_format={"type": "regex"}).param == "response_format.regex"
    assert chat_error(response_format={"type": "xml"}).param == "response_format.type"


def test_reasoning_fields():
    r = chat(reasoning_effort="none", reasoning={"effort": "high", "enabled": True},
             chat_template_kwargs={"enable_thinking": False}, prompt_cache_key="k")
    assert r.reasoning_effort == "none" and r.reasoning.effort == "high" and r.prompt_cache_key == "k"
    assert chat_error(reasoning_effort="max").param == "reasoning_effort"
    assert chat_error(chat_template_kwargs=[1]).param == "chat_template_kwargs"


# ----------------------------------------------------------------------------------------------------
# Completions

def test_completion_prompt_forms():
    assert completion(prompt="x").prompt == "x"
    assert completion(prompt=["one string"]).prompt == "one string"
    assert completion(prompt=[1, 2, 3]).prompt == [1, 2, 3]
    assert completion(prompt=[[1, 2]]).prompt == [1, 2]
    assert completion_error(prompt=["a", "b"]).param == "prompt"
    assert completion_error(prompt=[]).param == "prompt"
    assert completion_error(prompt=[1, -2]).param == "prompt[1]"
    assert completion_error(prompt=[1, "a"]).param == "prompt[1]"
    assert completion_error(prompt=5).param == "prompt"
    with pytest.raises(APIError) as info:
        parse_request(CompletionRequest, b'{"model":"m"}')
    assert info.value.param == "prompt" and info.value.code == "missing_required_parameter"


def test_completion_unsupported():
    assert completion_error(suffix="tail").param == "suffix"
    assert completion(suffix=None).prompt == "hi"
    assert completion(best_of=1).best_of == 1
    assert completion_error(best_of=2).param == "best_of"
    assert completion_error(data={"image": ["data:image/png;base64,AAAA"]}).param == "data.image"
    assert completion(data={"image": []}).data.image == []
    r = completion(echo=True, logprobs=3, stop_token_ids=[2, 3], return_tokens_as_token_ids=True)
    assert r.echo and r.logprobs == 3 and r.stop_token_ids == [2, 3]


# ----------------------------------------------------------------------------------------------------
# Body-level errors and the envelope

def test_body_errors():
    for body, needle in ((b"{bad", "not valid JSON"), (b"[1]", "JSON object"), (b'"x"', "JSON object"),
                         (b"", "not valid JSON")):
        with pytest.raises(APIError) as info:
            parse_request(ChatCompletionRequest, body)
        assert info.value.param is None and needle in info.value.message
    with pytest.raises(APIError) as info:
        parse_request(ChatCompletionRequest, b"{}")
    assert info.value.param == "model" and "messages" in info.value.message  # names the others too


def test_validation_error_to_envelope_directly():
    from pydantic import ValidationError
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"},
                                                                         {"role": "user", "content": [5]}]})
    body = validation_error_to_envelope(info.value)
    assert body.param == "messages[1].content[0].type" and body.type == "invalid_request_error"


def test_error_helpers():
    assert errors.error_body("m", param="p") == {"error": {"message": "m", "type": "invalid_request_error",
                                                           "param": "p", "code": None}}
    cases = [(errors.bad_request("x", "temperature"), 400, "invalid_request_error"),
             (errors.unauthorized(), 401, "authentication_error"),
             (errors.not_found_model("nope"), 404, "not_found_error"),
             (errors.payload_too_large(1024), 413, "invalid_request_error"),
             (errors.queue_full(2.4), 429, "rate_limit_error"),
             (errors.internal(), 500, "server_error")]
    for err, status, kind in cases:
        body = orjson.loads(err.to_json())
        assert err.status == status and set(body) == {"error"} and body["error"]["type"] == kind
        assert set(body["error"]) == {"message", "type", "param", "code"}
    assert errors.queue_full(2.4).headers["Retry-After"] == "2"
    assert errors.unauthorized().headers["WWW-Authenticate"] == "Bearer"
    assert "nope" in errors.not_found_model("nope").message and errors.not_found_model("x").param == "model"


def test_sse_error_event():
    event = errors.sse_error_event(errors.bad_request("bad", "stop"))
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:])["error"]["param"] == "stop"
    hidden = orjson.loads(errors.sse_error_event(RuntimeError("secret detail"))[6:])
    assert hidden["error"]["type"] == "server_error" and "secret" not in hidden["error"]["message"]


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(
    st.sampled_from(["model", "messages", "temperature", "top_p", "stop", "n", "seed", "logit_bias", "tools",
                     "tool_choice", "response_format", "stream", "stream_options", "logprobs", "top_logprobs",
                     "max_tokens", "functions", "unknown"]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8)))
def test_any_body_gives_a_request_or_a_400(body):
    try:
        parse_request(ChatCompletionRequest, json.dumps(body).encode())
    except APIError as e:
        assert e.status == 400 and e.message
        assert e.param is None or e.param.split(".")[0].split("[")[0] in body or e.param in ("model", "messages")


# ----------------------------------------------------------------------------------------------------
# Responses: encoders give the same bytes as the pydantic models

def sse(model) -> bytes:
    return b"data: " + model.model_dump_json().encode() + b"\n\n"


def test_chat_chunk_encoder_matches_models():
    ident, name, created = 'chatcmpl-"%s"', "llama/70%b ü", 1700000000
    enc = ChatChunkEncoder(ident, name, created)

    def chunk(delta=None, logprobs=None, finish=None, usage=None, index=0, choices=True):
        return ChatCompletionChunk(
            id=ident, created=created, model=name, usage=usage,
            choices=[ChatCompletionChunkChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish)]
            if choices else [])

    lp = {"content": [token_logprob(" hé", -0.25, top=[(" hé", -0.25, None), (" ho", -1.5, b"\xe2")])]}
    usage = usage_dict(10, 3, cached_tokens=4)
    tool = {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                            "function": {"name": "get", "arguments": ""}}]}
    assert enc.delta({"role": "assistant", "content": ""}) == sse(chunk(DeltaMessage(role="assistant", content="")))
    assert enc.content("a \"q\" \n ✓", index=1) == sse(chunk(DeltaMessage(content="a \"q\" \n ✓"), index=1))
    assert enc.content(" hé", logprobs=lp) == sse(chunk(DeltaMessage(content=" hé"),
                                                        ChoiceLogprobs.model_validate(lp)))
    assert enc.content("x", finish_reason="length", usage=usage) == \
        sse(chunk(DeltaMessage(content="x"), finish="length", usage=Usage.model_validate(usage)))
    assert enc.delta(tool) == sse(chunk(DeltaMessage(tool_calls=[DeltaToolCall(
        index=0, id="call_1", type="function", function=DeltaFunctionCall(name="get", arguments=""))])))
    assert enc.delta({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}) == sse(chunk(DeltaMessage(
        tool_calls=[DeltaToolCall(index=0, function=DeltaFunctionCall(arguments="{}"))])))
    assert enc.finish("tool_calls") == sse(chunk(DeltaMessage(), finish="tool_calls"))
    assert enc.usage(usage) == sse(chunk(usage=Usage.model_validate(usage), choices=False))
    body = orjson.loads(enc.usage(usage)[6:])
    assert body["choices"] == [] and body["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}


def test_usage_only_where_given_and_the_done_event():
    enc = ChatChunkEncoder("id", "m", 1)
    for event in (enc.delta({"role": "assistant", "content": ""}), enc.content("x"), enc.finish("stop")):
        body = orjson.loads(event[6:])
        assert "usage" not in body
        assert body["choices"][0]["logprobs"] is None and "finish_reason" in body["choices"][0]
    assert orjson.loads(enc.usage(usage_dict(1, 2))[6:])["usage"]["total_tokens"] == 3
    assert orjson.loads(enc.content("x", usage=usage_dict(1, 2))[6:])["usage"]["total_tokens"] == 3
    assert SSE_DONE == b"data: [DONE]\n\n"


def test_completion_chunk_encoder_matches_models():
    enc = CompletionChunkEncoder("cmpl-1", "m", 5)
    lp = completion_logprobs([" a"], [-float("inf")], [{" a": -0.1, " b": float("nan")}], [0])
    assert lp["token_logprobs"] == [-9999.0] and lp["top_logprobs"][0][" b"] == -9999.0
    ref = CompletionChunk(id="cmpl-1", created=5, model="m", choices=[
        CompletionChoice(index=0, text=" a", logprobs=CompletionLogprobs.model_validate(lp))])
    assert enc.text(" a", logprobs=lp) == sse(ref)
    assert enc.finish("stop") == sse(CompletionChunk(id="cmpl-1", created=5, model="m", choices=[
        CompletionChoice(index=0, text="", finish_reason="stop")]))
    assert orjson.loads(enc.usage(usage_dict(1, 1))[6:])["choices"] == []


def test_logprob_floor():
    entry = token_logprob("x", -math.inf, top=[("y", math.nan, None)])
    assert entry["logprob"] == -9999.0 and entry["top_logprobs"][0]["logprob"] == -9999.0
    assert entry["bytes"] == [120]


def test_full_responses_have_openai_shape():
    tool_call = ResponseToolCall(id="call_1", function=ResponseFunctionCall(name="get", arguments="{}"))
    resp = orjson.loads(ChatCompletionResponse(
        id="chatcmpl-1", created=1, model="m", usage=Usage.model_validate(usage_dict(3, 4)),
        choices=[ChatCompletionChoice(index=0, message=ChatMessageOut(content=None, tool_calls=[tool_call]),
                                      finish_reason="tool_calls")]).model_dump_json())
    assert resp["object"] == "chat.completion" and "system_fingerprint" not in resp
    choice = resp["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{}"}}]}
    assert choice["logprobs"] is None and choice["finish_reason"] == "tool_calls"
    assert resp["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    plain = orjson.loads(ChatMessageOut(content="hi").model_dump_json())
    assert plain == {"role": "assistant", "content": "hi"}
    text = orjson.loads(CompletionResponse(id="cmpl-1", created=1, model="m", usage=Usage(
        prompt_tokens=1, completion_tokens=1, total_tokens=2), choices=[CompletionChoice(
            index=0, text="x", finish_reason="length")]).model_dump_json())
    assert text["object"] == "text_completion" and text["choices"][0]["logprobs"] is None
    models = orjson.loads(ModelList(data=[ModelCard(id="m", created=1, owned_by="llama-triton", root="m")])
                          .model_dump_json())
    assert models == {"object": "list", "data": [{"id": "m", "object": "model", "created": 1,
                                                  "owned_by": "llama-triton", "root": "m", "parent": None}]}


# ----------------------------------------------------------------------------------------------------
# OpenAPI

def _refs(node, out):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                out.append(value)
            else:
                _refs(value, out)
    elif isinstance(node, list):
        for item in node:
            _refs(item, out)
    return out


def _resolve(doc, ref):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.parametrize("auth", [True, False])
def test_openapi_document(auth):
    doc = json.loads(json.dumps(build_openapi(auth=auth)))  # plain JSON all the way down
    assert doc["openapi"] == "3.1.0"
    refs = _refs(doc, [])
    assert refs and all(_resolve(doc, r) for r in refs)
    assert "$defs" not in json.dumps(doc)
    for prefix in ("/v1", "/v1/openai"):
        assert set(doc["paths"][f"{prefix}/chat/completions"]) == {"post"}
        assert set(doc["paths"][f"{prefix}/completions"]) == {"post"}
        assert set(doc["paths"][f"{prefix}/models"]) == {"get"}
    assert {"/health", "/metrics"} <= set(doc["paths"])
    op_ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))
    post = doc["paths"]["/v1/chat/completions"]["post"]
    assert _resolve(doc, post["requestBody"]["content"]["application/json"]["schema"]["$ref"])["title"] == \
        "ChatCompletionRequest"
    for status in ("400", "404", "500"):
        assert post["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    schemas = doc["components"]["schemas"]
    assert {"ChatCompletionChunk", "CompletionChunk", "ModelList", "ErrorResponse"} <= set(schemas)
    temperature = schemas["ChatCompletionRequest"]["properties"]["temperature"]
    assert {"type": "number", "minimum": 0.0, "maximum": 2.0} in temperature["anyOf"]
    if auth:
        assert doc["components"]["securitySchemes"]["HTTPBearer"] == {"type": "http", "scheme": "bearer"}
        assert post["security"] == [{"HTTPBearer": []}] and "401" in post["responses"]
        assert doc["paths"]["/health"]["get"]["security"] == []
    else:
        assert "securitySchemes" not in doc["components"] and "401" not in post["responses"]
