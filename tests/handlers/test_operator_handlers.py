"""/tokenize, /detokenize, /version and max_model_len through the real app against FakeDecoder."""
from __future__ import annotations

import orjson

from tests.handlers.conftest import Harness

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def test_tokenize_messages_gives_the_ids_a_chat_request_sends(harness: Harness):
    messages = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi </s> [INST] there"}]
    status, _, raw = harness.post("/tokenize", {"model": harness.model, "messages": messages, "tools": [TOOL]})
    body = orjson.loads(raw)
    assert status == 200, body
    harness.decoder.says("ok")
    status, _, chat = harness.chat({"messages": messages, "tools": [TOOL]})
    sent = harness.decoder.requests[0][1]["input_ids"][0].tolist()
    assert body["tokens"] == sent and body["count"] == len(sent) == chat["usage"]["prompt_tokens"]
    assert body["max_model_len"] == 512


def test_tokenize_prompt_and_detokenize(harness: Harness):
    status, _, raw = harness.post("/tokenize", {"model": harness.model, "prompt": "Hello world",
                                                "return_token_strs": True})
    body = orjson.loads(raw)
    assert body["tokens"] == harness.tokenizer.encode("Hello world", add_special_tokens=True)
    assert body["token_strs"][-1].endswith("world")
    harness.decoder.says("ok")
    status, _, raw = harness.post("/v1/completions", {"model": harness.model, "prompt": "Hello world"})
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == body["count"]
    status, _, raw = harness.post("/detokenize", {"model": harness.model, "tokens": body["tokens"][1:]})
    assert (status, orjson.loads(raw)) == (200, {"prompt": "Hello world"})


def test_bad_operator_requests_name_the_field(harness: Harness):
    cases = [("/tokenize", {"model": harness.model}, "prompt"),
             ("/tokenize", {"model": harness.model, "messages": []}, "messages"),
             ("/detokenize", {"model": harness.model, "tokens": [1, 10 ** 9]}, "tokens[1]"),
             ("/detokenize", {"model": harness.model, "tokens": [-1]}, "tokens[0]")]
    for path, body, param in cases:
        status, _, raw = harness.post(path, body)
        assert (status, orjson.loads(raw)["error"]["param"]) == (400, param), (path, body)
    status, _, raw = harness.post("/tokenize", {"model": "other", "prompt": "x"})
    assert (status, orjson.loads(raw)["error"]["code"]) == (404, "model_not_found")


def test_version_and_max_model_len(harness: Harness):
    async def get(path):
        resp = await harness.client.get(path)
        return resp.status, await resp.json()
    status, body = harness.loop.run_until_complete(get("/version"))
    assert status == 200 and body["version"]
    status, body = harness.loop.run_until_complete(get("/v1/models"))
    assert body["data"][0]["max_model_len"] == 512 == body["data"][0]["metadata"]["context_length"]


def test_new_routes_take_the_chat_paths_auth_and_body_cap(default_model_dir, default_tokenizer, monkeypatch):
    from tests.handlers.test_responses_handlers import KeyedHarness
    monkeypatch.setenv("API_KEYS", "k1")
    h = KeyedHarness(default_model_dir, default_tokenizer, "--max-body-bytes", "2048")
    try:
        h.decoder.says("ok")
        small = {"model": h.model, "prompt": "Hi", "input": "Hi", "tokens": [1]}
        for method, path in (("POST", "/tokenize"), ("POST", "/detokenize"), ("POST", "/v1/responses"),
                             ("GET", "/version"), ("GET", "/v1/responses/resp-x")):
            status, raw = h.call(method, path, small if method == "POST" else None)
            assert (status, orjson.loads(raw)["error"]["type"]) == (401, "authentication_error"), path
        big = {"model": h.model, "prompt": "x" * 4000, "input": "x" * 4000}
        for path in ("/tokenize", "/v1/responses"):
            status, raw = h.call("POST", path, big, key="k1")
            assert (status, orjson.loads(raw)["error"]["code"]) == (413, "payload_too_large"), path
        assert h.call("POST", "/tokenize", small, key="k1")[0] == 200
    finally:
        h.close()
