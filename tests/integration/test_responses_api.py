"""The Responses API through the official openai SDK against the real stack (the session's CPU
stack; the per-key test adds a frontend with API keys on the same Triton).

Greedy decoding makes the tiny random model deterministic, so a Responses request and the chat
request it means must produce the same text and the same prompt token count: that is the proof
that /v1/responses runs on the chat path. Schemas are bounded so the model finishes inside the
suite's 48-token cap."""
from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from tests.integration.frontends import extra_frontend

SCHEMA = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                                           "ok": {"type": "boolean"}},
          "required": ["color", "ok"], "additionalProperties": False}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                          "required": ["city"], "additionalProperties": False}}


class Colour(BaseModel):
    color: Literal["red", "green", "blue"]       # bounded: the random model finishes inside the cap
    ok: bool


def chat_twin(client, stack, messages, max_tokens):
    return client.chat.completions.create(model=stack.model_name, messages=messages, max_tokens=max_tokens,
                                          temperature=0)


def test_create_text_is_the_chat_answer(stack, openai_client):
    resp = openai_client.responses.create(model=stack.model_name, input="Tell me a story.",
                                          instructions="You are terse.", max_output_tokens=12, temperature=0,
                                          metadata={"case": "text"})
    assert resp.status in ("completed", "incomplete") and resp.output_text
    assert resp.metadata == {"case": "text"}
    chat = chat_twin(openai_client, stack, [{"role": "system", "content": "You are terse."},
                                            {"role": "user", "content": "Tell me a story."}], 12)
    assert resp.output_text == chat.choices[0].message.content
    assert resp.usage.input_tokens == chat.usage.prompt_tokens
    assert resp.usage.output_tokens == chat.usage.completion_tokens
    assert resp.usage.input_tokens_details.cached_tokens >= 0
    assert (resp.status == "incomplete") == (chat.choices[0].finish_reason == "length")


def test_create_with_a_tool(stack, openai_client):
    resp = openai_client.responses.create(model=stack.model_name, input="Weather in Paris?", tools=[WEATHER],
                                          tool_choice={"type": "function", "name": "get_weather"})
    [call] = [item for item in resp.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id
    jsonschema.validate(json.loads(call.arguments), WEATHER["parameters"])
    # the tool's answer goes back as a function_call_output on the stored conversation
    follow = openai_client.responses.create(
        model=stack.model_name, previous_response_id=resp.id, max_output_tokens=5, temperature=0, tools=[WEATHER],
        tool_choice="none", input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert follow.previous_response_id == resp.id
    chat = openai_client.chat.completions.create(
        model=stack.model_name, max_tokens=5, temperature=0, tool_choice="none",
        tools=[{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}],
        messages=[{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": None, "tool_calls": [{
                      "id": call.call_id, "type": "function",
                      "function": {"name": call.name, "arguments": call.arguments}}]},
                  {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}])
    assert follow.usage.input_tokens == chat.usage.prompt_tokens
    assert follow.output_text == chat.choices[0].message.content


def test_create_json_schema_and_parse(stack, openai_client):
    resp = openai_client.responses.create(model=stack.model_name, input="A colour as JSON.", text={
        "format": {"type": "json_schema", "name": "colour", "schema": SCHEMA, "strict": True}})
    assert resp.status == "completed", resp
    jsonschema.validate(json.loads(resp.output_text), SCHEMA)
    parsed = openai_client.responses.parse(model=stack.model_name, input="A colour as JSON.", text_format=Colour)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Colour)


def test_stream_with_the_sdk_stream_manager(stack, openai_client):
    deltas = []
    kinds = []
    # a bounded format, so the random model completes (the manager wants response.completed)
    with openai_client.responses.stream(model=stack.model_name, input="A colour as JSON.", text_format=Colour,
                                        temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(deltas) == final.output_text
    assert isinstance(final.output_parsed, Colour)
    same = openai_client.responses.create(model=stack.model_name, input="A colour as JSON.", temperature=0,
                                          text={"format": {"type": "json_schema", "name": "Colour", "strict": True,
                                                           "schema": Colour.model_json_schema()}})
    assert same.output_text == final.output_text                  # streamed == not streamed
    assert openai_client.responses.retrieve(final.id).output_text == final.output_text
    # cut by max_output_tokens: the stream ends with response.incomplete
    with openai_client.responses.stream(model=stack.model_name, input="Count.", max_output_tokens=3) as stream:
        last = [event for event in stream][-1]
    assert last.type == "response.incomplete"
    assert last.response.incomplete_details.reason == "max_output_tokens"


def test_two_turns_retrieve_and_delete(stack, openai_client):
    first = openai_client.responses.create(model=stack.model_name, input="My name is Ada.", max_output_tokens=6,
                                           temperature=0)
    second = openai_client.responses.create(model=stack.model_name, input="What is my name?",
                                            previous_response_id=first.id, max_output_tokens=6, temperature=0)
    chat = chat_twin(openai_client, stack, [{"role": "user", "content": "My name is Ada."},
                                            {"role": "assistant", "content": first.output_text},
                                            {"role": "user", "content": "What is my name?"}], 6)
    assert second.usage.input_tokens == chat.usage.prompt_tokens          # the whole conversation went in
    assert second.output_text == chat.choices[0].message.content
    items = openai_client.responses.input_items.list(second.id)
    assert [i.content[0].text for i in items.data] == ["What is my name?"]
    got = openai_client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    openai_client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as e:
        openai_client.responses.retrieve(first.id)
    assert e.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        openai_client.responses.create(model=stack.model_name, input="again", previous_response_id=first.id)


def test_a_stored_response_is_invisible_to_another_key(stack, default_model_dir, tmp_path):
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        "--max-tokens-cap", "16", "--responses-store", f"sqlite:{tmp_path}/responses.sqlite3",
                        env={"API_KEYS": "key-a,key-b"}) as (base, _):
        a = openai.OpenAI(base_url=f"{base}/v1", api_key="key-a", max_retries=0, timeout=120)
        b = openai.OpenAI(base_url=f"{base}/v1", api_key="key-b", max_retries=0, timeout=120)
        resp = a.responses.create(model=stack.model_name, input="a secret")
        assert a.responses.retrieve(resp.id).id == resp.id
        for call in (lambda: b.responses.retrieve(resp.id), lambda: b.responses.delete(resp.id),
                     lambda: b.responses.input_items.list(resp.id),
                     lambda: b.responses.create(model=stack.model_name, input="x", previous_response_id=resp.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert a.responses.retrieve(resp.id).id == resp.id
