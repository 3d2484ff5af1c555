"""The OpenAPI document describes the Responses API and the operator endpoints from the models the
handlers use, and what the Responses builders produce matches the documented answers.

tests/integration/test_fuzz.py drives every documented operation against a live server; this
checks the document's shape and, without a server, the answers a fuzzer rarely reaches (tool
calls, reasoning, JSON-schema formats, failures)."""
from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from frontend.http.openapi import build_openapi
from frontend.openai.responses.api import _input_items_for_store
from frontend.openai.responses.output import OutputAssembler, response_object, usage
from frontend.openai.responses.request import ResponsesRequest


@pytest.fixture(scope="module")
def doc() -> dict:
    return json.loads(json.dumps(build_openapi()))


def validator(doc: dict, name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def schema_ref(operation: dict) -> dict:
    return operation["requestBody"]["content"]["application/json"]["schema"]


def test_every_responses_and_operator_route_is_documented(doc):
    paths = doc["paths"]
    for prefix in ("/v1", "/v1/openai"):
        assert set(paths[f"{prefix}/responses"]) == {"post"}
        assert set(paths[f"{prefix}/responses/{{id}}"]) == {"get", "delete"}
        assert set(paths[f"{prefix}/responses/{{id}}/input_items"]) == {"get"}
        assert set(paths[f"{prefix}/responses/{{id}}/cancel"]) == {"post"}
    assert set(paths["/tokenize"]) == {"post"} and set(paths["/detokenize"]) == {"post"}
    assert set(paths["/version"]) == {"get"}
    # request bodies are the models the handlers parse with
    assert schema_ref(paths["/v1/responses"]["post"]) == {"$ref": "#/components/schemas/ResponsesRequest"}
    assert [s["$ref"] for s in schema_ref(paths["/tokenize"]["post"])["anyOf"]] == [
        "#/components/schemas/TokenizeChatRequest", "#/components/schemas/TokenizePromptRequest"]
    assert schema_ref(paths["/detokenize"]["post"]) == {"$ref": "#/components/schemas/DetokenizeRequest"}
    items = paths["/v1/responses/{id}/input_items"]["get"]
    limit = next(p for p in items["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 100)
    for op in (paths["/v1/responses/{id}"]["get"], paths["/v1/responses/{id}"]["delete"], items):
        assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    schemas = doc["components"]["schemas"]
    # the request schema carries the handlers' ranges
    top_k = schemas["ResponsesRequest"]["properties"]["top_k"]
    assert {"type": "integer", "minimum": -1, "exclusiveMaximum": 1000} in top_k["anyOf"]
    assert "return_token_strs" in schemas["TokenizeChatRequest"]["properties"]
    assert not any(name.startswith("frontend__") for name in schemas)      # no clashing model names


def request(**body) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", "input": "Hi", **body})


def built(req: ResponsesRequest, chat_items: list, status: str = "completed", **kw) -> dict:
    assembler = OutputAssembler()
    assembler.add(chat_items)
    assembler.finish(status)
    return response_object(req, id="resp_1", model="m", created_at=1, status=status, output=assembler.items,
                           usage=usage(10, 5, 2, 1), **kw)


TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@pytest.mark.parametrize("req, items, kw", [
    (request(), [("content", "Hello")], {}),
    (request(max_output_tokens=3), [("content", "Hel")], {"incomplete_reason": "max_output_tokens"}),
    (request(tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False),
     [("tool_calls", [{"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city"'}}]),
      ("tool_calls", [{"function": {"arguments": ': "Oslo"}'}}])], {}),
    (request(reasoning={"effort": "low"}, metadata={"k": "v"}),
     [("reasoning_content", "think"), ("content", "answer")], {}),
    (request(text={"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True,
                              "description": "d"}}), [("content", "{}")], {}),
    (request(text={"format": {"type": "json_object"}}, store=False), [("content", "{}")], {"store": False}),
    (request(), [], {"error": {"code": "server_error", "message": "boom"}}),
], ids=["text", "incomplete", "tool_call", "reasoning", "json_schema", "json_object", "failed"])
def test_built_responses_match_the_documented_response_object(doc, req, items, kw):
    status = "incomplete" if kw.get("incomplete_reason") else "failed" if kw.get("error") else "completed"
    obj = built(req, items, status, **kw)
    errors = sorted(validator(doc, "ResponseObject").iter_errors(obj), key=str)
    assert not errors, errors[0]


def test_input_items_and_deletion_match_their_documented_answers(doc):
    req = request(input=[
        {"role": "user", "content": "Hi"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
        {"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}])
    data = _input_items_for_store(req)
    page = {"object": "list", "data": data, "first_id": data[0]["id"], "last_id": data[-1]["id"], "has_more": False}
    assert not list(validator(doc, "InputItemList").iter_errors(page))
    assert not list(validator(doc, "ResponseDeleted").iter_errors(
        {"id": "resp_1", "object": "response.deleted", "deleted": True}))
    # and the schema is not vacuous
    assert list(validator(doc, "InputItemList").iter_errors({**page, "data": [{"type": "message"}]}))
