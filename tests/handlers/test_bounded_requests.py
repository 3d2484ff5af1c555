"""Bounded work per request (issue 24, findings 6 and 7): the caps on what a request lists, and
the refusal of a text no prompt within the context can hold, each a 400 naming its field, before
any templating or tokenizing."""
from __future__ import annotations

import orjson

from frontend.http import SERVICE
from frontend.openai.request_base import MAX_CONTENT_PARTS, MAX_MESSAGES, MAX_STOP_TOKEN_IDS
from frontend.openai.structured import MAX_TOOLS
from tests.handlers.conftest import Harness


def _error(status_body):
    status, _, body = status_body
    assert status == 400, body
    return body["error"]


def test_stop_token_ids_past_the_cap_are_a_400_naming_the_field(harness: Harness):
    harness.decoder.says("fine")
    ok = harness.chat({"stop_token_ids": list(range(10, 10 + MAX_STOP_TOKEN_IDS))})
    assert ok[0] == 200
    err = _error(harness.chat({"stop_token_ids": list(range(10, 11 + MAX_STOP_TOKEN_IDS))}))
    assert err["param"] == "stop_token_ids" and err["code"] == "array_above_max_length"
    assert len(harness.decoder.requests) == 1          # the refused one never reached the decoder


def test_messages_past_the_cap_are_a_400_naming_the_field(harness: Harness):
    many = [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)
    err = _error(harness.chat({"messages": many}))
    assert err["param"] == "messages" and err["code"] == "array_above_max_length"
    assert str(MAX_MESSAGES) in err["message"]


def test_content_parts_past_the_cap_are_a_400_naming_the_message(harness: Harness):
    parts = [{"type": "text", "text": "a"}] * (MAX_CONTENT_PARTS // 2 + 1)
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": parts}]
    err = _error(harness.chat({"messages": messages}))
    assert err["param"] == "messages[2].content" and err["code"] == "array_above_max_length"


def test_the_caps_apply_to_completions_too(harness: Harness):
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "x",
                                                       "stop_token_ids": [5] * (MAX_STOP_TOKEN_IDS + 1)})
    err = orjson.loads(raw)["error"]
    assert status == 400 and err["param"] == "stop_token_ids"


def test_text_longer_than_any_prompt_in_the_context_is_refused_before_templating(harness: Harness, monkeypatch):
    """The harness decoder's context is 512 tokens: no token of this vocabulary stands for more than
    `max_token_bytes` characters, so a text longer than 512 x that cannot fit. It is refused on its
    length alone: the template never renders it and the tokenizer never sees it."""
    service = harness.app[SERVICE]
    rendered = []
    monkeypatch.setattr(service, "_render_and_encode", lambda *a: rendered.append(a) or ([1], None))
    most = 512 * service.max_token_bytes
    err = _error(harness.chat({"messages": [{"role": "user", "content": "a" * (most + 1)}]}))
    assert err["param"] == "messages" and err["code"] == "context_length_exceeded"
    assert f"{most + 1} characters" in err["message"]
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "b" * (most + 1)})
    err = orjson.loads(raw)["error"]
    assert status == 400 and err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert rendered == []


def test_token_id_prompt_longer_than_the_context_is_refused_at_once(harness: Harness):
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": [5] * 600})
    err = orjson.loads(raw)["error"]
    assert status == 400 and err["param"] == "prompt" and err["code"] == "context_length_exceeded"
    assert harness.decoder.requests == []


# ---- /v1/responses: the same caps on its lists (input items, their content parts, tools) ----------

def _responses_error(harness: Harness, body: dict) -> dict:
    status, _, raw = harness.post("/v1/responses", {"model": harness.model, **body})
    assert status == 400, raw
    return orjson.loads(raw)["error"]


def test_responses_input_items_past_the_cap_are_refused_on_count(harness: Harness):
    """Refused before any item is validated: the last item's bad type is never looked at."""
    items = [{"role": "user", "content": "hi"}] * MAX_MESSAGES + [{"type": "no_such_item"}]
    err = _responses_error(harness, {"input": items})
    assert err["param"] == "input" and err["code"] == "array_above_max_length"
    assert str(MAX_MESSAGES) in err["message"]
    assert harness.decoder.requests == []


def test_responses_content_parts_of_all_items_count_against_one_cap(harness: Harness):
    half = MAX_CONTENT_PARTS // 2
    text = [{"type": "input_text", "text": "a"}]
    items = [{"role": "user", "content": text * half},
             {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c1", "output": text * half},
             {"type": "reasoning", "summary": [{"type": "summary_text", "text": "s"}]},
             {"role": "user", "content": "next"}]
    err = _responses_error(harness, {"input": items})
    assert err["param"] == "input[3].summary" and err["code"] == "array_above_max_length"
    items[0]["content"] = text * (half + 1)
    err = _responses_error(harness, {"input": items})
    assert err["param"] == "input[2].output" and err["code"] == "array_above_max_length"
    assert harness.decoder.requests == []


def test_responses_tools_past_the_cap_are_refused_on_count(harness: Harness):
    tools = [{"type": "function", "name": f"f{i}"} for i in range(MAX_TOOLS)] + [{"type": "web_search"}]
    err = _responses_error(harness, {"input": "hi", "tools": tools})
    assert err["param"] == "tools" and err["code"] == "array_above_max_length"
    assert str(MAX_TOOLS) in err["message"]


def test_responses_stop_token_ids_have_the_chat_cap(harness: Harness):
    err = _responses_error(harness, {"input": "hi", "stop_token_ids": [5] * (MAX_STOP_TOKEN_IDS + 1)})
    assert err["param"] == "stop_token_ids" and err["code"] == "array_above_max_length"
