"""Issue 24: an adversarial mix against one replica cannot stall, poison or cancel other requests.

While victim streams run back to back and /health/live is polled (its own thread, a fresh
connection per probe, as the kubelet's), the replica gets the mix of tests/integration/adversarial_mix.py:
1. the same new schema from six clients, the first hanging up at once: the other five get their
   answers (before issue 24 they lost their connections with the leader's cancellation);
2. many compiles abandoned at once, and meanwhile
3. schemas too slow to compile (400 grammar_too_complex, or 429 while the pool is full), and
4. bodies just under the body limit, ROUNDS times each: 120,000 short messages, the most messages
   allowed filled with text, a flood of stop_token_ids (each a 400 naming its field), with a
   request at every cap after each round (served: 200 with all its tokens).
Then: every victim finished with `length`, [DONE] and no error event; every liveness probe
answered within the livenessProbe's timeoutSeconds in deploy/; a fresh small schema, json_object
and a plain request answer 200.
"""
from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from tests.integration.adversarial_mix import (AT_CAPS_TOKENS, MESSAGES, abandon_compiles, at_caps_body,
                                               flood_bodies, fresh_small, liveness_timeout_s, post_raw,
                                               schema_body, shared_schema_leader_hangs_up, stream_events,
                                               too_slow, victim_body)
from tests.integration.http_helpers import post_chat

ROUNDS = 3
VICTIM_TOKENS = 48          # the shared stack's max-tokens cap


def victim(base: str, model: str) -> tuple[bool, str]:
    """One streamed chat with ignore_eos: (ended with `length` and [DONE], no error event; why not)."""
    finish, done = None, False
    for data, _ in stream_events(base, victim_body(model, VICTIM_TOKENS)):
        if data == b"[DONE]":
            done = True
            break
        event = orjson.loads(data)
        if "error" in event:
            return False, f"error event {event}"
        for c in event.get("choices", []):
            finish = c.get("finish_reason") or finish
    return (done and finish == "length"), f"finish {finish}, done {done}"


def with_retry_after(call, attempts: int = 120):
    """Follows 429 Retry-After (the pool draining abandoned work), as a client would."""
    for _ in range(attempts):
        status, body = call()
        if status != 429:
            return status, body
        time.sleep(1)
    return status, body


@pytest.fixture(scope="module")
def bodies(stack):
    return flood_bodies(stack.model_name)


def test_adversarial_mix_hurts_no_one(stack, bodies):
    base, model = stack.base_url, stack.model_name
    probe_timeout = liveness_timeout_s()
    stop = threading.Event()
    probes: list[tuple[float, float]] = []          # (started, seconds), monotonic
    marks: list[tuple[float, str]] = []
    probe_failures: list[str] = []
    victims: list[tuple[bool, str]] = []

    def poll_liveness():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(f"{base}/health/live", timeout=probe_timeout) as r:
                    r.read()
                    if r.status != 200:
                        probe_failures.append(f"status {r.status}")
            except Exception as e:  # noqa: BLE001 - a probe that failed, whatever the cause
                probe_failures.append(f"{e!r} after {time.monotonic() - t0:.1f} s")
            probes.append((t0, time.monotonic() - t0))
            stop.wait(0.2)           # probe pacing, not synchronisation

    def run_victims():
        while not stop.is_set():
            victims.append(victim(base, model))

    def floods():
        outcomes, at_caps = [], []
        for _ in range(ROUNDS):
            with ThreadPoolExecutor(len(bodies)) as senders:
                answers = senders.map(lambda item: (item[0], *post_raw(base, item[1][0])), bodies.items())
                outcomes += [(name, status, (answer.get("error") or {}).get("param")) for name, status, answer in answers]
            at_caps.append(post_chat(base, at_caps_body(model)))
        return outcomes, at_caps

    run = uuid.uuid4().hex[:8]
    with ThreadPoolExecutor(max_workers=8) as pool:
        background = [pool.submit(poll_liveness), pool.submit(run_victims)]
        try:
            marks.append((time.monotonic(), "shared schema"))
            # 1. the shared schema, on its own (its compile must finish inside the deadline)
            shared = shared_schema_leader_hangs_up(base, model, run)
            # 2-4. abandoned compiles, too-slow schemas and the body floods, together
            marks.append((time.monotonic(), "abandoned compiles, too slow, floods"))
            abandon_compiles(base, model, run)
            slow = [pool.submit(post_chat, base, schema_body(model, too_slow(i, run))) for i in range(2)]
            flooded = pool.submit(floods)
            slow_answers = [f.result() for f in slow]
            outcomes, at_caps = flooded.result()
        finally:
            stop.set()
        for f in background:
            f.result()
    start = marks[0][0]
    slowest = sorted(probes, key=lambda p: -p[1])[:3]
    print(f"\n/health/live: {len(probes)} probes, slowest {', '.join(f'{d:.2f} s at +{t - start:.1f} s' for t, d in slowest)} "
          f"(limit {probe_timeout:g} s; parts began at {', '.join(f'+{t - start:.1f} s {m}' for t, m in marks)}); "
          f"{len(victims)} victims; refusals: {sorted(set(outcomes))}")

    assert [status for status, _ in shared] == [200] * 5, shared
    for status, body in slow_answers:
        assert status in (400, 429), body
        assert body["error"]["code"] == ("grammar_too_complex" if status == 400 else "grammar_compiler_busy")
        assert body["error"]["param"] == "response_format"
    assert len(outcomes) == ROUNDS * len(bodies)
    for name, status, param in outcomes:
        assert (status, param) == (400, bodies[name][1]), (name, status, param)
    for status, answer in at_caps:
        assert status == 200, answer
        assert answer["usage"]["completion_tokens"] == AT_CAPS_TOKENS
    assert victims and all(ok for ok, _ in victims), [why for ok, why in victims if not ok]
    assert probes and not probe_failures, probe_failures[:5]

    # Afterwards: a fresh small schema, json_object and a plain request are served.
    status, body = with_retry_after(lambda: post_chat(base, schema_body(model, fresh_small(run))))
    assert status == 200, body
    status, body = with_retry_after(lambda: post_chat(base, {"model": model, "messages": MESSAGES, "max_tokens": 8,
                                                             "response_format": {"type": "json_object"}}))
    assert status == 200, body
    status, body = post_chat(base, {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert status == 200, body
