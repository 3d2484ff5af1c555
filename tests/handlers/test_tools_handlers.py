"""Tool calling through the real app against FakeDecoder: tool_choice modes, the guide that reaches the
decoder, the tool-call message and its streamed deltas (arguments byte-identical streamed or not),
n, truncation, the round trip, and the 400s. The default model's Llama-2 template renders no tool
list, so calls are `{"name": ..., "arguments": {...}}` (frontend/openai/tools.py). The end-to-end checks stay
in tests/integration/test_tool_calls.py; these need no real decoder."""
from __future__ import annotations

import json

from tests.handlers.conftest import Harness, error_of, finish_reasons

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object", "properties": {
    "q": {"type": "string"}, "n": {"type": "array", "items": {"type": "number"}}, "t": {"type": "boolean"},
    "z": {"type": "null"}}}}}
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
CALL_TIME = '{"name": "get_time", "arguments": {"zone": "UTC"}}'
# Arguments whose text a re-serialisation would change: escapes, brackets inside strings, 2.50, -3e2.
TRICKY_ARGS = '{"q": "a \\"b\\" } ] , {x}", "n": [1, 2.50, -3e2], "t": true, "z": null}'
NAMED = {"type": "function", "function": {"name": "get_weather"}}
TOOL_PROMPT = "You can call functions"


def _prompt(h: Harness, i: int = -1) -> str:
    return h.tokenizer.hf.decode(h.decoder.requests[i][1]["input_ids"][0])


def _tool_deltas(events: list, index: int = 0) -> list[dict]:
    return [d for c in events if isinstance(c, dict) and c.get("choices") and c["choices"][0]["index"] == index
            for d in c["choices"][0]["delta"].get("tool_calls") or ()]


def _streamed_calls(events: list, index: int = 0) -> list[dict]:
    """The streamed tool-call deltas of one choice, assembled as a client does."""
    calls: dict[int, dict] = {}
    for d in _tool_deltas(events, index):
        call = calls.setdefault(d["index"], {"id": None, "name": None, "arguments": ""})
        if "id" in d:
            call["id"], call["name"] = d["id"], d["function"]["name"]
        call["arguments"] += d["function"]["arguments"]
    return [calls[i] for i in sorted(calls)]


def test_required_gives_a_tool_call_message_and_sends_the_call_grammar(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    status, _, body = h.chat({"tools": [WEATHER], "tool_choice": "required"})
    assert status == 200, body
    choice = body["choices"][0]
    message = choice["message"]
    assert message["content"] is None and message["role"] == "assistant"
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["finish_reason"] == "tool_calls"
    arrays = h.decoder.requests[0][1]
    assert arrays["guided_decoding_guide_type"].item() == b"ebnf_grammar"
    assert b"get_weather" in arrays["guided_decoding_guide"].item()     # the call's name is in the grammar
    assert TOOL_PROMPT in _prompt(h)                                     # the tools are in the prompt


def test_auto_plain_text_is_content_and_finishes_stop(shared_harness: Harness):
    h = shared_harness
    h.decoder.says("It is sunny today.")
    status, _, body = h.chat({"tools": [WEATHER]})                       # auto: the default with tools
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "It is sunny today."}
    assert choice["finish_reason"] == "stop"
    assert h.decoder.requests[0][1]["guided_decoding_guide_type"].item() == b"ebnf_grammar"


def test_auto_call_is_a_tool_call(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    status, _, body = h.chat({"tools": [WEATHER, TIME], "tool_choice": "auto"})
    assert status == 200, body
    assert [c["function"]["name"] for c in body["choices"][0]["message"]["tool_calls"]] == ["get_weather"]
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_none_sends_neither_tools_nor_a_guide_and_json_stays_text(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    status, _, body = h.chat({"tools": [WEATHER], "tool_choice": "none"})
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": CALL}   # not parsed as a call
    assert choice["finish_reason"] == "stop"
    arrays = h.decoder.requests[0][1]
    assert "guided_decoding_guide_type" not in arrays
    assert TOOL_PROMPT not in _prompt(h)


def test_parallel_calls_in_one_array(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(f"[{CALL}, {CALL_TIME}]")
    status, _, body = h.chat({"tools": [WEATHER, TIME], "tool_choice": "required"})
    assert status == 200, body
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", '{"city": "Paris"}'), ("get_time", '{"zone": "UTC"}')]
    assert len({c["id"] for c in calls}) == 2
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_call_deltas_announce_then_carry_argument_fragments(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    status, _, events = h.chat({"tools": [WEATHER], "tool_choice": "required", "stream": True})
    assert status == 200 and events[-1] == "[DONE]"
    deltas = _tool_deltas(events)
    first, rest = deltas[0], deltas[1:]
    assert first["index"] == 0 and first["type"] == "function" and first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert rest and all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in rest)
    assert "".join(d["function"]["arguments"] for d in rest) == '{"city": "Paris"}'
    assert finish_reasons(events) == {0: ["tool_calls"]}
    contents = [c["choices"][0]["delta"].get("content") for c in events[:-1] if c.get("choices")]
    assert not any(contents)                                             # no text besides the call


def test_arguments_are_byte_identical_streamed_and_not(shared_harness: Harness):
    h = shared_harness
    text = '{"name": "search", "arguments": ' + TRICKY_ARGS + "}"
    body = {"tools": [SEARCH], "tool_choice": "required"}
    h.decoder.says(text)
    status, _, full = h.chat(body)
    assert status == 200, full
    whole = full["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    h.decoder.says(text)
    status, _, events = h.chat({**body, "stream": True})
    assert status == 200
    [streamed] = _streamed_calls(events)
    assert streamed["arguments"] == whole == TRICKY_ARGS                 # the raw text, never re-serialised
    assert json.loads(whole)["n"] == [1, 2.5, -300.0]


def test_named_function_on_a_template_without_tools_is_the_arguments_object(shared_harness: Harness):
    """Llama-2: the output is the named function's arguments; finish_reason stop (a forced call)."""
    h = shared_harness
    h.decoder.says('{"city": "Paris"}')
    body = {"tools": [WEATHER, TIME], "tool_choice": NAMED}
    status, _, full = h.chat(body)
    assert status == 200, full
    [call] = full["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert full["choices"][0]["finish_reason"] == "stop"
    h.decoder.says('{"city": "Paris"}')
    status, _, events = h.chat({**body, "stream": True})
    [streamed] = _streamed_calls(events)
    assert (streamed["name"], streamed["arguments"]) == ("get_weather", call["function"]["arguments"])
    assert finish_reasons(events) == {0: ["stop"]}


def test_each_choice_parses_its_own_calls(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL, CALL_TIME)
    status, _, body = h.chat({"tools": [WEATHER, TIME], "tool_choice": "required", "n": 2, "temperature": 1.0})
    assert status == 200, body
    calls = [c["message"]["tool_calls"] for c in body["choices"]]
    assert [[x["function"]["name"] for x in cs] for cs in calls] == [["get_weather"], ["get_time"]]
    assert calls[0][0]["id"] != calls[1][0]["id"]
    assert [c["finish_reason"] for c in body["choices"]] == ["tool_calls", "tool_calls"]


def test_json_that_names_no_tool_comes_back_as_content(shared_harness: Harness):
    h = shared_harness
    h.decoder.says('{"foo": 1}')
    status, _, body = h.chat({"tools": [WEATHER]})
    assert status == 200, body
    assert body["choices"][0]["message"] == {"role": "assistant", "content": '{"foo": 1}'}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_a_call_cut_by_max_tokens_keeps_its_partial_arguments(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    cut = len(h.tokenizer.encode(CALL)) - 4
    status, _, body = h.chat({"tools": [WEATHER], "tool_choice": "required", "max_tokens": cut})
    assert status == 200, body
    [call] = body["choices"][0]["message"]["tool_calls"]
    args = call["function"]["arguments"]
    assert args and '{"city": "Paris"}'.startswith(args) and args != '{"city": "Paris"}'
    assert body["choices"][0]["finish_reason"] == "length"


def test_response_format_with_required_tools_is_the_tool_grammar(shared_harness: Harness):
    h = shared_harness
    h.decoder.says(CALL)
    status, _, body = h.chat({"tools": [WEATHER], "tool_choice": "required",
                              "response_format": {"type": "json_object"}})
    assert status == 200, body
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert b"get_weather" in h.decoder.requests[0][1]["guided_decoding_guide"].item()


def test_tool_result_round_trip_reaches_the_prompt(shared_harness: Harness):
    h = shared_harness
    h.decoder.says("It is 18 C in Paris.")
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_abc", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                {"role": "tool", "tool_call_id": "call_abc", "content": "18 C"}]
    status, _, body = h.chat({"messages": messages, "tools": [WEATHER]})
    assert status == 200, body
    prompt = _prompt(h)
    assert "[tool result for call call_abc]\n18 C" in prompt and '"city": "Paris"' in prompt
    assert body["choices"][0]["message"]["content"] == "It is 18 C in Paris."


def test_tool_choice_errors_name_their_field(harness: Harness):
    cases = [
        ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "unsupported_combination"),
        ({"tool_choice": "required"}, "tool_choice", None),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice.function.name", None),
        ({"tools": [WEATHER] * 129}, "tools", "too_many_tools"),
        ({"tools": [WEATHER, {"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}}}]},
         "tools[1].function.parameters", "unsupported_schema"),
    ]
    for fields, param, code in cases:
        status, _, body = harness.chat(fields)
        err = error_of(status, body, 400, param)
        assert code is None or err["code"] == code, (fields, err)
        assert err["type"] == "invalid_request_error"
    assert harness.decoder.requests == []                                # none reached the decoder


# Compiling this schema takes xgrammar 0.1.32 over a minute, far longer than the frontend's 5 s limit.
PATHOLOGICAL = {"type": "object", "properties": {f"p{i}": {"type": "string", "minLength": 2000 + i, "maxLength": 2000 + i}
                                                 for i in range(30)},
                "required": [f"p{i}" for i in range(30)]}


def test_pathological_tool_parameters_are_a_400_naming_the_tool(shared_harness: Harness):
    """Moved: test_structured_outputs.py::test_pathological_tool_parameters_are_a_400_naming_the_tool
    (the frontend's compile deadline, once per decoder mode there); test_pathological_schema_is_a_quick_400
    keeps the deadline end to end."""
    tools = [{"type": "function", "function": {"name": "ok", "parameters": {"type": "object", "properties": {}}}},
             {"type": "function", "function": {"name": "slow", "parameters": PATHOLOGICAL}}]
    status, _, body = shared_harness.chat({"tools": tools, "tool_choice": "required"})
    assert error_of(status, body, 400, "tools[1].function.parameters")["code"] == "grammar_too_complex"
    assert shared_harness.decoder.requests == []
