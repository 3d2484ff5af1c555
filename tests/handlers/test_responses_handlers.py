"""POST /v1/responses and the stored-response routes through the real app against FakeDecoder.

Each test also shows that the Responses API runs on the chat path: what reaches the decoder is the
chat request's prompt and tensors (template, guide, stop, max tokens)."""
from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from frontend.http import create_app
from frontend.decoder.interface import DecoderUnavailable
from frontend.settings import parse_args
from tests.handlers.conftest import FakeDecoder, Harness, token_responses


class KeyedHarness(Harness):
    """The harness with extra frontend options (API keys, store settings)."""

    def __init__(self, model_dir: Path, tokenizer, *args: str):
        import asyncio
        from aiohttp.test_utils import TestClient, TestServer
        self.decoder = FakeDecoder(tokenizer)
        self.app = create_app(parse_args(["--model-dir", str(model_dir), "--log-format", "text", *args]), tokenizer,
                              decoder=self.decoder)
        self.tokenizer = tokenizer
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(self.app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def call(self, method: str, path: str, body=None, key=None):
        async def go():
            headers = {"Content-Type": "application/json"}
            if key:
                headers["Authorization"] = f"Bearer {key}"
            resp = await self.client.request(method, path, data=orjson.dumps(body) if body is not None else None,
                                             headers=headers)
            return resp.status, await resp.read()
        return self.loop.run_until_complete(go())


def respond(h: Harness, body: dict, key=None):
    status, raw = h.call("POST", "/v1/responses", {"model": h.model, **body}, key) if isinstance(h, KeyedHarness) \
        else h.post("/v1/responses", {"model": h.model, **body})[::2]
    return status, raw


def post_json(h: Harness, path: str, body: dict) -> tuple[int, bytes]:
    """With the standard library's encoder: orjson cannot write the integers beyond 64 bits that
    some tests send."""
    async def go():
        resp = await h.client.post(path, data=json.dumps(body), headers={"Content-Type": "application/json"})
        return resp.status, await resp.read()
    return h.loop.run_until_complete(go())


def events_of(raw: bytes) -> list[dict]:
    out = []
    for block in raw.split(b"\n\n"):
        if not block.strip():
            continue
        lines = block.split(b"\n")
        assert lines[0].startswith(b"event: ") and lines[1].startswith(b"data: "), block
        event = orjson.loads(lines[1][6:])
        assert event["type"] == lines[0][7:].decode()
        out.append(event)
    return out


@pytest.fixture
def keyed(default_model_dir: Path, default_tokenizer, tmp_path):
    h = KeyedHarness(default_model_dir, default_tokenizer, "--responses-store", f"sqlite:{tmp_path}/r.db")
    yield h
    h.close()


def prompt_of(h: Harness, i: int = -1) -> str:
    return h.tokenizer.hf.decode(h.decoder.requests[i][1]["input_ids"][0])


def test_text_answer_is_the_chat_answer(harness: Harness):
    harness.decoder.says("Hello world")
    status, raw = respond(harness, {"input": "Hi", "instructions": "Be brief", "max_output_tokens": 7})
    body = orjson.loads(raw)
    assert status == 200, body
    assert body["object"] == "response" and body["status"] == "completed"
    [message] = body["output"]
    assert message["type"] == "message" and message["content"][0]["text"] == "Hello world"
    rid, arrays = harness.decoder.requests[0]
    assert body["id"] == rid                              # the Triton request id: server-made
    assert int(arrays["request_output_len"].item()) == 7
    assert "Be brief" in prompt_of(harness) and "Hi" in prompt_of(harness)
    assert body["usage"]["input_tokens"] == int(arrays["input_lengths"].sum())
    assert body["usage"]["output_tokens"] == len(harness.tokenizer.encode("Hello world"))
    # the same conversation as a chat request reaches the decoder as the same prompt
    harness.chat({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]})
    assert prompt_of(harness, 0) == prompt_of(harness, 1)


def test_max_output_tokens_makes_it_incomplete(harness: Harness):
    harness.decoder.says("one two three four five six")
    status, raw = respond(harness, {"input": "Hi", "max_output_tokens": 2})
    body = orjson.loads(raw)
    assert (body["status"], body["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    status, raw = respond(harness, {"input": "Hi", "max_output_tokens": 2, "stream": True})
    events = events_of(raw)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["usage"]["output_tokens"] == 2


def test_stream_events_are_typed_and_numbered(harness: Harness):
    harness.decoder.says("Hello world", reused=3)
    status, raw = respond(harness, {"input": "Hi", "stream": True})
    assert status == 200
    events = events_of(raw)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Hello world"
    final = events[-1]["response"]
    assert final["output"][0]["content"][0]["text"] == "Hello world"
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 3
    assert "[DONE]" not in raw.decode()


def test_tool_call_becomes_a_function_call_item_and_its_output_a_tool_message(harness: Harness):
    harness.decoder.says('{"city": "Paris"}')
    tool = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    status, raw = respond(harness, {"input": "Weather?", "tools": [tool],
                                    "tool_choice": {"type": "function", "name": "get_weather"}})
    body = orjson.loads(raw)
    assert status == 200, body
    [call] = body["output"]
    assert call["type"] == "function_call" and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert "guided_decoding_guide_type" in harness.decoder.requests[0][1]     # the chat path's tool guide
    # the next turn sends the call and its output back
    harness.decoder.says("It is sunny.")
    status, raw = respond(harness, {"previous_response_id": body["id"], "tools": [tool], "input": [
        {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny, 21 C"}]})
    assert status == 200, raw
    assert "sunny, 21 C" in prompt_of(harness) and "Weather?" in prompt_of(harness)


def test_streamed_tool_call_events(harness: Harness):
    harness.decoder.says('{"city": "Paris"}')
    tool = {"type": "function", "name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    status, raw = respond(harness, {"input": "Weather?", "tools": [tool], "stream": True,
                                    "tool_choice": {"type": "function", "name": "get_weather"}})
    events = events_of(raw)
    args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert json.loads(args) == {"city": "Paris"} and done[0]["arguments"] == args
    assert events[-1]["response"]["output"][0]["arguments"] == args


def test_json_schema_format_is_the_chat_guide(harness: Harness):
    harness.decoder.says('{"a": 1}')
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
              "additionalProperties": False}
    status, raw = respond(harness, {"input": "Give", "text": {"format": {"type": "json_schema", "name": "x",
                                                                           "schema": schema, "strict": True}}})
    assert status == 200, raw
    arrays = harness.decoder.requests[0][1]
    assert "guided_decoding_guide" in arrays
    assert orjson.loads(raw)["text"]["format"]["schema"] == schema


def test_two_turns_by_previous_response_id(keyed: KeyedHarness):
    keyed.decoder.says("Blue is my favourite.")
    status, raw = respond(keyed, {"input": "Your favourite colour?"})
    first = orjson.loads(raw)
    keyed.decoder.says("Because of the sky.")
    status, raw = respond(keyed, {"input": "Why?", "previous_response_id": first["id"]})
    assert status == 200, raw
    prompt = prompt_of(keyed)
    assert prompt.index("Your favourite colour?") < prompt.index("Blue is my favourite.") < prompt.index("Why?")
    status, raw = keyed.call("GET", f"/v1/responses/{orjson.loads(raw)['id']}/input_items?order=asc")
    items = orjson.loads(raw)["data"]
    assert [i["content"][0]["text"] for i in items] == ["Why?"]      # this turn's input only


def test_retrieve_delete_and_the_404_envelope(keyed: KeyedHarness):
    keyed.decoder.says("Hi there")
    body = orjson.loads(respond(keyed, {"input": "Hi", "metadata": {"k": "v"}})[1])
    status, raw = keyed.call("GET", f"/v1/responses/{body['id']}")
    assert (status, orjson.loads(raw)) == (200, body)
    status, raw = keyed.call("DELETE", f"/v1/responses/{body['id']}")
    assert (status, orjson.loads(raw)) == (200, {"id": body["id"], "object": "response.deleted", "deleted": True})
    for method, path in (("GET", f"/v1/responses/{body['id']}"), ("DELETE", f"/v1/responses/{body['id']}"),
                         ("GET", f"/v1/responses/{body['id']}/input_items"), ("GET", "/v1/responses/resp-nope")):
        status, raw = keyed.call(method, path)
        assert status == 404, (method, path)
        assert orjson.loads(raw)["error"]["code"] == "response_not_found"
    status, raw = respond(keyed, {"input": "again", "previous_response_id": body["id"]})
    assert (status, orjson.loads(raw)["error"]["param"]) == (404, "previous_response_id")


def test_store_false_keeps_nothing(keyed: KeyedHarness):
    keyed.decoder.says("Hi there")
    body = orjson.loads(respond(keyed, {"input": "Hi", "store": False})[1])
    assert body["store"] is False
    assert keyed.call("GET", f"/v1/responses/{body['id']}")[0] == 404


def test_a_stored_response_is_invisible_to_another_key(default_model_dir, default_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEYS", "key-a,key-b")
    h = KeyedHarness(default_model_dir, default_tokenizer, "--responses-store", f"sqlite:{tmp_path}/r.db")
    try:
        h.decoder.says("secret answer")
        status, raw = respond(h, {"input": "Hi"}, key="key-a")
        rid = orjson.loads(raw)["id"]
        assert h.call("GET", f"/v1/responses/{rid}", key="key-a")[0] == 200
        for method, path in (("GET", f"/v1/responses/{rid}"), ("GET", f"/v1/responses/{rid}/input_items"),
                             ("DELETE", f"/v1/responses/{rid}")):
            status, raw = h.call(method, path, key="key-b")
            assert status == 404 and b"secret" not in raw, (method, path)
        status, raw = respond(h, {"input": "more", "previous_response_id": rid}, key="key-b")
        assert status == 404
        assert h.call("GET", f"/v1/responses/{rid}", key="key-a")[0] == 200      # key-b's DELETE did nothing
        assert h.call("GET", f"/v1/responses/{rid}")[0] == 401
    finally:
        h.close()


def test_store_limits(default_model_dir, default_tokenizer, tmp_path):
    h = KeyedHarness(default_model_dir, default_tokenizer, "--responses-store", f"sqlite:{tmp_path}/r.db",
                     "--responses-max-bytes", "4000", "--responses-max-per-key", "2")
    try:
        h.decoder.says("ok")
        big = orjson.loads(respond(h, {"input": "Hi", "metadata": {f"k{i}": "v" * 500 for i in range(8)}})[1])
        assert big["store"] is False and h.call("GET", f"/v1/responses/{big['id']}")[0] == 404
        ids = [orjson.loads(respond(h, {"input": f"turn {i}"})[1])["id"] for i in range(3)]
        assert [h.call("GET", f"/v1/responses/{i}")[0] for i in ids] == [404, 200, 200]   # the oldest went
    finally:
        h.close()
    h = KeyedHarness(default_model_dir, default_tokenizer, "--responses-store", f"sqlite:{tmp_path}/t.db",
                     "--responses-ttl", "0.000001")
    try:
        h.decoder.says("ok")
        rid = orjson.loads(respond(h, {"input": "Hi"})[1])["id"]
        assert h.call("GET", f"/v1/responses/{rid}")[0] == 404          # expired at once
    finally:
        h.close()


@pytest.mark.parametrize("body, param", [
    ({"input": "Hi", "background": True}, "background"),
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": "Hi", "tool_choice": {"type": "function", "name": "nope"},
      "tools": [{"type": "function", "name": "f"}]}, "tool_choice.name"),
    ({"input": "Hi", "temperature": 3}, "temperature"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"input": "Hi", "include": ["reasoning.encrypted_content"]}, "include"),
    ({"input": "Hi", "truncation": "auto"}, "truncation"),
    ({"input": []}, "input"),
    ({"input": "Hi", "metadata": {"k": "v" * 600}}, "metadata.k"),
    ({"input": "Hi", "reasoning": {"summary": "detailed"}}, "reasoning.summary"),
    # found by the OpenAPI fuzz test: a non-string `type` was an unhashable dict key (500)
    ({"input": [{"role": "user", "content": [{"type": ["input_text"], "text": "x"}]}]}, "input[0].content[0].type"),
    ({"input": "Hi", "text": {"format": {"type": {"json": 1}}}}, "text.format.type"),
    # found by the fuzz test too: integers orjson cannot write, where the answer echoes or the store keeps
    ({"input": [{"role": "assistant", "content": [{"type": "output_text", "text": "x", "annotations": [2 ** 70]}]}]},
     "input[0].content[0].annotations[0]"),
    ({"input": "Hi", "tools": [{"type": "function", "name": "f", "parameters": {"maximum": -2 ** 64}}]},
     "tools[0].parameters.maximum"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "s", "schema": {"maximum": 2 ** 64}}}},
     "text.format.schema.maximum"),
])
def test_bad_input_names_the_field(harness: Harness, body, param):
    status, raw = post_json(harness, "/v1/responses", {"model": harness.model, **body})
    error = orjson.loads(raw)["error"]
    assert (status, error["param"]) == (400, param), error
    assert harness.decoder.requests == []


def test_failure_mid_stream_is_error_then_response_failed(harness: Harness):
    ids = harness.tokenizer.encode("Hello world")
    harness.decoder.script = lambda rid, arrays: token_responses(ids, final=False) + [DecoderUnavailable("lost")]
    status, raw = respond(harness, {"input": "Hi", "stream": True})
    events = events_of(raw)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1]["response"]["status"] == "failed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_failure_before_the_first_token_keeps_its_status(harness: Harness):
    harness.decoder.script = lambda rid, arrays: [DecoderUnavailable("gone")]
    for stream in (False, True):
        status, raw = respond(harness, {"input": "Hi", "stream": stream})
        assert (status, orjson.loads(raw)["error"]["code"]) == (503, "model_not_ready")


@pytest.fixture
def reasoning_harness(reasoning_model_dir, reasoning_tokenizer):
    h = Harness(reasoning_model_dir, reasoning_tokenizer)
    yield h
    h.close()


def test_reasoning_model_gives_a_reasoning_item_then_the_message(reasoning_harness: Harness):
    h = reasoning_harness
    h.decoder.says("Let me think.</think>\n\nThe answer.")
    body = orjson.loads(respond(h, {"input": "Why?", "reasoning": {"effort": "high"}})[1])
    assert [i["type"] for i in body["output"]] == ["reasoning", "message"], body["output"]
    assert body["output"][0]["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert body["output"][1]["content"][0]["text"] == "The answer."
    assert 0 < body["usage"]["output_tokens_details"]["reasoning_tokens"] < body["usage"]["output_tokens"]
    events = events_of(respond(h, {"input": "Why?", "stream": True})[1])
    assert "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta") == "Let me think."
    assert [e["item"]["type"] for e in events if e["type"] == "response.output_item.done"] == ["reasoning", "message"]
    # effort none: thinking off in the template, as the chat path does it
    h.decoder.says("Plain.")
    respond(h, {"input": "Why?", "reasoning": {"effort": "none"}})
    h.chat({"messages": [{"role": "user", "content": "Why?"}], "reasoning_effort": "none"})
    assert prompt_of(h, -2) == prompt_of(h, -1) and prompt_of(h, -1) != prompt_of(h, 0)


def test_stop_string_ends_the_answer_and_cancels_the_decoder(harness: Harness):
    harness.decoder.says("Hello world. And more text")
    for stream in (False, True):
        status, raw = respond(harness, {"input": "Hi", "stop": ["."], "stream": stream})
        final = events_of(raw)[-1]["response"] if stream else orjson.loads(raw)
        assert final["output"][0]["content"][0]["text"] == "Hello world" and final["status"] == "completed"
    assert harness.decoder.closed_early == [rid for rid, _ in harness.decoder.requests]   # leaving = cancelling


def test_unknown_fields_of_input_items_are_not_stored(keyed: KeyedHarness):
    """Unknown fields are ignored (and logged), so input_items does not list them as if accepted;
    one holding a 100-bit integer was a 500 when the store wrote it (found by the fuzz test)."""
    keyed.decoder.says("ok")
    status, raw = post_json(keyed, "/v1/responses",
                            {"model": keyed.model, "input": [{"role": "user", "content": "Hi", "x_unknown": 2 ** 100}]})
    assert status == 200, raw
    rid = orjson.loads(raw)["id"]
    status, raw = keyed.call("GET", f"/v1/responses/{rid}/input_items")
    [item] = orjson.loads(raw)["data"]
    assert status == 200 and "x_unknown" not in item and item["content"] == [{"type": "input_text", "text": "Hi"}]
