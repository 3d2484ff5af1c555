"""Tool calls against the real stack: Llama-2 (tools in the system prompt, `arguments` key) on the
session stack, Llama-3.1 (native template, `parameters` key) on a second stack of this module.

Random weights: the tools' schemas are bounded so a call finishes inside the 48-token cap. `auto`
is shown producing a call for one seed and text for another: the seeds are searched (0..50) with
a logit_bias that makes `{` likely as the first token, then the assertions are made on them.
"""
from __future__ import annotations

import json
from collections import defaultdict

import jsonschema
import pytest

from tests.integration.conftest import DECODER_MODES
from tests.integration.stack import TEST_LIMITS, openai_client_for, start_stack

# The tests on the session stack run in both decoder modes (the Llama-3 ones on their own stack).
both_modes = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)

MESSAGES = [{"role": "user", "content": "What is the weather in Paris, and what time is it?"}]
WEATHER_PARAMS = {"type": "object",
                  "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                                 "unit": {"type": "string", "enum": ["c", "f"]}},
                  "required": ["city", "unit"], "additionalProperties": False}
TIME_PARAMS = {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12, "maximum": 12}},
               "required": ["tz"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER_PARAMS}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                           "parameters": TIME_PARAMS}}]
PARAMS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
NAMED = {"type": "function", "function": {"name": "get_time"}}


def check_call(name: str, arguments: str) -> None:
    assert name in PARAMS, name
    jsonschema.validate(json.loads(arguments), PARAMS[name])


def collect_stream(chunks) -> dict[int, dict]:
    """Per choice: content, calls reassembled from the deltas (checking their shape), finish_reason."""
    out: dict[int, dict] = defaultdict(lambda: {"content": "", "calls": {}, "finish": None, "ids": set()})
    for chunk in chunks:
        for c in chunk.choices:
            entry = out[c.index]
            entry["content"] += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                call = entry["calls"].get(tc.index)
                if call is None:
                    assert tc.id and tc.id.startswith("call_") and tc.type == "function"
                    assert tc.function.name and tc.function.arguments == ""
                    entry["calls"][tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                else:
                    assert tc.id is None and tc.type is None and tc.function.name is None
                    call["arguments"] += tc.function.arguments
            if c.finish_reason:
                assert entry["finish"] is None
                entry["finish"] = c.finish_reason
    return dict(out)


def message_calls(choice) -> list[tuple[str, str]]:
    return [(tc.function.name, tc.function.arguments) for tc in choice.message.tool_calls or []]


def streamed_calls(entry) -> list[tuple[str, str]]:
    return [(c["name"], c["arguments"]) for _, c in sorted(entry["calls"].items())]


def run_both(client, **kwargs):
    full = client.chat.completions.create(**kwargs)
    streamed = collect_stream(client.chat.completions.create(stream=True, **kwargs))
    assert sorted(streamed) == [c.index for c in full.choices]
    for choice in full.choices:
        entry = streamed[choice.index]
        assert streamed_calls(entry) == message_calls(choice)            # arguments byte for byte
        assert entry["finish"] == choice.finish_reason
        if choice.message.tool_calls:
            assert entry["content"] == ""                                 # no content for a call
            assert len({tc.id for tc in choice.message.tool_calls}) == len(choice.message.tool_calls)
        else:
            assert entry["content"] == (choice.message.content or "")
    return full, streamed


# ---- Llama-2 ---------------------------------------------------------------------------------

@both_modes
def test_required_single_call_n2(stack, openai_client):
    full, _ = run_both(openai_client, model=stack.model_name, messages=MESSAGES, tools=TOOLS, tool_choice="required",
                       parallel_tool_calls=False, seed=3, n=2)
    for choice in full.choices:
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        [(name, arguments)] = message_calls(choice)
        check_call(name, arguments)


@both_modes
def test_required_parallel_calls(stack, openai_client):
    full, _ = run_both(openai_client, model=stack.model_name, messages=MESSAGES, tools=TOOLS,
                       tool_choice="required", seed=3, n=2)
    for choice in full.choices:
        calls = message_calls(choice)
        assert calls and choice.finish_reason in ("tool_calls", "length")
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        for name, arguments in complete:
            check_call(name, arguments)


@both_modes
def test_named_function_n2(stack, openai_client):
    full, _ = run_both(openai_client, model=stack.model_name, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED,
                       seed=4, n=2)
    for choice in full.choices:
        assert choice.finish_reason == "stop"          # OpenAI's finish_reason for a forced function
        [(name, arguments)] = message_calls(choice)
        assert name == "get_time"
        check_call(name, arguments)


@both_modes
def test_none_is_plain_text_without_tools_in_the_prompt(stack, openai_client):
    plain = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=5, max_tokens=6)
    full, _ = run_both(openai_client, model=stack.model_name, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                       seed=5, n=2, max_tokens=6)
    assert full.usage.prompt_tokens == plain.usage.prompt_tokens
    for choice in full.choices:
        assert choice.message.tool_calls is None and choice.finish_reason == "length"
    with_tools = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tools=TOOLS,
                                                       seed=5, max_tokens=1)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens + 100    # the tool text is in the prompt


@pytest.fixture(scope="module")
def auto_seeds(stack, openai_client, default_tokenizer):
    """(a seed that gives a call, a seed that gives text) under auto, with `{` made likely."""
    bias = {str(default_tokenizer.hf.convert_tokens_to_ids("{")): 9}
    call_seed = text_seed = None
    for seed in range(51):
        r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tools=TOOLS, seed=seed,
                                                  logit_bias=bias, parallel_tool_calls=False)
        if r.choices[0].message.tool_calls and call_seed is None:
            call_seed = seed
        elif not r.choices[0].message.tool_calls and text_seed is None:
            text_seed = seed
        if call_seed is not None and text_seed is not None:
            return bias, call_seed, text_seed
    pytest.fail(f"no seed in 0..50 gave both a call ({call_seed}) and text ({text_seed})")


@both_modes
def test_auto_call_and_text(stack, openai_client, auto_seeds):
    bias, call_seed, text_seed = auto_seeds
    common = dict(model=stack.model_name, messages=MESSAGES, tools=TOOLS, logit_bias=bias,
                  parallel_tool_calls=False)
    full, _ = run_both(openai_client, seed=call_seed, **common)
    choice = full.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [(name, arguments)] = message_calls(choice)
    check_call(name, arguments)
    full, streamed = run_both(openai_client, seed=text_seed, **common)
    choice = full.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")
    assert choice.message.content and choice.message.content[0] not in "{["
    assert streamed[0]["content"] == choice.message.content


@both_modes
def test_auto_n2_parses_each_choice(stack, openai_client, auto_seeds):
    bias, call_seed, _ = auto_seeds
    full, _ = run_both(openai_client, model=stack.model_name, messages=MESSAGES, tools=TOOLS, logit_bias=bias,
                       seed=call_seed, n=2)
    for choice in full.choices:
        if choice.message.tool_calls:
            assert choice.finish_reason in ("tool_calls", "length") and choice.message.content is None
        else:
            assert choice.finish_reason in ("stop", "length") and choice.message.content


@both_modes
def test_round_trip(stack, openai_client):
    first = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tools=TOOLS,
                                                  tool_choice="required", parallel_tool_calls=False, seed=3)
    call = first.choices[0].message.tool_calls[0]
    messages = [*MESSAGES, first.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "21 degrees"}]
    r = openai_client.chat.completions.create(model=stack.model_name, messages=messages, tools=TOOLS, seed=3,
                                              tool_choice="none", max_tokens=4)
    assert r.choices[0].finish_reason == "length"
    longer = r.usage.prompt_tokens
    r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tool_choice="none",
                                              tools=TOOLS, seed=3, max_tokens=4)
    assert longer > r.usage.prompt_tokens + 10      # the call and its result are in the prompt


# ---- Llama-3.1 (native tool template) --------------------------------------------------------

@pytest.fixture(scope="module")
def llama3_stack(llama3_model_dir, tmp_path_factory):
    s = start_stack(str(llama3_model_dir), tmp_path_factory.mktemp("llama3-tools"), *TEST_LIMITS,
                    "--max-num-tokens", "16384")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def llama3_client(llama3_stack):
    return openai_client_for(llama3_stack)


def test_llama3_required_and_named(llama3_stack, llama3_client):
    full, _ = run_both(llama3_client, model=llama3_stack.model_name, messages=MESSAGES, tools=TOOLS,
                       tool_choice="required", parallel_tool_calls=False, seed=3, n=2)
    for choice in full.choices:
        assert choice.finish_reason == "tool_calls"
        [(name, arguments)] = message_calls(choice)
        check_call(name, arguments)
    full, _ = run_both(llama3_client, model=llama3_stack.model_name, messages=MESSAGES, tools=TOOLS,
                       tool_choice=NAMED, seed=4)
    assert full.choices[0].finish_reason == "stop"
    [(name, arguments)] = message_calls(full.choices[0])
    assert name == "get_time"
    check_call(name, arguments)


def test_llama3_template_renders_tools_and_round_trips(llama3_stack, llama3_client):
    model = llama3_stack.model_name
    none = llama3_client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                                 seed=1, max_tokens=1)
    plain = llama3_client.chat.completions.create(model=model, messages=MESSAGES, seed=1, max_tokens=1)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens
    auto = llama3_client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, seed=1, max_tokens=1)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 100
    calls = [{"id": "call_a", "type": "function",
              "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": 1}'}}]
    messages = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": "call_a", "content": "21 C"},
                {"role": "tool", "tool_call_id": "call_b", "content": "12:00"}]
    r = llama3_client.chat.completions.create(model=model, messages=messages, tools=TOOLS, tool_choice="none",
                                              seed=1, max_tokens=1)
    assert r.usage.prompt_tokens > none.usage.prompt_tokens + 30


def test_llama3_template_kwargs_reach_the_template(llama3_stack, llama3_client):
    model = llama3_stack.model_name
    base = llama3_client.chat.completions.create(model=model, messages=MESSAGES, seed=1, max_tokens=1)
    dated = llama3_client.chat.completions.create(
        model=model, messages=MESSAGES, seed=1, max_tokens=1,
        extra_body={"chat_template_kwargs": {"date_string": "the first Tuesday of a long and rainy January 2030"}})
    assert dated.usage.prompt_tokens > base.usage.prompt_tokens
    # reasoning fields are accepted no-ops on a model without reasoning
    r = llama3_client.chat.completions.create(model=model, messages=MESSAGES, seed=1, max_tokens=1,
                                              reasoning_effort="high")
    assert r.usage.prompt_tokens == base.usage.prompt_tokens
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
