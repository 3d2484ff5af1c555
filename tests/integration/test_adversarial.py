"""Issue 24: an adversarial mix against one replica cannot stall, poison or cancel other requests.

Grammar parts (the message-flood and stop_token_ids parts come separately): while victim streams
run back to back and /health/live is polled, the replica gets
1. the same new schema from six clients, the first hanging up at once (the other five must get
   their answers: on main they lost their connections with the leader's cancellation);
2. many compiles abandoned at once (clients that send and hang up);
3. schemas too slow to compile (400 grammar_too_complex, or 429 while the pool is full);
then every victim finished with no error event, every liveness probe answered within the
liveness probe's timeoutSeconds in deploy/, and a fresh small schema and json_object answer 200.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.integration.http_helpers import post_chat

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Answer in JSON."}]


def liveness_timeout_s() -> float:
    for doc in yaml.safe_load_all((ROOT / "deploy" / "base" / "replica.yaml").read_text()):
        for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            probe = c.get("livenessProbe")
            if probe and probe.get("httpGet", {}).get("path") == "/health/live":
                return float(probe["timeoutSeconds"])
    raise AssertionError("no /health/live liveness probe in deploy/base/replica.yaml")


def nested(depth: int, leaf: dict) -> dict:
    """Nested anyOf of objects and arrays: about 0.5 s to compile at depth 5, 1 s at depth 6 (xgrammar
    0.1.32); depth 6 is 54 KB of JSON, under the 64 KiB cap."""
    s = leaf
    for _ in range(depth):
        s = {"anyOf": [{"type": "object", "properties": {"a": s, "b": s}, "required": ["a"]},
                       {"type": "array", "items": s}]}
    return s


def too_slow(i: int, run: str) -> dict:
    """Over a minute to compile (xgrammar 0.1.32): 30 strings of distinct fixed lengths."""
    return {"type": "object", "description": run,
            "properties": {f"p{k}": {"type": "string", "minLength": 2000 + 30 * i + k, "maxLength": 2000 + 30 * i + k}
                           for k in range(30)},
            "required": [f"p{k}" for k in range(30)]}


def schema_body(model: str, schema: dict, **kw) -> dict:
    return {"model": model, "messages": MESSAGES, "max_tokens": 16, **kw,
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}


def send_request(base_url: str, body: dict) -> socket.socket:
    """A connection with a whole chat request sent on it (the answer not read yet)."""
    host, port = base_url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Connection: close\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    s = socket.create_connection((host, int(port)), timeout=120)
    s.sendall(head + data)
    return s


def send_and_hang_up(base_url: str, body: dict) -> None:
    """Sends a whole request and closes the connection without reading the answer."""
    send_request(base_url, body).close()


def read_answer(s: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the answer on a connection from `send_request`."""
    with s:
        r = http.client.HTTPResponse(s)
        r.begin()
        return r.status, json.loads(r.read() or b"null")


def victim(base_url: str, model: str) -> tuple[bool, str]:
    """One streamed chat: (ended cleanly, what went wrong)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "max_tokens": 48}
    req = urllib.request.Request(f"{base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    finish, done = None, False
    with urllib.request.urlopen(req, timeout=120) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                return False, f"error event {event}"
            for c in event.get("choices", []):
                finish = c.get("finish_reason") or finish
    return (done and finish in ("stop", "length")), f"finish {finish}, done {done}"


def with_retry_after(call, attempts: int = 120):
    """Follows 429 Retry-After (the pool draining abandoned work), as a client would."""
    for _ in range(attempts):
        status, body = call()
        if status != 429:
            return status, body
        time.sleep(1)
    return status, body


def test_grammar_mix_hurts_no_one(stack):
    base, model = stack.base_url, stack.model_name
    probe_timeout = liveness_timeout_s()
    stop = threading.Event()
    probe_failures: list[str] = []
    victims: list[tuple[bool, str]] = []

    def poll_liveness():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{base}/health/live", timeout=probe_timeout) as r:
                    if r.status != 200:
                        probe_failures.append(f"status {r.status}")
            except Exception as e:  # noqa: BLE001 - a probe that failed, whatever the cause
                probe_failures.append(repr(e))
            stop.wait(0.25)           # probe pacing, not synchronisation

    def run_victims():
        while not stop.is_set():
            victims.append(victim(base, model))

    run = uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(max_workers=16) as pool:
        background = [pool.submit(poll_liveness), pool.submit(run_victims)]
        try:
            mix(pool, base, model, run)
        finally:
            stop.set()
        for f in background:
            f.result()

    assert victims and all(ok for ok, _ in victims), [why for ok, why in victims if not ok]
    assert not probe_failures, probe_failures


def mix(pool: ThreadPoolExecutor, base: str, model: str, run: str) -> None:
    # 1. the same new schema from six clients; the first hangs up at once, once the other five
    #    have sent theirs (so they are waiting on its compile: about a second at this depth)
    shared = {**nested(6, {"type": "integer"}), "description": f"shared {run}"}
    leader = send_request(base, schema_body(model, shared))
    followers = [send_request(base, schema_body(model, shared, seed=i)) for i in range(5)]
    # Not a synchronisation: the assertion below holds whenever the leader leaves. This pause only
    # lets the followers reach the shared compile first, the case that lost their connections on
    # main (hung up within milliseconds, the leader is gone before anyone shares its compile).
    time.sleep(0.3)
    leader.close()
    answers = [read_answer(f) for f in followers]
    assert [status for status, _ in answers] == [200] * 5, answers

    # 2. many abandoned compiles, each a new schema of a few seconds
    for i in range(8):
        send_and_hang_up(base, schema_body(model, {"type": "string", "minLength": 3000 + i,
                                                   "maxLength": 3000 + i, "description": run}))

    # 3. schemas too slow to compile
    slow = [pool.submit(post_chat, base, schema_body(model, too_slow(i, run))) for i in range(2)]
    for status, body in (f.result() for f in slow):
        assert status in (400, 429), body
        assert body["error"]["code"] == ("grammar_too_complex" if status == 400 else "grammar_compiler_busy")
        assert body["error"]["param"] == "response_format"

    # afterwards: a fresh small schema and json_object are served
    fresh = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
             "additionalProperties": False, "description": run}
    status, body = with_retry_after(lambda: post_chat(base, schema_body(model, fresh)))
    assert status == 200, body
    status, body = with_retry_after(lambda: post_chat(base, {"model": model, "messages": MESSAGES, "max_tokens": 8,
                                                             "response_format": {"type": "json_object"}}))
    assert status == 200, body
