"""Reasoning output end to end on a DeepSeek-R1-Distill-layout tiny model (random weights).

Its template opens `<think>\\n` in the generation prompt, so replies start inside the reasoning
part. Random weights never close it by themselves; the tests that need an answer part raise the
logit of the `</think>` token (logit_bias), which the model then emits after a few reasoning
tokens; the grammar of a response_format applies after it. The splitter itself is tested at every
split point in tests/unit/test_reasoning.py.
"""
from __future__ import annotations

import json
from collections import defaultdict

import jsonschema
import pytest

from tests.integration.stack import TEST_LIMITS, openai_client_for, start_stack

MESSAGES = [{"role": "user", "content": "Is 7 prime? Answer as JSON."}]
SCHEMA = {"type": "object", "properties": {"prime": {"type": "boolean"}}, "required": ["prime"],
          "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def reasoning_stack(reasoning_model_dir, tmp_path_factory):
    s = start_stack(str(reasoning_model_dir), tmp_path_factory.mktemp("reasoning"), *TEST_LIMITS,
                    "--max-num-tokens", "16384")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(reasoning_stack):
    return openai_client_for(reasoning_stack)


@pytest.fixture(scope="module")
def end_bias(reasoning_tokenizer):
    end = reasoning_tokenizer.hf.convert_tokens_to_ids("</think>")
    assert end != reasoning_tokenizer.hf.unk_token_id
    return {str(end): 10}


def reasoning_of(message) -> str | None:
    return (message.model_extra or {}).get("reasoning_content")


def collect(chunks) -> dict[int, dict]:
    out: dict[int, dict] = defaultdict(lambda: {"reasoning": "", "content": "", "finish": None, "order": []})
    for chunk in chunks:
        for c in chunk.choices:
            entry = out[c.index]
            r = (c.delta.model_extra or {}).get("reasoning_content")
            if r:
                entry["reasoning"] += r
                entry["order"].append("r")
            if c.delta.content:
                entry["content"] += c.delta.content
                entry["order"].append("c")
            if c.finish_reason:
                entry["finish"] = c.finish_reason
    return dict(out)


def test_reply_starts_inside_reasoning(reasoning_stack, client):
    kwargs = dict(model=reasoning_stack.model_name, messages=MESSAGES, seed=1, max_tokens=20, n=2)
    full = client.chat.completions.create(**kwargs)
    streamed = collect(client.chat.completions.create(stream=True, **kwargs))
    for choice in full.choices:
        reasoning = reasoning_of(choice.message)
        assert choice.finish_reason == "length"
        assert reasoning and "<think>" not in reasoning and "</think>" not in reasoning
        assert choice.message.content is None
        assert streamed[choice.index]["reasoning"] == reasoning
        assert streamed[choice.index]["content"] == ""


@pytest.fixture(scope="module")
def answered_seed(reasoning_stack, client, end_bias):
    """A seed whose reply reasons for a few tokens, closes </think> and finishes the JSON answer."""
    for seed in range(21):
        r = client.chat.completions.create(model=reasoning_stack.model_name, messages=MESSAGES, seed=seed,
                                           logit_bias=end_bias, response_format=FORMAT)
        choice = r.choices[0]
        if choice.finish_reason == "stop" and reasoning_of(choice.message):
            return seed
    pytest.fail("no seed in 0..20 reasoned and then answered")


def test_reasoning_then_structured_answer(reasoning_stack, client, end_bias, answered_seed):
    kwargs = dict(model=reasoning_stack.model_name, messages=MESSAGES, seed=answered_seed, logit_bias=end_bias,
                  response_format=FORMAT)
    full = client.chat.completions.create(**kwargs)
    choice = full.choices[0]
    reasoning = reasoning_of(choice.message)
    assert choice.finish_reason == "stop"
    assert reasoning and "</think>" not in reasoning
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)     # the answer alone, markers stripped
    streamed = collect(client.chat.completions.create(stream=True, **kwargs))[0]
    assert streamed["reasoning"] == reasoning
    assert streamed["content"] == choice.message.content
    assert streamed["finish"] == "stop"
    # all reasoning deltas come before the first content delta
    assert "r" not in streamed["order"][streamed["order"].index("c"):]


def test_immediate_end_of_reasoning(reasoning_stack, client, end_bias):
    strong = {k: 100 for k in end_bias}           # </think> first: empty reasoning, then the answer
    r = client.chat.completions.create(model=reasoning_stack.model_name, messages=MESSAGES, seed=2,
                                       logit_bias=strong, response_format=FORMAT)
    choice = r.choices[0]
    assert reasoning_of(choice.message) == ""
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), SCHEMA)


@pytest.mark.parametrize("extra", [{"reasoning_effort": "none"},
                                   {"chat_template_kwargs": {"enable_thinking": False}},
                                   {"reasoning": {"enabled": False}}])
def test_thinking_off_closes_the_block(reasoning_stack, client, reasoning_tokenizer, extra):
    model = reasoning_stack.model_name
    base = client.chat.completions.create(model=model, messages=MESSAGES, seed=3, max_tokens=6)
    off = client.chat.completions.create(model=model, messages=MESSAGES, seed=3, max_tokens=6, extra_body=extra)
    closing = len(reasoning_tokenizer.encode("</think>\n\n"))
    assert off.usage.prompt_tokens == base.usage.prompt_tokens + closing
    assert reasoning_of(off.choices[0].message) is None
    assert off.choices[0].message.content
    assert reasoning_of(base.choices[0].message) and base.choices[0].message.content is None


def test_effort_reaches_the_template_as_a_no_op_here(reasoning_stack, client):
    """This template does not read reasoning_effort: accepted, same prompt, still reasoning."""
    model = reasoning_stack.model_name
    base = client.chat.completions.create(model=model, messages=MESSAGES, seed=3, max_tokens=2)
    high = client.chat.completions.create(model=model, messages=MESSAGES, seed=3, max_tokens=2,
                                          reasoning_effort="high")
    assert high.usage.prompt_tokens == base.usage.prompt_tokens
    assert reasoning_of(high.choices[0].message) == reasoning_of(base.choices[0].message)


def test_non_reasoning_model_ignores_reasoning_fields(stack, openai_client):
    base = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=3, max_tokens=4)
    for extra in ({"reasoning_effort": "low"}, {"reasoning": {"effort": "high"}}):
        r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=3, max_tokens=4,
                                                  extra_body=extra)
        assert r.usage.prompt_tokens == base.usage.prompt_tokens
        assert r.choices[0].message.content == base.choices[0].message.content
        assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
