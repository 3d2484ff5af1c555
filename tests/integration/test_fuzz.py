"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis + hypothesis).

Every operation of `/openapi.json` gets generated requests, schema-valid ("positive") and
schema-invalid ("negative"). Checked on every answer: no 5xx, a documented status code and content
type, JSON bodies that match the documented response schema (error envelope included), and for
streams every `data:` event a valid chunk or error envelope, ended by `data: [DONE]`. Most
generated bodies name the served model, so they reach the decoder rather than stopping at a 404.

The Responses API is fuzzed the same way: its streams are checked event by event (typed events
numbered from 0, every `response.*` event a valid Response, ended by `response.completed`,
`response.incomplete` or `response.failed`), and 3 in 4 calls to a stored response's routes name
a response that exists (the rest a random id: a 404), so retrieval, input items and deletion are
checked against their documented answers too.

CI-sized by default (FUZZ_EXAMPLES per operation and mode, 20): about two minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request

import pytest

import schemathesis  # the test extra (pyproject.toml): a missing one is an error, not a skip
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from jsonschema import Draft202012Validator  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi import checks as openapi_checks  # noqa: E402

pytestmark = pytest.mark.timeout(600)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
AUTH = {"Authorization": f"Bearer {os.environ['LLAMA_TRITON_API_KEY']}"} if os.environ.get("LLAMA_TRITON_API_KEY") else {}
CALL_TIMEOUT = 60.0
JSON_CHECKS = [not_a_server_error, openapi_checks.status_code_conformance, openapi_checks.content_type_conformance,
               openapi_checks.response_schema_conformance, openapi_checks.negative_data_rejection]
# SSE bodies are validated here event by event: the document describes the stream as a string.
SSE_CHECKS = [not_a_server_error, openapi_checks.status_code_conformance, openapi_checks.content_type_conformance]
counts: dict = {}


@pytest.fixture(scope="module")
def openapi_doc(stack) -> dict:
    with urllib.request.urlopen(f"{stack.base_url}/openapi.json", timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def api_schema(stack, openapi_doc):
    schema = schemathesis.openapi.from_dict(openapi_doc)
    schema.config.update(base_url=stack.base_url, headers=AUTH or None)
    schema.config.max_stream_events = 100_000   # read whole streams (the default stops after a few events)
    return schema


@pytest.fixture(scope="module")
def event_validators(openapi_doc):
    components = openapi_doc["components"]

    def validator(name):
        return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": components})
    return {"chat": validator("ChatCompletionChunk"), "completion": validator("CompletionChunk"),
            "error": validator("ErrorResponse"), "response": validator("ResponseObject")}


def create_response(stack) -> str:
    """A stored response (one token) for the stored-response routes to find."""
    req = urllib.request.Request(f"{stack.base_url}/v1/responses", data=json.dumps(
        {"model": stack.model_name, "input": "Hello", "max_output_tokens": 1}).encode(),
        headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as r:
        return json.loads(r.read())["id"]


@pytest.fixture(scope="module")
def stored_response(stack) -> str:
    return create_response(stack)


def operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation (the same document the server serves)."""
    from frontend.http.openapi import build_openapi
    doc = build_openapi(auth=False)
    return [(method.upper(), path) for path, item in doc["paths"].items() for method in item]


def header(response, name: str) -> str:
    for key, value in response.headers.items():
        if key.lower() == name.lower():
            return value[0] if isinstance(value, list) else value
    return ""


RESPONSE_STREAM_ENDS = ("response.completed", "response.incomplete", "response.failed")


def check_responses_sse(response, validators) -> None:
    """A Responses stream: `event: <type>` + `data: <JSON>` per event, `type` and `sequence_number`
    (0, 1, ...) in every one, each `response.*` event a valid Response, a known ending, no [DONE]."""
    text = response.content.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    events = text.split("\n\n")[:-1]
    types = []
    for n, event in enumerate(events):
        kind, _, data = event.partition("\n")
        assert kind.startswith("event: ") and data.startswith("data: "), event[:200]
        body = json.loads(data[len("data: "):])
        assert body["type"] == kind[len("event: "):] and body["sequence_number"] == n, event[:300]
        types.append(body["type"])
        if body["type"].startswith("response.") and "response" in body:
            errors = sorted(validators["response"].iter_errors(body["response"]), key=str)
            assert not errors, f"{errors[0].message} in {event[:300]}"
        if body["type"] == "error":
            assert isinstance(body["message"], str) and body["message"], event[:300]
    assert types[:2] == ["response.created", "response.in_progress"], types
    assert types[-1] in RESPONSE_STREAM_ENDS and not any(t in RESPONSE_STREAM_ENDS for t in types[:-1]), types
    assert (types[-2] == "error") == (types[-1] == "response.failed"), types


def check_sse(response, path: str, validators) -> None:
    if "/responses" in path:
        return check_responses_sse(response, validators)
    text = response.content.decode("utf-8")
    assert text.endswith("\n\n"), text[-200:]
    events = text.split("\n\n")[:-1]
    assert events and events[-1] == "data: [DONE]", events[-3:]
    chunk = validators["chat" if "chat" in path else "completion"]
    for event in events[:-1]:
        assert event.startswith("data: "), event[:200]
        data = json.loads(event[len("data: "):])
        which = validators["error"] if "error" in data else chunk
        errors = sorted(which.iter_errors(data), key=str)
        assert not errors, f"{errors[0].message} in {event[:300]}"


# The schemathesis pytest plugin (`schemathesis.pytest.from_fixture`) does not run under pytest 9, so
# the operations are parametrized here and each one drives hypothesis with its own strategy.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method,path", operations(), ids=[f"{m} {p}" for m, p in operations()])
def test_api_conforms_to_its_openapi_document(api_schema, stack, event_validators, stored_response, method, path,
                                              mode):
    operation = api_schema[path][method]
    try:
        strategy = operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode))
    except Exception as e:     # e.g. nothing can be negative about a GET without parameters
        pytest.skip(f"no {mode} cases for {method} {path}: {e}")
    calls = []

    @given(strategy)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    def run(case):
        body = case.body
        # 3 in 4 reach the decoder; the rest keep a random name. Only a string name is replaced: a
        # negative case whose one violation is `model` itself (null, a number) must stay invalid.
        if isinstance(body, dict) and isinstance(body.get("model"), str) and len(calls) % 4:
            body["model"] = stack.model_name
        # Likewise 3 in 4 calls to a stored response's routes name one that exists (a new one for
        # each deletion); only a string id is replaced.
        params = case.path_parameters or {}
        if isinstance(params.get("id"), str) and len(calls) % 4:
            params["id"] = create_response(stack) if method == "DELETE" else stored_response
        t0 = time.monotonic()
        response = case.call(timeout=CALL_TIMEOUT)
        assert time.monotonic() - t0 < CALL_TIMEOUT
        calls.append(response.status_code)
        if "text/event-stream" in header(response, "Content-Type"):
            case.validate_response(response, checks=SSE_CHECKS)
            check_sse(response, path, event_validators)
        else:
            case.validate_response(response, checks=JSON_CHECKS)

    try:
        run()
    except Unsatisfiable:
        pytest.skip(f"no {mode} cases for {method} {path}")
    for status in calls:
        key = (f"{method} {path}", status)
        counts[key] = counts.get(key, 0) + 1


# ----------------------------------------------------------------------------- plausible requests, deeper

def plausible_chat_bodies(model: str):
    """Bodies a real client could send: valid messages and mostly in-range knobs, sometimes just past
    a range, so that most of them reach the decoder (the schema-driven run stops at 400s mostly)."""
    from hypothesis import strategies as st
    text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
    message = st.one_of(
        st.fixed_dictionaries({"role": st.just("user"), "content": text}),
        st.fixed_dictionaries({"role": st.just("user"), "content": st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": text}), min_size=1, max_size=3)}))
    history = st.lists(st.tuples(text, text), max_size=2).map(
        lambda turns: [m for u, a in turns for m in ({"role": "user", "content": u},
                                                     {"role": "assistant", "content": a})])
    knobs = {
        "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 999),
        "min_p": st.floats(0, 1), "n": st.integers(0, 5), "max_tokens": st.one_of(st.none(), st.integers(-1, 40)),
        "seed": st.integers(-(2 ** 63), 2 ** 64 - 1), "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2), "repetition_penalty": st.floats(0.01, 5),
        "stop": st.one_of(text.filter(bool), st.lists(text.filter(bool), max_size=17)), "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "logprobs": st.booleans(), "top_logprobs": st.integers(0, 21),
        "logit_bias": st.dictionaries(st.integers(0, 32010).map(str), st.floats(-100, 100), max_size=5),
        "min_tokens": st.integers(0, 10), "stop_token_ids": st.lists(st.integers(0, 32005), max_size=3),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "regex", "regex": "[a-c]{1,8}"},
                                            {"type": "json_schema", "json_schema": {"name": "s", "schema": {
                                                "type": "object", "properties": {"a": {"type": "integer"}}}}}]),
        "user": text,
    }
    return st.fixed_dictionaries({"model": st.just(model), "messages": st.tuples(history, message).map(
        lambda hm: hm[0] + [hm[1]])}, optional=knobs)


def test_plausible_requests_never_fail_the_server(stack, openapi_doc, event_validators):
    from hypothesis import given
    components = openapi_doc["components"]
    full = Draft202012Validator({"$ref": "#/components/schemas/ChatCompletionResponse", "components": components})
    seen: dict = {}

    @given(plausible_chat_bodies(stack.model_name))
    @settings(max_examples=2 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(body):
        data = json.dumps(body).encode()
        req = urllib.request.Request(f"{stack.base_url}/v1/chat/completions", data=data,
                                     headers={"Content-Type": "application/json", **AUTH})
        try:
            with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        seen[status] = seen.get(status, 0) + 1
        assert status in (200, 400, 429), (status, raw[:300], body)
        if "event-stream" in ctype:
            check_sse(type("R", (), {"content": raw})(), "chat", event_validators)
            return
        doc = json.loads(raw)
        validator = full if status == 200 else event_validators["error"]
        errors = sorted(validator.iter_errors(doc), key=str)
        assert not errors, (errors[0].message, raw[:300])

    run()
    print(f"\nplausible chat requests by status: {seen}")
    assert seen.get(200, 0) >= EXAMPLES // 4, seen      # a good share of them reached the decoder


def test_server_still_serves_after_fuzzing(stack):
    with urllib.request.urlopen(f"{stack.base_url}/health", timeout=10) as r:
        assert r.status == 200
    req = urllib.request.Request(f"{stack.base_url}/v1/chat/completions", data=json.dumps(
        {"model": stack.model_name, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).encode(),
        headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200
    summary = {f"{op} {status}": n for (op, status), n in sorted(counts.items(), key=str)}
    print(f"\nfuzz: {sum(summary.values())} requests by route and status: {summary}")
