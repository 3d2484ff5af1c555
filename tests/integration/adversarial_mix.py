"""The adversarial mix of issue 24, as requests: what tests/integration/test_adversarial.py sends
against one replica while a victim stream runs, and what benchmarks/adversarial_gap.py repeats to
measure the victim's inter-token gaps. Plain request builders and senders; the assertions are the
test's.

Grammar parts:
  * the same new schema from six clients, the first hanging up (`shared_schema_leader_hangs_up`);
  * compiles abandoned: clients that send a new schema and hang up while it compiles (`abandon_compiles`);
  * schemas too slow to compile: killed at the compile deadline (`too_slow`).
Body parts (`flood_bodies`), each refused with a 400 naming the field:
  * 120,000 short messages just under the body limit;
  * as many messages as allowed, filled with text up to the body limit;
  * a flood of stop_token_ids (over a million ids) just under the body limit;
and a request at the caps (`at_caps_body`) that the decoder serves.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import yaml

from frontend.openai.request_base import MAX_MESSAGES, MAX_STOP_TOKEN_IDS
from frontend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BODY_LIMIT = Settings(model_dir="", served_model_name="").max_body_bytes     # the stacks' default
MESSAGES = [{"role": "user", "content": "Answer in JSON."}]
AT_CAPS_TOKENS = 24


def liveness_timeout_s() -> float:
    """The livenessProbe's timeoutSeconds of the replica's Deployment (deploy/base/replica.yaml)."""
    for doc in yaml.safe_load_all((ROOT / "deploy" / "base" / "replica.yaml").read_text()):
        for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            probe = c.get("livenessProbe")
            if probe and probe.get("httpGet", {}).get("path") == "/health/live":
                return float(probe["timeoutSeconds"])
    raise AssertionError("no /health/live liveness probe in deploy/base/replica.yaml")


# ---- grammar parts ----------------------------------------------------------------------------------

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


def abandoned(i: int, run: str) -> dict:
    """A new schema of a few seconds' compile (a fixed-length string)."""
    return {"type": "string", "minLength": 3000 + i, "maxLength": 3000 + i, "description": run}


def fresh_small(run: str) -> dict:
    return {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
            "additionalProperties": False, "description": run}


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


def read_answer(s: socket.socket) -> tuple[int, dict]:
    """The status and JSON body of the answer on a connection from `send_request`."""
    with s:
        r = http.client.HTTPResponse(s)
        r.begin()
        return r.status, json.loads(r.read() or b"null")


def shared_schema_leader_hangs_up(base: str, model: str, run: str, pause_s: float = 0.3) -> list[tuple[int, dict]]:
    """Six clients send the same new schema (about a second to compile); the first hangs up once
    the other five have sent theirs. Returns the five answers.

    `pause_s` is not a synchronisation: the followers must get their answers whenever the leader
    leaves. It only lets them reach the shared compile first, the case that lost their connections
    before issue 24 (hung up within milliseconds, the leader is gone before anyone shares its compile).
    """
    shared = {**nested(6, {"type": "integer"}), "description": f"shared {run}"}
    leader = send_request(base, schema_body(model, shared))
    followers = [send_request(base, schema_body(model, shared, seed=i)) for i in range(5)]
    time.sleep(pause_s)
    leader.close()
    return [read_answer(f) for f in followers]


def abandon_compiles(base: str, model: str, run: str, count: int = 8, pause_s: float = 0.3) -> None:
    """Sends `count` new schemas and hangs up on all of them without reading an answer, once their
    compiles are running or queued for a worker.

    `pause_s`, as in `shared_schema_leader_hangs_up`, is not a synchronisation. A client that hangs
    up within milliseconds is gone while its prompt is still being templated (a 499, measured): its
    guide never reaches the compile pool, and nothing is abandoned there. After the pause the
    compiles are under way, and what a compile nobody waits for any more costs is what this part
    puts on the replica.
    """
    sent = [send_request(base, schema_body(model, abandoned(i, run))) for i in range(count)]
    time.sleep(pause_s)
    for s in sent:
        s.close()


# ---- body parts -------------------------------------------------------------------------------------

def just_under_the_limit(model: str, count: int) -> bytes:
    """A chat body with `count` user messages whose texts fill it to just under the body limit."""
    skeleton = orjson.dumps({"model": model, "messages": [{"role": "user", "content": ""}] * count})
    room = BODY_LIMIT - len(skeleton) - 64
    each = max(1, room // count)
    messages = [{"role": "user", "content": "x" * each}] * count
    messages[0] = {"role": "user", "content": "x" * (room - each * (count - 1))}
    body = orjson.dumps({"model": model, "messages": messages})
    assert BODY_LIMIT - 1024 < len(body) < BODY_LIMIT, len(body)
    return body


def stop_id_flood(model: str) -> bytes:
    """stop_token_ids just under the body limit (over a million ids)."""
    n = (BODY_LIMIT - 200) // 6
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                         "stop_token_ids": [29900 + i % 90 for i in range(n)]})
    assert len(body) < BODY_LIMIT, len(body)
    return body


def flood_bodies(model: str) -> dict[str, tuple[bytes, str]]:
    """name -> (body, the field its 400 must name)."""
    return {
        "120k short messages": (just_under_the_limit(model, 120_000), "messages"),
        "the most messages, filled": (just_under_the_limit(model, MAX_MESSAGES), "messages"),
        "stop_token_ids flood": (stop_id_flood(model), "stop_token_ids"),
    }


def at_caps_body(model: str) -> dict:
    """Within every cap, at its edge: the decoder serves it, AT_CAPS_TOKENS tokens."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}] * 64, "max_tokens": AT_CAPS_TOKENS,
            "min_tokens": AT_CAPS_TOKENS, "stop_token_ids": list(range(29000, 29000 + MAX_STOP_TOKEN_IDS))}


def post_raw(base: str, body: bytes, timeout: float = 600) -> tuple[int, dict]:
    """POST raw bytes to /v1/chat/completions: (status, decoded JSON answer)."""
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# ---- the victim -------------------------------------------------------------------------------------

def victim_body(model: str, max_tokens: int) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True}


def stream_events(base: str, body: dict, timeout: float = 300):
    """Yields each SSE data payload of a streamed chat as bytes ([DONE] included), with the
    time it arrived (perf_counter)."""
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.strip()
            if line.startswith(b"data: "):
                yield line[6:], time.perf_counter()
