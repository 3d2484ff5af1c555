"""response_format against the real stack (Llama-2 tiny model, random weights, max_tokens cap 48).

Schemas are bounded (enums, small integer ranges, maxLength, additionalProperties false) so that
a random model finishes inside the cap; whenever finish_reason is "stop" the output must parse
and validate. The frontend's guide refusals that need no decoder (invalid guides, a tool's schema
past the compile deadline) run once, in tests/handlers/, not once per decoder mode here.
"""
from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest

from tests.integration.conftest import DECODER_MODES
from tests.integration.http_helpers import post_chat

pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)

MESSAGES = [{"role": "user", "content": "Describe a colour as JSON."}]
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 9},
        "ok": {"type": "boolean"},
        "tag": {"type": "string", "maxLength": 3},
    },
    "required": ["color", "n", "ok", "tag"],
    "additionalProperties": False,
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "colour", "strict": True, "schema": SCHEMA}}
# Compiling this schema takes xgrammar 0.1.32 over a minute, far longer than the frontend's 5 s limit.
PATHOLOGICAL = {"type": "object", "properties": {f"p{i}": {"type": "string", "minLength": 2000 + i, "maxLength": 2000 + i}
                                                 for i in range(30)},
                "required": [f"p{i}" for i in range(30)]}


def stream_texts(chunks) -> tuple[dict[int, str], dict[int, str]]:
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            assert not c.delta.tool_calls
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    return texts, finish


@pytest.mark.parametrize("seed", [1, 2])
def test_json_schema_validates_streamed_and_not(stack, openai_client, seed):
    kwargs = dict(model=stack.model_name, messages=MESSAGES, response_format=JSON_SCHEMA_FORMAT, seed=seed, n=2)
    full = openai_client.chat.completions.create(**kwargs)
    assert len(full.choices) == 2
    for choice in full.choices:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)
        assert choice.message.tool_calls is None
    texts, finish = stream_texts(openai_client.chat.completions.create(stream=True, **kwargs))
    assert texts == {c.index: c.message.content for c in full.choices}
    assert finish == {0: "stop", 1: "stop"}


def test_json_object(stack, openai_client):
    stopped = 0
    for seed in range(4):
        r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=seed,
                                                  response_format={"type": "json_object"})
        choice = r.choices[0]
        assert choice.message.content.startswith("{")
        assert choice.message.content[:2] in ('{"', "{}")     # no free whitespace
        if choice.finish_reason == "stop":
            stopped += 1
            assert isinstance(json.loads(choice.message.content), dict)
        else:
            assert choice.finish_reason == "length" and r.usage.completion_tokens == 48


def test_regex(stack, openai_client):
    pattern = r"(yes|no), [0-9]{1,3} (cats|dogs)"
    kwargs = dict(model=stack.model_name, messages=MESSAGES, response_format={"type": "regex", "regex": pattern},
                  seed=5, n=2)
    full = openai_client.chat.completions.create(**kwargs)
    for choice in full.choices:
        assert choice.finish_reason == "stop"
        assert re.fullmatch(pattern, choice.message.content), choice.message.content
    texts, _ = stream_texts(openai_client.chat.completions.create(stream=True, **kwargs))
    assert texts == {c.index: c.message.content for c in full.choices}


def test_text_format_is_unconstrained(stack, openai_client):
    r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=1, max_tokens=8,
                                              response_format={"type": "text"})
    assert r.choices[0].finish_reason == "length"


def test_pathological_schema_is_a_quick_400(stack, openai_client):
    status, body = post_chat(stack.base_url, {"model": stack.model_name, "messages": MESSAGES,
                                "response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "p", "schema": PATHOLOGICAL}}})
    assert status == 400, body
    assert body["error"]["param"] == "response_format"
    assert body["error"]["type"] == "invalid_request_error"
    # stopped at the compile deadline (the first guided request of a stack also waits for the
    # compile workers to start, so its latency says nothing about the deadline)
    assert body["error"]["code"] == "grammar_too_complex"
    # the stack still serves (the abandoned compilation runs in the frontend, not the decoder)
    r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, seed=1, max_tokens=4)
    assert r.choices[0].finish_reason == "length"
    # a timeout is not cached (issue 24): the second time it is compiled again, and refused again
    status, body = post_chat(stack.base_url, {"model": stack.model_name, "messages": MESSAGES,
                                "response_format": {"type": "json_schema",
                                                    "json_schema": {"name": "p", "schema": PATHOLOGICAL}}})
    assert status == 400 and body["error"]["code"] == "grammar_too_complex"


def test_response_format_with_auto_tools_is_refused(stack, openai_client):
    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tools=tools,
                                              response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"
    # with tool_choice none the format applies
    r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, tools=tools, seed=1,
                                              tool_choice="none", response_format=JSON_SCHEMA_FORMAT)
    jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
