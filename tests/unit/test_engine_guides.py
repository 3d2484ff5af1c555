"""Every guide kind the frontend sends compiles on the engine's xgrammar and means what we mean there.

Issue 22 item 4. TensorRT-LLM 1.2.1 compiles guides with xgrammar 0.1.32 on its executor thread:
a guide it rejects fails every active request. Each case builds the guide the way the frontend
does (frontend/openai/structured.py, frontend/openai/tools.py: the same job the compile worker runs), compiles
it with `tests.engine_guides.engine_compile` (the engine's dispatch and version), and runs that
version's matcher over outputs valid under the schema (accepted) and invalid ones (refused).
Streamed and non-streamed requests send the same guide, so one case covers both.
"""
from __future__ import annotations

import asyncio
import json

import pytest

from frontend import errors
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.request_base import parse_request
from frontend.openai.structured import GuideSpec, StructuredOutputs, checked_schema, response_format_guide
from frontend.openai.tools import ToolPlan
from llama_triton.text.compile_worker import run_job
from tests.engine_guides import engine_accepts, engine_compiler

USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "integer", "minimum": -12, "maximum": 12}},
    "required": ["tz"], "additionalProperties": False}}}


def request(**kw) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {"model": "m", "messages": USER, **kw})


def sent(spec: GuideSpec) -> tuple[str, str]:
    """What the frontend sends for `spec`: the compile worker's job, run here."""
    answer = run_job(engine_compiler(), spec.job(), lambda msg: None)
    assert "ok" in answer, answer
    guide_type, guide = answer["ok"]
    # never a form the engine compiles with free whitespace (json: builtin grammar; json_schema: any_whitespace)
    assert guide_type in ("ebnf_grammar", "regex"), guide_type
    return guide_type, guide


def schema_spec(schema: dict) -> GuideSpec:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    return response_format_guide(request(response_format=rf).response_format)


def assert_means(spec: GuideSpec, good: list[str], bad: list[str]) -> None:
    guide_type, guide = sent(spec)
    for text in good:
        assert engine_accepts(guide_type, guide, text), f"the engine refuses valid {text!r}"
    for text in bad:
        assert not engine_accepts(guide_type, guide, text), f"the engine accepts invalid {text!r}"


def test_json_object_is_an_object_without_free_whitespace():
    spec = response_format_guide(request(response_format={"type": "json_object"}).response_format)
    assert_means(spec, ['{"a": [1, 2.5, {"b": null}], "c": "x"}', "{}"],
                 ["[1, 2]", '"text"', '{ "a": 1}', '{"a":1}', '{"a": 1}\n', '{"a":  1}'])


SCHEMAS = [
    ("nullable", {"type": "object", "properties": {"s": {"type": ["string", "null"]}}, "required": ["s"],
                  "additionalProperties": False},
     ['{"s": null}', '{"s": "x"}'], ['{"s": 1}', "{}", '{"s": null, "t": 1}']),
    ("integer bounds", {"type": "integer", "minimum": -3, "maximum": 12}, ["-3", "0", "12"], ["-4", "13", "1.5"]),
    ("exclusive and fractional integer bounds",
     {"type": "integer", "exclusiveMinimum": 0, "maximum": 9.5}, ["1", "9"], ["0", "10", "-1"]),
    ("string lengths", {"type": "string", "minLength": 2, "maxLength": 4}, ['"ab"', '"abcd"'], ['"a"', '"abcde"']),
    ("array sizes", {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 2},
     ["[1]", "[1, 2]"], ["[]", "[1, 2, 3]", "[1,2]"]),
    ("$ref", {"$defs": {"c": {"type": "string", "enum": ["red", "blue"]}}, "type": "object",
              "properties": {"c": {"$ref": "#/$defs/c"}}, "required": ["c"], "additionalProperties": False},
     ['{"c": "red"}'], ['{"c": "green"}', "{}"]),
    ("anyOf", {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 1}]}, ["7", '"a"'], ['"ab"', "true"]),
    ("pattern", {"type": "string", "pattern": "^[a-c]{2}$"}, ['"ab"'], ['"ad"', '"abc"']),
    ("format", {"type": "string", "format": "date"}, ['"2024-01-31"'], ['"yesterday"']),
    ("enum with type", {"type": "string", "enum": ["a", "b"]}, ['"a"'], ['"c"']),
]


@pytest.mark.parametrize("name,schema,good,bad", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_json_schema_means_the_schema_on_the_engine(name, schema, good, bad):
    assert_means(schema_spec(schema), good, bad)


def test_regex_goes_as_a_regex():
    spec = response_format_guide(request(response_format={"type": "regex", "regex": r"(cat|dog)-[0-9]{2}"}).response_format)
    assert sent(spec) == ("regex", r"(cat|dog)-[0-9]{2}")
    assert_means(spec, ["cat-12"], ["cat-1", "cow-12"])


CALL = '{"name": "get_time", "arguments": {"tz": -12}}'


@pytest.mark.parametrize("parallel", [True, False])
def test_tools_required(parallel):
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice="required",
                                         parallel_tool_calls=parallel), False)
    good = [CALL, '{"name": "get_weather", "arguments": {"city": "Rome"}}'] + ([f"[{CALL}, {CALL}]"] if parallel else [])
    assert_means(plan.guide(), good, ["[]", "hello", '{"name": "get_time", "arguments": {"tz": 13}}',
                                      '{"name":"get_time","arguments":{"tz":1}}'] + ([] if parallel else [f"[{CALL}]"]))


def test_tools_auto():
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME]), False)
    assert_means(plan.guide(), [CALL, "Plain text, with {braces}.", "  \nleading whitespace"],
                 ['{"not": "a call"}', ' {"name": "get_time", "arguments": {"tz": 1}}', "[1]"])


def test_tools_named_arguments_only_and_native():
    named = {"type": "function", "function": {"name": "get_weather"}}
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice=named), False)
    assert_means(plan.guide(), ['{"city": "Rome"}'], ['{"city": "Oslo"}', '{"tz": 1}'])
    native = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice=named), True)
    assert_means(native.guide(), ['{"name": "get_weather", "parameters": {"city": "Rome"}}'],
                 ['{"name": "get_time", "parameters": {"tz": 1}}'])


def test_reasoning_prefix():
    spec = schema_spec({"type": "integer", "minimum": 0, "maximum": 9})
    assert_means(spec.after_reasoning("inside"), ["let me think < </thin </think>\n\n5", "</think>5"],
                 ["5", "x</think>\n\n\n5", "x</think>55"])
    assert_means(spec.after_reasoning("optional"), ["5", "<think>hmm</think>\n5"], ["hmm</think>5", "<think>5"])
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME]), False)
    assert_means(plan.guide().after_reasoning("optional"), [CALL, f"<think>a call?</think>\n{CALL}", "text"], [])


@pytest.mark.parametrize("schema,keyword", [
    ({"type": "number", "minimum": 1.5}, "minimum"),        # 0.1.32 accepts 1x5 and 1.4
    ({"type": "number", "maximum": 10}, "maximum"),         # accepts 10.5
    ({"type": "number", "exclusiveMinimum": 0}, "exclusiveMinimum"),
    ({"type": "integer", "multipleOf": 2}, "multipleOf"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "string", "format": "color"}, "format"),
    ({"oneOf": [{"type": "integer"}, {"type": "integer", "minimum": 1}]}, "oneOf"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a", "maxLength": 1}},
      "$defs": {"a": {"type": "string"}}}, "maxLength"),
    ({"not": {"type": "null"}}, "not"),
    ({"minimum": 1}, "minimum"),                            # no type: xgrammar takes any value
])
def test_keywords_the_engine_would_not_enforce_are_a_400_naming_them(schema, keyword):
    with pytest.raises(errors.APIError) as e:
        schema_spec(schema)
    assert e.value.status == 400 and e.value.param == "response_format"
    assert f"'{keyword}'" in e.value.message or f"/{keyword})" in e.value.message, e.value.message


def test_the_same_keywords_in_tool_parameters_name_the_tool():
    bad = {"type": "function", "function": {"name": "bad", "parameters": {
        "type": "object", "properties": {"x": {"type": "number", "minimum": 0.5}}}}}
    with pytest.raises(errors.APIError) as e:
        ToolPlan.from_request(request(tools=[WEATHER, bad], tool_choice="required"), False).guide()
    assert e.value.param == "tools[1].function.parameters" and "minimum" in e.value.message


def test_what_the_engine_does_with_json_and_json_schema_as_such():
    """Why JSON never goes as `json` / `json_schema`: the engine compiles both with free whitespace
    (and `json` allows arrays), so a model can stall in whitespace on a GPU."""
    assert engine_accepts("json", None, "[1]")
    assert engine_accepts("json", None, '{' + " " * 50 + '"a": 1}')
    assert engine_accepts("json_schema", '{"type": "object", "properties": {"a": {"type": "integer"}}}',
                          '{' + "\n" * 50 + '"a": 1}')


def test_through_the_compile_pool(default_tokenizer):
    """The same through the frontend's worker processes (StructuredOutputs.resolve)."""
    s = StructuredOutputs(default_tokenizer.hf, default_tokenizer.vocab_size, workers=1, compile_timeout_s=60)

    async def main():
        try:
            got = await s.resolve(schema_spec({"type": "integer", "exclusiveMaximum": 3}))
            assert got[0] == "ebnf_grammar"
            assert engine_accepts(*got, "2") and not engine_accepts(*got, "3")
            with pytest.raises(errors.APIError) as e:
                await s.resolve(response_format_guide(request(response_format={"type": "regex",
                                                                               "regex": "(a"}).response_format))
            assert e.value.status == 400 and e.value.param == "response_format"
        finally:
            await s.aclose()

    asyncio.run(main())


def test_schema_size_cap():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                            for i in range(1000)}}
    with pytest.raises(errors.APIError) as e:
        checked_schema(big, "response_format")
    assert e.value.status == 400 and e.value.param == "response_format" and e.value.code == "schema_too_large"


def test_tool_count_cap():
    tools = [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]
    with pytest.raises(errors.APIError) as e:
        ToolPlan.from_request(request(tools=tools), False)
    assert e.value.status == 400 and e.value.param == "tools" and e.value.code == "too_many_tools"
