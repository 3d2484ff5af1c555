"""One replica under request bodies built to hurt others (issue 24, findings 6 and 7), while a
victim stream runs: 120,000 short messages just under the body limit, as many messages as allowed
filled with text up to the body limit, a flood of stop_token_ids past its cap, and requests at the
caps that the decoder serves. The victim completes with no error event, /health/live answers
within the liveness probe's timeoutSeconds (deploy/base/replica.yaml) throughout, and the replica
serves a plain request afterwards.

(The grammar parts of the same mix are in tests/integration/test_adversarial.py.)
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from frontend.request_models import MAX_MESSAGES, MAX_STOP_TOKEN_IDS
from frontend.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BODY_LIMIT = Settings(model_dir="", served_model_name="").max_body_bytes     # the stack's default
ROUNDS = 3


def liveness_timeout_s() -> float:
    """The livenessProbe's timeoutSeconds of the replica's Deployment."""
    for doc in yaml.safe_load_all((ROOT / "deploy" / "base" / "replica.yaml").read_text()):
        for c in (doc or {}).get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            if "livenessProbe" in c:
                return float(c["livenessProbe"]["timeoutSeconds"])
    raise AssertionError("no livenessProbe in deploy/base/replica.yaml")


def just_under_the_limit(model: str, count: int, key: str = "messages") -> bytes:
    """A chat body with `count` user messages whose texts fill it to just under the body limit."""
    skeleton = orjson.dumps({"model": model, key: [{"role": "user", "content": ""}] * count})
    room = BODY_LIMIT - len(skeleton) - 64
    each = max(1, room // count)
    messages = [{"role": "user", "content": "x" * each}] * count
    messages[0] = {"role": "user", "content": "x" * (room - each * (count - 1))}
    body = orjson.dumps({"model": model, key: messages})
    assert BODY_LIMIT - 1024 < len(body) < BODY_LIMIT, len(body)
    return body


def stop_id_flood(model: str) -> bytes:
    """stop_token_ids just under the body limit (over a million ids)."""
    n = (BODY_LIMIT - 200) // 6
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
                         "stop_token_ids": [29900 + i % 90 for i in range(n)]})
    assert len(body) < BODY_LIMIT, len(body)
    return body


@pytest.fixture(scope="module")
def bodies(stack):
    return {
        "120k short messages": (just_under_the_limit(stack.model_name, 120_000), "messages"),
        "the most messages, filled": (just_under_the_limit(stack.model_name, MAX_MESSAGES), "messages"),
        "stop_token_ids flood": (stop_id_flood(stack.model_name), "stop_token_ids"),
    }


def test_no_body_stalls_the_loop_or_the_victim(stack, bodies):
    limit = liveness_timeout_s()
    victim_body = {"model": stack.model_name, "messages": [{"role": "user", "content": "tell a long story"}],
                   "stream": True, "max_tokens": 600, "ignore_eos": True}
    at_caps = {"model": stack.model_name, "messages": [{"role": "user", "content": "hi"}] * 64, "max_tokens": 24,
               "min_tokens": 24, "stop_token_ids": list(range(29000, 29000 + MAX_STOP_TOKEN_IDS))}

    async def main():
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            chat = f"{stack.base_url}/v1/chat/completions"
            done = threading.Event()
            live: list[float] = []
            live_failures: list[str] = []

            def liveness():
                # Its own thread, a fresh connection per probe, as the kubelet's: the flood's
                # senders in this process do not delay it.
                while not done.is_set():
                    t0 = time.monotonic()
                    try:
                        with urllib.request.urlopen(f"{stack.base_url}/health/live", timeout=limit) as r:
                            r.read()
                    except (OSError, urllib.error.URLError) as e:
                        live_failures.append(f"{type(e).__name__} after {time.monotonic() - t0:.1f} s")
                    live.append(time.monotonic() - t0)
                    done.wait(0.2)

            async def victim():
                events = []
                async with session.post(chat, json=victim_body) as r:
                    assert r.status == 200
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            events.append(line[6:].strip())
                return events

            async def flood(name, body, param):
                async with session.post(chat, data=body, headers={"Content-Type": "application/json"}) as r:
                    answer = await r.json()
                    return name, r.status, answer.get("error", {}).get("param")

            async def served_at_caps():
                async with session.post(chat, json=at_caps) as r:
                    return r.status, await r.json()

            probe = threading.Thread(target=liveness)
            probe.start()
            victim_task = asyncio.create_task(victim())
            outcomes, at_cap = [], []
            for _ in range(ROUNDS):
                outcomes += await asyncio.gather(*(flood(name, body, param) for name, (body, param) in bodies.items()))
                at_cap.append(await served_at_caps())
            events = await victim_task
            done.set()
            probe.join()
            return events, outcomes, at_cap, live, live_failures

    events, outcomes, at_cap, live, live_failures = asyncio.run(main())
    print(f"\n/health/live: {len(live)} probes, slowest {max(live):.2f} s (limit {limit:g} s); "
          f"refusals: {sorted({(n, s, p) for n, s, p in outcomes})}")
    assert not live_failures, live_failures[:5]
    for name, status, param in outcomes:
        assert (status, param) == (400, bodies[name][1]), (name, status, param)
    for status, answer in at_cap:
        assert status == 200, answer
        assert answer["usage"]["completion_tokens"] == 24
    assert events and events[-1] == b"[DONE]"
    assert not [e for e in events if e.startswith(b'{"error"')], [e for e in events if b"error" in e][:2]
    content = [json.loads(e) for e in events[:-1]]
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    # Serving afterwards.
    async def after():
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{stack.base_url}/v1/chat/completions", json={
                    "model": stack.model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}) as r:
                return r.status
    assert asyncio.run(after()) == 200
