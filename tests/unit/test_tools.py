"""Tool calling without a server: the incremental parser, grammars, prompts, guide checks, ChatOutput."""
from __future__ import annotations

import itertools
import json
import random

import jsonschema
import pytest

from frontend.openai.chat_prompt import render_prompt, template_renders_tools
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.request_base import parse_request
from frontend.openai.chat_output import ChatOutput
from frontend.openai.structured import GuideSpec, response_format_guide
from frontend.openai.parsers import DeepSeekR1ReasoningParser, JsonToolsParser, Llama3JsonParser
from frontend.openai.tools import ToolPlan, calls_schema, tools_system_prompt
from llama_triton.text.compile_worker import run_job
from tests.tool_deltas import reassemble
from tests.engine_guides import engine_accepts, engine_compiler

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12,
                                                                              "maximum": 12}},
                                       "required": ["tz"], "additionalProperties": False}}}
NOARGS = {"type": "function", "function": {"name": "ping"}}
REFS = {"type": "function", "function": {"name": "pick", "parameters": {
    "type": "object", "properties": {"color": {"$ref": "#/$defs/color"}}, "required": ["color"],
    "additionalProperties": False, "$defs": {"color": {"type": "string", "enum": ["red", "blue"]}}}}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def request(**kw) -> ChatCompletionRequest:
    body = {"model": "m", "messages": USER, **kw}
    return parse_request(ChatCompletionRequest, body)


# ---- the incremental parser ------------------------------------------------------------------

ARGUMENTS = JsonToolsParser.key      # our key (Llama-2 and other templates without a tool list)
PARAMETERS = Llama3JsonParser.key    # Llama-3.1's key
FAMILY = {ARGUMENTS: JsonToolsParser, PARAMETERS: Llama3JsonParser}


def parse(chunks, mode="calls", key=ARGUMENTS, named=None):
    counter = itertools.count()
    parser = FAMILY[key](arguments_of=named if mode == "named" else None,
                         id_factory=lambda: f"call_{next(counter)}")
    items = []
    for chunk in chunks:
        items += parser.feed(chunk)
    items += parser.finish()
    return items, parser


summary = reassemble     # what a client reassembles from the deltas, checked against the message


CALL_TEXTS = [
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}',
    '[{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}, {"name": "get_time", "arguments": {"tz": -3}}]',
    '{"name": "f", "arguments": {"s": "a \\"quoted\\" } ] { [ brace", "n": [1, {"x": [2, 3]}], "e": {}}}',
    '{"name": "we\\u00efrd \\"name\\"", "arguments": {"k": "é 😀"}}',
    '{"arguments": {"a": 1}, "name": "late_name"}',
    '{"name": "scalar", "arguments": 42}',
    '[]',
]


@pytest.mark.parametrize("text", CALL_TEXTS)
def test_every_split_point_gives_the_same_calls(text):
    whole = summary(*parse([text]))
    if text != "[]":
        assert whole[1], "no call parsed"
        expected = json.loads(text)
        for call, want in zip(whole[1], expected if isinstance(expected, list) else [expected]):
            assert call["name"] == want["name"]
            assert json.loads(call["arguments"]) == want["arguments"]
    for i in range(len(text) + 1):
        assert summary(*parse([text[:i], text[i:]])) == whole, i
    assert summary(*parse(list(text))) == whole
    rng = random.Random(text)
    for _ in range(30):
        cuts = sorted(rng.randint(0, len(text)) for _ in range(3))
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        assert summary(*parse(chunks)) == whole


def test_arguments_are_the_raw_text_of_the_value():
    text = '{"name": "f", "arguments": {"b": 2, "a": [1,2]}}'
    _, calls = summary(*parse([text]))
    assert calls[0]["arguments"] == '{"b": 2, "a": [1,2]}'


def test_plain_text_is_content_at_once():
    items, parser = parse(["Hello ", "{world}"])
    assert items == [("content", "Hello "), ("content", "{world}")]
    assert not parser.produced_calls


def test_leading_whitespace_waits_for_the_first_character():
    counter = itertools.count()
    parser = JsonToolsParser(id_factory=lambda: f"call_{next(counter)}")
    assert parser.feed(" \n") == []
    assert parser.feed(" hi") == [("content", " \n hi")]
    assert parse(["  "])[0] == [("content", "  ")]
    items, parser = parse([" ", '{"name": "f", "arguments": {}}'])
    assert [c["function"]["name"] for c in parser.message_calls()] == ["f"]


def test_truncated_before_the_name_comes_back_as_content():
    text = '{"name": "get_wea'
    for i in range(len(text) + 1):
        items, parser = parse([text[:i], text[i:]])
        assert items == [("content", text)] and parser.message_calls() == []


def test_truncated_arguments_stay_partial():
    text = '{"name": "get_weather", "arguments": {"city": "Par'
    for i in range(len(text) + 1):
        content, calls = summary(*parse([text[:i], text[i:]]))
        assert content == ""
        assert calls == [{"id": "call_0", "name": "get_weather", "arguments": '{"city": "Par'}]


def test_named_mode_text_is_the_arguments():
    text = '{"city": "Rome", "unit": "f"}'
    for i in range(len(text) + 1):
        content, calls = summary(*parse([text[:i], text[i:]], mode="named", named="get_weather"))
        assert content == "" and calls == [{"id": "call_0", "name": "get_weather", "arguments": text}]
    # the call exists even when nothing was generated
    assert summary(*parse([], mode="named", named="g"))[1] == [{"id": "call_0", "name": "g", "arguments": ""}]


def test_native_key():
    text = '{"name": "get_time", "parameters": {"tz": 5}}'
    _, calls = summary(*parse([text], key=PARAMETERS))
    assert calls[0]["arguments"] == '{"tz": 5}'
    _, calls = summary(*parse([text], key=ARGUMENTS))
    assert calls[0]["arguments"] == ""        # the other key is not the arguments


# ---- plans, finish reasons -------------------------------------------------------------------

def test_plan_modes():
    assert ToolPlan.from_request(request(), False).mode == "none"
    assert ToolPlan.from_request(request(tools=[WEATHER]), False).mode == "auto"
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice="none"), False)
    assert not plan.active and plan.guide() is None and plan.system_prompt() is None
    named = ToolPlan.from_request(
        request(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}}), False)
    assert named.mode == "named" and named.arguments_only and named.named.function.name == "get_time"
    assert named.finish_reason("stop", True) == "stop"
    required = ToolPlan.from_request(request(tools=[WEATHER], tool_choice="required"), True)
    assert required.key == PARAMETERS and not required.arguments_only
    assert required.finish_reason("stop", True) == "tool_calls"
    assert required.finish_reason("length", True) == "length"
    auto = ToolPlan.from_request(request(tools=[WEATHER]), False)
    assert auto.finish_reason("stop", False) == "stop"


def test_system_prompt_wording():
    tools = request(tools=[WEATHER, NOARGS]).tools
    text = tools_system_prompt(tools, "auto", True)
    assert ('{"name": "get_weather", "description": "Current weather in a city", "parameters": '
            + json.dumps(WEATHER["function"]["parameters"]) + "}") in text
    assert '{"name": "ping", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}' in text
    assert '{"name": <function name>, "arguments": <JSON object of the arguments' in text
    assert "JSON array of such objects" in text and 'does not start with "{" or "["' in text
    assert "JSON array" not in tools_system_prompt(tools, "auto", False)
    assert "You must call at least one function" in tools_system_prompt(tools, "required", False)
    named = tools_system_prompt(tools, "named", True, "ping")
    assert 'You must call the function "ping"' in named and "only the JSON object of its arguments" in named


# ---- grammars --------------------------------------------------------------------------------

def test_calls_schema_accepts_calls_and_only_calls():
    tools = request(tools=[WEATHER, TIME, REFS]).tools
    one = calls_schema(tools, ARGUMENTS, False)
    ok = {"name": "get_time", "arguments": {"tz": 3}}
    jsonschema.validate(ok, one)
    jsonschema.validate({"name": "pick", "arguments": {"color": "red"}}, one)
    for bad in ({"name": "get_time", "arguments": {"tz": 99}}, {"name": "nope", "arguments": {}},
                {"name": "pick", "arguments": {"color": "green"}}, [ok],
                {"name": "get_time", "arguments": {"tz": 1}, "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, one)
    many = calls_schema(tools, PARAMETERS, True)
    jsonschema.validate([{"name": "get_time", "parameters": {"tz": 3}}] * 2, many)
    jsonschema.validate({"name": "get_time", "parameters": {"tz": 3}}, many)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], many)


def build(spec: GuideSpec):
    """(guide_type, guide) as the frontend sends it: the compile worker's job, run here."""
    answer = run_job(engine_compiler(), spec.job(), lambda msg: None)
    assert "ok" in answer, answer
    return tuple(answer["ok"])


def matches(guide_type, guide, text) -> bool:
    return engine_accepts(guide_type, guide, text)


def test_required_grammar():
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice="required"), False)
    guide_type, guide = build(plan.guide())
    assert guide_type == "ebnf_grammar"
    call = '{"name": "get_time", "arguments": {"tz": -12}}'
    assert matches(guide_type, guide, call)
    assert matches(guide_type, guide, f"[{call}, {call}]")
    assert not matches(guide_type, guide, "[]")
    assert not matches(guide_type, guide, '{"name":"get_time","arguments":{"tz":1}}')  # no free layout
    assert not matches(guide_type, guide, '{"name": "get_time",  "arguments": {"tz": 1}}')
    assert not matches(guide_type, guide, "hello")
    single = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice="required",
                                           parallel_tool_calls=False), False)
    assert not matches(*build(single.guide()), f"[{call}]")


def test_auto_grammar():
    plan = ToolPlan.from_request(request(tools=[WEATHER, REFS]), False)
    guide_type, guide = build(plan.guide())
    assert guide_type == "ebnf_grammar"
    assert matches(guide_type, guide, '{"name": "pick", "arguments": {"color": "blue"}}')
    assert matches(guide_type, guide, "Plain text, with {braces} inside.\nFine.")
    assert matches(guide_type, guide, "  \nleading whitespace is fine")
    assert not matches(guide_type, guide, ' {"leading space": "then a brace"}')
    assert not matches(guide_type, guide, '{"not": "a call"}')
    assert not matches(guide_type, guide, "[1, 2]")


def test_named_grammar():
    named = {"type": "function", "function": {"name": "get_weather"}}
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice=named), False)
    spec = plan.guide()
    assert spec.guide_type == "json_schema" and json.loads(spec.guide) == WEATHER["function"]["parameters"]
    assert matches(*build(spec), '{"city": "Rome", "unit": "c"}')
    native = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice=named), True)
    assert matches(*build(native.guide()), '{"name": "get_weather", "parameters": {"city": "Rome", "unit": "c"}}')
    assert not matches(*build(native.guide()), '{"name": "get_time", "parameters": {"tz": 1}}')


def test_no_parameters_means_empty_object():
    plan = ToolPlan.from_request(request(tools=[NOARGS], tool_choice="required", parallel_tool_calls=False), False)
    assert matches(*build(plan.guide()), '{"name": "ping", "arguments": {}}')


def test_response_format_guides():
    parse_rf = lambda rf: response_format_guide(request(response_format=rf).response_format)  # noqa: E731
    assert parse_rf({"type": "text"}) is None
    spec = parse_rf({"type": "json_object"})
    assert (spec.guide_type, spec.guide, spec.param) == ("json", None, "response_format")
    assert build(spec)[0] == "ebnf_grammar"
    assert matches(*build(spec), '{"any": ["thing", 1]}')
    assert not matches(*build(spec), '{"any":  1}')                 # bounded whitespace
    spec = parse_rf({"type": "json_schema", "json_schema": {"name": "x", "strict": True,
                                                             "schema": WEATHER["function"]["parameters"]}})
    assert spec.guide_type == "json_schema" and json.loads(spec.guide) == WEATHER["function"]["parameters"]
    spec = parse_rf({"type": "regex", "regex": "(yes|no)"})
    assert build(spec) == ("regex", "(yes|no)")


def test_after_reasoning():
    spec = response_format_guide(request(response_format={"type": "regex", "regex": "[a-z]{1,5}"}).response_format)
    guide_type, guide = build(spec.after_reasoning("inside"))
    assert guide_type == "ebnf_grammar"
    assert matches(guide_type, guide, "let me think < </thin </think>\n\nabc")
    assert matches(guide_type, guide, "</think>abc")
    assert not matches(guide_type, guide, "abc")                        # reasoning must end first
    assert not matches(guide_type, guide, "x</think>\n\n\nabc")         # at most 2 whitespace
    guide_type, guide = build(spec.after_reasoning("optional"))
    assert matches(guide_type, guide, "abc")
    assert matches(guide_type, guide, "<think>hmm</think>\nabc")


def test_errors_name_the_field():
    bad_tool = {"type": "function", "function": {"name": "bad", "parameters": {"type": "object", "properties": {
        "x": {"type": "string", "pattern": "(unclosed"}}}}}
    plan = ToolPlan.from_request(request(tools=[WEATHER, bad_tool], tool_choice="required"), False)
    answer = run_job(engine_compiler(), plan.guide().job(), lambda msg: None)
    assert answer["param"] == "tools[1].function.parameters" and "invalid" in answer["error"]
    spec = response_format_guide(request(response_format={"type": "regex", "regex": "(a"}).response_format)
    answer = run_job(engine_compiler(), spec.job(), lambda msg: None)
    assert answer["param"] == "response_format" and answer["error"].startswith("invalid regex")


# ---- prompts ---------------------------------------------------------------------------------

def test_llama2_prompt_has_the_tool_text(default_tokenizer):
    plan = ToolPlan.from_request(request(tools=[WEATHER]), template_renders_tools(default_tokenizer.chat_template))
    assert not plan.native
    messages = [{"role": "system", "content": "Be brief."}, *USER]
    prompt = render_prompt(default_tokenizer, messages, tools=plan.template_tools(), tool_prompt=plan.system_prompt())
    assert "<<SYS>>\nBe brief.\n\nYou can call functions." in prompt
    assert '"name": "get_weather"' in prompt and prompt.endswith("[/INST]")


def test_llama2_round_trip(default_tokenizer):
    messages = [*USER, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "c"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"}]
    req = request(messages=messages, tools=[WEATHER])
    plan = ToolPlan.from_request(req, False)
    prompt = render_prompt(default_tokenizer, [m.model_dump(exclude_none=True) for m in req.messages],
                           tool_prompt=plan.system_prompt())
    assert '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}' in prompt
    assert "[tool result for call call_1]\n21 C" in prompt


def test_llama3_native_tools_and_round_trip(llama3_tokenizer):
    assert template_renders_tools(llama3_tokenizer.chat_template)
    messages = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather",
                                                          "arguments": '{"city": "Paris", "unit": "c"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}]
    req = request(messages=messages, tools=[WEATHER, TIME])
    plan = ToolPlan.from_request(req, True)
    assert plan.system_prompt() is None
    prompt = render_prompt(llama3_tokenizer, [m.model_dump(exclude_none=True) for m in req.messages],
                           tools=plan.template_tools())
    assert '"name": "get_weather"' in prompt and "Current weather in a city" in prompt   # the template's tool list
    assert '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "c"}}' in prompt
    assert '{"name": "get_time", "parameters": {"tz": 1}}' in prompt
    # Llama-3.1's template writes tool results with `tojson` (a string comes out quoted)
    assert '<|start_header_id|>ipython<|end_header_id|>\n\n"21 C"<|eot_id|>' in prompt
    none = render_prompt(llama3_tokenizer, [m.model_dump(exclude_none=True) for m in request().messages], tools=None)
    assert "Environment: ipython" not in none


def test_deepseek_gets_the_tool_text_in_its_system_prompt(reasoning_tokenizer):
    assert not template_renders_tools(reasoning_tokenizer.chat_template)
    plan = ToolPlan.from_request(request(tools=[WEATHER]), False)
    prompt = render_prompt(reasoning_tokenizer, [{"role": "system", "content": "Sys."}, *USER],
                           tool_prompt=plan.system_prompt())
    assert "Sys.\n\nYou can call functions." in prompt


# ---- ChatOutput: reasoning + tools over any chunking -------------------------------------------

def run_output(plan, reasoning, chunks):
    out = ChatOutput(plan, DeepSeekR1ReasoningParser(reasoning == "inside") if reasoning is not None else None)
    items = []
    for c in chunks:
        items += out.feed(c)
    items += out.finish()
    out.collect(items)
    return out, ChatOutput.deltas(items)


def test_chat_output_reasoning_then_call():
    plan = ToolPlan.from_request(request(tools=[WEATHER, TIME], tool_choice="required"), False)
    text = 'hmm </thi</think>\n\n{"name": "get_time", "arguments": {"tz": 7}}'
    whole, _ = run_output(plan, "inside", [text])
    msg = whole.message()
    assert msg["reasoning_content"] == "hmm </thi" and msg["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [("get_time",
                                                                                                 '{"tz": 7}')]
    assert whole.finish_reason("stop") == "tool_calls"
    for i in range(len(text) + 1):
        out, deltas = run_output(plan, "inside", [text[:i], text[i:]])
        reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
        args = "".join(tc["function"]["arguments"] for d in deltas for tc in d.get("tool_calls", []))
        assert reasoning == "hmm </thi" and args == '{"tz": 7}'
        assert not any("content" in d for d in deltas)
        m = out.message()
        assert m["reasoning_content"] == msg["reasoning_content"]
        assert [c["function"] for c in m["tool_calls"]] == [c["function"] for c in msg["tool_calls"]]


def test_chat_output_plain_is_unchanged():
    plan = ToolPlan.from_request(request(), False)
    out, deltas = run_output(plan, None, ["a", "b"])
    assert out.plain and out.message() == {"role": "assistant", "content": "ab"}
    out, _ = run_output(plan, None, [])
    assert out.message() == {"role": "assistant", "content": ""}
