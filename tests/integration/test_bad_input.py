"""Hostile and malformed input: every case is a 4xx with the error envelope (never a 500, never a
hang), and the server keeps serving afterwards (/health and a normal request)."""
from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

from frontend.openai.request_base import MAX_MESSAGES
from llama_triton.defaults import DECODER_GRAMMAR_COMPILE_TIMEOUT_S, GRAMMAR_COMPILE_TIMEOUT_S
from tests.integration.frontends import extra_frontend

pytestmark = pytest.mark.timeout(300)

CHAT = "/v1/chat/completions"
# The hang guard of every request here (its socket timeout): an answer that does not come within it
# fails the test with a timeout. Timing is never asserted beyond that (a loaded machine is slow).
CASE_TIMEOUT = 30.0
# A guide is compiled twice at most: the frontend's check (its deadline covers waiting for a worker
# and compiling) and the decoder's own compile; a guide request is answered within both deadlines
# and the hang guard (llama_triton/defaults.py).
GUIDE_TIMEOUT = GRAMMAR_COMPILE_TIMEOUT_S + DECODER_GRAMMAR_COMPILE_TIMEOUT_S + CASE_TIMEOUT
# An external stack (LLAMA_TRITON_EXTERNAL_URL) may require a key; extra frontends here have none.
AUTH = {"Authorization": f"Bearer {os.environ['LLAMA_TRITON_API_KEY']}"} if os.environ.get("LLAMA_TRITON_API_KEY") else {}
AUTH_LINE = "".join(f"{k}: {v}\r\n" for k, v in AUTH.items()).encode()


def send(base: str, path: str, raw: bytes, headers: dict | None = None, timeout: float = CASE_TIMEOUT):
    req = urllib.request.Request(f"{base}{path}", data=raw,
                                 headers={"Content-Type": "application/json", **AUTH, **(headers or {})})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), time.monotonic() - t0
    except urllib.error.HTTPError as e:
        return e.code, e.read(), time.monotonic() - t0


def assert_error_envelope(status: int, raw: bytes, expected=range(400, 500), param=None, code=None):
    assert status in expected, (status, raw[:300])
    body = json.loads(raw)
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, body
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_still_serving(stack, base: str | None = None):
    base = base or stack.base_url
    with urllib.request.urlopen(f"{base}/health", timeout=10) as r:
        assert r.status == 200
    status, raw, _ = send(base, CHAT, json.dumps({"model": stack.model_name, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "Hi"}]}).encode())
    assert status == 200, raw[:300]


def chat(model: str, /, **fields) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    body.update(fields)
    return json.dumps(body).encode()


# ----------------------------------------------------------------------------- malformed JSON and wrong types

MALFORMED = [
    b"", b"{", b"}", b"nul", b"[]", b'"a string"', b"123", b"true", b'{"model": }', b'{"model": "x",}',
    b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": "Hi"}]} trailing',
    b'{"model": NaN}', b"\xef\xbb\xbf{}",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda r: repr(r[:24]))
def test_malformed_json(stack, raw):
    status, body, _ = send(stack.base_url, CHAT, raw)
    assert_error_envelope(status, body, expected=(400,))
    assert_still_serving(stack)


WRONG_TYPES = [
    ("model", 5), ("messages", 5), ("messages", [5]), ("messages", [{"role": "user", "content": 5}]),
    ("messages", [{"role": 5, "content": "x"}]), ("messages", [{"role": "pirate", "content": "x"}]),
    ("messages", [{"content": "x"}]), ("messages", []), ("temperature", "hot"), ("temperature", [1]),
    ("max_tokens", [1]), ("max_tokens", 1.5), ("max_tokens", 1e400), ("n", 1.5), ("n", {"a": 1}),
    ("stream", {"a": 1}), ("stop", 5), ("stop", [5]), ("stop", [""]), ("logit_bias", "x"),
    ("logit_bias", {"abc": 1}), ("logit_bias", {"5": "high"}), ("tools", "x"), ("tools", [{"type": "nope"}]),
    ("tool_choice", 5), ("response_format", 5), ("response_format", {"type": "nope"}),
    ("stream_options", "x"), ("seed", "x"), ("top_logprobs", "x"), ("logprobs", {"a": 1}),
    ("temperature", 1e309), ("chat_template_kwargs", "x"),
]


@pytest.mark.parametrize("field,value", WRONG_TYPES, ids=[f"{f}={str(v)[:20]}" for f, v in WRONG_TYPES])
def test_wrong_types(stack, field, value):
    raw = chat(stack.model_name, **{field: value}) if value != 1e400 else \
        chat(stack.model_name).replace(b'"max_tokens": 2', b'"max_tokens": 1e400')
    status, body, _ = send(stack.base_url, CHAT, raw)
    assert_error_envelope(status, body, expected=(400,))
    assert_still_serving(stack)


# ----------------------------------------------------------------------------- size limits

def raw_http(port: int, head: bytes, body_parts=(), read_timeout: float = 10.0) -> tuple[int, bytes, int]:
    """Sends a request over a bare socket, stopping as soon as the server answers.

    Returns (status, response body, request body bytes sent)."""
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head)
        for part in body_parts:
            s.setblocking(False)
            try:
                response += s.recv(65536)
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            s.setblocking(True)
            s.settimeout(read_timeout)
            if response:
                break
            try:
                s.sendall(part)
                sent += len(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        s.setblocking(True)
        s.settimeout(read_timeout)
        try:
            while b"\r\n\r\n" not in response:
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
            head_end = response.find(b"\r\n\r\n")
            length = 0
            for line in response[:head_end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(response) < head_end + 4 + length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                response += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    status = int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0
    return status, response.split(b"\r\n\r\n", 1)[-1], sent


def test_huge_declared_body_is_refused_before_it_is_read(stack):
    # Content-Length says 100 MB; we send 10 bytes and wait: the 413 must come without the body.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + AUTH_LINE
            + b"Content-Length: 100000000\r\n\r\n{\"model\":")
    # Unanswered until the body came, raw_http would time out with no response (status 0).
    status, response, _ = raw_http(stack.port, head)
    assert_error_envelope(status, response, expected=(413,), code="payload_too_large")
    assert_still_serving(stack)


def test_chunked_body_is_cut_at_the_limit(stack, default_model_dir):
    limit = 64 * 1024
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--max-body-bytes", str(limit),
                        "--served-model-name", stack.model_name) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 8192
        chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        parts = [b'a\r\n{"model": \r\n'] + [chunk] * 2000          # 16 MB offered, limit 64 KiB
        status, response, sent = raw_http(port, head, parts)
        assert_error_envelope(status, response, expected=(413,), code="payload_too_large")
        assert sent < 16 * 2**20, sent          # the server answered long before the whole body
        print(f"\nchunked upload: 413 after {sent / 2**20:.2f} MiB sent (limit {limit / 1024:.0f} KiB)")
        # Just under the limit is still read and parsed (a 400 for bad JSON, not a 413).
        status, raw, _ = send(base, CHAT, b"{" + b" " * (limit - 10) + b"}")
        assert status == 400, raw[:200]
        assert_still_serving(stack, base)


# ----------------------------------------------------------------------------- content edge cases

def test_thousands_of_messages(stack):
    # Nearly as many as a request may hold (MAX_MESSAGES; odd, so a user turn is last): each takes
    # several tokens, past the context.
    count = MAX_MESSAGES - 1
    assert count * 4 > context_length(stack)
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"m{i}"} for i in range(count)]
    raw = json.dumps({"model": stack.model_name, "messages": messages, "max_tokens": 2}).encode()
    status, body, took = send(stack.base_url, CHAT, raw)
    assert_error_envelope(status, body, expected=(400,), code="context_length_exceeded")
    # One more is past the cap: refused on the count alone, naming the field.
    over = json.dumps({"model": stack.model_name, "messages": messages + messages[:2], "max_tokens": 2}).encode()
    status, body, _ = send(stack.base_url, CHAT, over)
    assert_error_envelope(status, body, expected=(400,), param="messages", code="array_above_max_length")
    print(f"\n{count} messages: 400 in {took:.2f} s")
    assert_still_serving(stack)


def context_length(stack) -> int:
    req = urllib.request.Request(f"{stack.base_url}/v1/models", headers=AUTH)
    with urllib.request.urlopen(req, timeout=10) as r:
        card = json.loads(r.read())["data"][0]
    return (card.get("metadata") or {}).get("context_length") or 4096


def test_prompt_over_the_context_on_both_routes(stack):
    limit = context_length(stack)
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name, messages=[
        {"role": "user", "content": "word " * (limit + 10)}]))
    assert_error_envelope(status, body, expected=(400,), code="context_length_exceeded")
    status, body, _ = send(stack.base_url, "/v1/completions", json.dumps(
        {"model": stack.model_name, "prompt": [5] * (limit + 1), "max_tokens": 2}).encode())
    assert_error_envelope(status, body, expected=(400,), code="context_length_exceeded")
    assert_still_serving(stack)


def test_invalid_utf8_in_the_body(stack):
    for raw in (b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}',
                b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": "a\xc3"}]}',
                b'{"model": "\xed\xa0\x80", "messages": []}'):
        status, body, _ = send(stack.base_url, CHAT, raw)
        assert_error_envelope(status, body, expected=(400,))
    # A lone surrogate written as a JSON escape is valid JSON but not valid text.
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name).replace(b'"Hi"', b'"\\ud800x"'))
    assert status in (200, 400) and (status == 200 or json.loads(body)["error"])
    assert_still_serving(stack)


def test_nul_bytes(stack):
    # Escaped NUL inside a string is valid JSON and valid text: served like any character.
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name, messages=[
        {"role": "user", "content": "a\u0000b\u0000" * 50}]))
    assert status == 200, body[:300]
    # A raw NUL byte is a control character JSON does not allow inside strings, and garbage outside.
    for raw in (b'{"model": "llama2-tiny", "messages": [{"role": "user", "content": "a\x00b"}]}',
                b'{"model": "llama2-tiny"\x00, "messages": []}'):
        status, body, _ = send(stack.base_url, CHAT, raw)
        assert_error_envelope(status, body, expected=(400,))
    assert_still_serving(stack)


def nested(depth: int, open_: str, leaf: str, close: str) -> str:
    return open_ * depth + leaf + close * depth


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


def test_deeply_nested_json(stack):
    head = f'{{"model": "{stack.model_name}", '
    user = '"messages": [{"role": "user", "content": "x"}]'
    for depth in (10_000, 100_000):
        # Nesting in an ignored field, in the messages, in a schema and in tool parameters.
        raws = [
            head + user + ', "extra": ' + nested(depth, "[", '"x"', "]") + "}",
            head + '"messages": ' + nested(depth, "[", '"x"', "]") + "}",
            head + user + ', "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": '
            + nested(depth, '{"items": ', "{}", "}") + "}}}",
            head + user + ', "tools": [{"type": "function", "function": {"name": "f", "parameters": '
            + nested(depth, '{"a": ', "{}", "}") + "}}]}",
        ]
        for raw in raws:
            json.loads(raw) if depth < 500 else None
            status, body, _ = send(stack.base_url, CHAT, raw.encode())
            assert_error_envelope(status, body, expected=(400,))
    # Nesting the JSON parser accepts but a grammar compiler might choke on: bounded, never a 500.
    for depth in (20, 60):
        schema = nested_schema(depth)
        for fields in ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}},
                       {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}],
                        "tool_choice": "required"}):
            status, body, took = send(stack.base_url, CHAT, chat(stack.model_name, max_tokens=4, **fields),
                                      timeout=GUIDE_TIMEOUT)
            print(f"\nschema nested {depth} levels in {list(fields)[0]}: {status} in {took:.2f} s")
            assert status in (200, 400, 429), (depth, status, body[:300])
            if status != 200:
                assert_error_envelope(status, body, expected=(400, 429))
    assert_still_serving(stack)


def test_regexes_that_blow_up_a_grammar_compiler(stack):
    # response_format {type: regex} reaches the grammar compiler: the output is held to the regex.
    # (This was a self-skip "when regex is not wired", which could pass with regex guides broken.)
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name, max_tokens=3,
                                                      response_format={"type": "regex", "regex": "[ab]{3}"}))
    assert status == 200, body[:300]
    content = json.loads(body)["choices"][0]["message"]["content"]
    assert set(content) <= {"a", "b"} and len(content) <= 3, content
    bombs = ["((a{1,100}){1,100}){1,100}", "(" * 5000 + "a" + ")" * 5000, "[a-z]{1,100000}",
             "(a|b|c|d|e|f|g|h){1000}(x{1000}){1000}"]
    for regex in bombs:
        # Bounded by the compile deadlines (GUIDE_TIMEOUT, the socket timeout), never unbounded.
        status, body, took = send(stack.base_url, CHAT, chat(
            stack.model_name, max_tokens=2, response_format={"type": "regex", "regex": regex}),
            timeout=GUIDE_TIMEOUT)
        print(f"\nregex {regex[:30]!r}...: {status} in {took:.2f} s")
        assert status in (200, 400, 429), (status, body[:300])
        if status != 200:
            assert_error_envelope(status, body, expected=(400, 429))
    for regex in ("(", "a{2,1}", "[z-a]", "\\"):
        status, body, _ = send(stack.base_url, CHAT, chat(
            stack.model_name, response_format={"type": "regex", "regex": regex}))
        assert_error_envelope(status, body, expected=(400,), param="response_format")
    assert_still_serving(stack)


# ----------------------------------------------------------------------------- limits, at and past the edge

AT_LIMIT = [
    {"n": 4, "max_tokens": 48, "logprobs": True, "top_logprobs": 20},
    {"n": 4, "max_tokens": 48, "logprobs": True, "top_logprobs": 20, "stream": True},
    {"max_tokens": 1_000_000},
    {"stop": [f"s{i}" for i in range(16)]},
    {"logit_bias": {str(i): 100 for i in range(300)}},
    {"stop": ["x" * 20000]},
]


@pytest.mark.parametrize("fields", AT_LIMIT, ids=lambda f: ",".join(f)[:40])
def test_at_the_limits_is_served(stack, fields):
    status, body, took = send(stack.base_url, CHAT, chat(stack.model_name, **fields), timeout=120)
    assert status == 200, body[:300]
    assert_still_serving(stack)


PAST_LIMIT = [
    ({"n": 5}, "n"), ({"n": 0}, "n"), ({"max_tokens": 1_000_001}, "max_tokens"), ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 10**12}, "max_completion_tokens"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": -1}, "top_logprobs"), ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    ({"logit_bias": {"32000": 1}}, "logit_bias"), ({"logit_bias": {"5": 100.5}}, None),
    ({"seed": 2**64}, "seed"), ({"temperature": -0.1}, "temperature"),
]


@pytest.mark.parametrize("fields,param", PAST_LIMIT, ids=lambda f: str(f)[:40])
def test_past_the_limits_is_400(stack, fields, param):
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name, **fields))
    err = assert_error_envelope(status, body, expected=(400,))
    if param is not None:
        assert err["param"] is not None and err["param"].split("[")[0].split(".")[0] == param, err
    assert_still_serving(stack)


def test_legacy_completions_limits(stack):
    for fields, code in (({"logprobs": 6}, 400), ({"best_of": 2}, 400), ({"prompt": []}, 400),
                         ({"prompt": [-1]}, 400), ({"prompt": [10**10]}, 400), ({"echo": "x"}, 400)):
        body = {"model": stack.model_name, "prompt": "Hi", "max_tokens": 2, **fields}
        status, raw, _ = send(stack.base_url, "/v1/completions", json.dumps(body).encode())
        assert_error_envelope(status, raw, expected=(code,))
    assert_still_serving(stack)


def test_wrong_method_route_and_content_type(stack):
    for path, method, expected in (("/v1/chat/completions", "GET", 405), ("/v1/nope", "POST", 404),
                                   ("/v1/models", "POST", 405), ("/../../etc/passwd", "GET", 404)):
        req = urllib.request.Request(f"{stack.base_url}{path}", method=method, headers=AUTH,
                                     data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert_error_envelope(e.value.code, e.value.read(), expected=(expected,))
    # A JSON body sent as text/plain is still parsed as JSON (clients get this wrong often).
    status, body, _ = send(stack.base_url, CHAT, chat(stack.model_name), {"Content-Type": "text/plain"})
    assert status == 200, body[:200]
    assert_still_serving(stack)


def test_oversized_headers_do_not_break_the_server(stack):
    # aiohttp's HTTP parser answers these itself (a plain 4xx: no envelope is possible before routing).
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    status, response, _ = raw_http(stack.port, head)
    assert 400 <= status < 500, response[:200]
    assert_still_serving(stack)
