"""Routing through Shepherd Model Gateway on the 2-replica cluster: prompt_cache_key affinity (in
the X-Prompt-Cache-Key header, or only in the body) and prefix affinity without a key, measured
against SMG's round_robin over the same replicas in the same run.

Which replica served a request is read from the router's own counter (smg_worker_requests_total
by worker URL); the requests here run one at a time, so a counter's step is that request's.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from llama_triton.serve.cluster import ROUTING_KEY_HEADER, router_command, smg_flags
from llama_triton.serve.common import free_port, http_ok
from tests.served_cluster import scrape
from tests.integration.cluster_fixtures import CLUSTER_KEYS, auth, openai_client
from tests.integration.stack import wait_for

pytestmark = pytest.mark.timeout(600)


def system_prompt(tag: str) -> str:
    # Unique from its first words on, and several 16-token KV blocks long.
    return f"{tag} {tag}: you are the assistant of project {tag}. " + "Answer briefly and politely. " * 8


def ask(client, model, system, question, **extra):
    r = client.chat.completions.create(model=model, max_tokens=4, seed=1, temperature=0.0,
                                       messages=[{"role": "system", "content": system},
                                                 {"role": "user", "content": question}], **extra)
    return r.usage


def served_by(cluster, send):
    """(the result of send(), the replica URL that served it): exactly one request must have gone out."""
    before = cluster.routed()
    result = send()
    after = cluster.routed()
    moved = {url: after.get(url, 0) - before.get(url, 0) for url in after}
    moved = {url: n for url, n in moved.items() if n}
    assert len(moved) == 1 and sum(moved.values()) == 1, moved
    return result, next(iter(moved))


def test_header_key_pins_every_request_to_one_replica(cluster):
    client = openai_client(cluster)
    model = cluster.model_name
    run = os.urandom(4).hex()
    keys = [f"tenant-{run}-{i}" for i in range(10)]
    home = {}
    for key in keys:
        _, home[key] = served_by(cluster, lambda: ask(client, model, system_prompt(key), "First question?",
                                                      extra_headers={ROUTING_KEY_HEADER: key},
                                                      extra_body={"prompt_cache_key": key}))
    # The keys were spread over both replicas (else nothing below could tell pinning from chance).
    assert len(set(home.values())) == 2, home
    for key in keys:
        # Unrelated prompts follow their key ...
        for _ in range(2):
            other = os.urandom(6).hex()
            _, url = served_by(cluster, lambda: ask(client, model, system_prompt(other), "Something else?",
                                                    extra_headers={ROUTING_KEY_HEADER: key}))
            assert url == home[key], (key, url, home[key])
        # ... and the key's own prefix is in that replica's cache.
        usage, url = served_by(cluster, lambda: ask(client, model, system_prompt(key), "Second question?",
                                                    extra_headers={ROUTING_KEY_HEADER: key},
                                                    extra_body={"prompt_cache_key": key}))
        assert url == home[key]
        assert usage.prompt_tokens_details.cached_tokens >= 64, usage
    # The header wins over the prefix: key A's prompt sent with key B goes to B's replica, cold.
    a = next(k for k in keys if home[k] != home[keys[0]])
    usage, url = served_by(cluster, lambda: ask(client, model, system_prompt(a), "Third question?",
                                                extra_headers={ROUTING_KEY_HEADER: keys[0]}))
    assert url == home[keys[0]] != home[a]
    assert usage.prompt_tokens_details.cached_tokens <= 16, usage     # at most the chat template's first block


def test_body_only_key_lands_where_its_prefix_is_cached(cluster):
    """A client that sends prompt_cache_key only in the body (no header): cache_aware routes by the
    prompt's prefix, which requests sharing a key share."""
    client = openai_client(cluster)
    model = cluster.model_name
    run = os.urandom(4).hex()
    keys = [f"body-{run}-{i}" for i in range(6)]
    first = {}
    for key in keys:   # all first requests, then all second ones: alternating placement would miss
        _, first[key] = served_by(cluster, lambda: ask(client, model, system_prompt(key), "First question?",
                                                       extra_body={"prompt_cache_key": key}))
    for key in keys:
        usage, url = served_by(cluster, lambda: ask(client, model, system_prompt(key), "A second, longer question?",
                                                    extra_body={"prompt_cache_key": key}))
        assert url == first[key], (key, url, first[key])
        cached = usage.prompt_tokens_details.cached_tokens
        assert cached >= 64 and cached < usage.prompt_tokens, usage


# ----------------------------------------------------------------------------- prefix affinity vs round_robin


@pytest.fixture
def round_robin_router(cluster):
    """A second SMG over the same replicas with SMG's round_robin policy (fresh ports)."""
    port, metrics_port = free_port(), free_port()
    cmd = router_command(cluster.router_keys(), smg_flags("127.0.0.1", port, metrics_port, cluster.replica_urls(),
                                                          policy="round_robin", health_interval=1))
    log = open(cluster.work_dir / "round-robin-router.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, API_KEYS=",".join(CLUSTER_KEYS)))
    base = f"http://127.0.0.1:{port}"

    def registered() -> int:   # both replicas registered and healthy (else it would round-robin over one)
        try:
            workers = json.loads(scrape(f"{base}/workers", headers=cluster.admin_auth()))["workers"]
        except OSError:
            return 0
        return sum(1 for w in workers if w.get("is_healthy"))
    try:
        wait_for(lambda: proc.poll() is not None or (http_ok(f"{base}/health") and registered() == 2),
                 timeout=60, what="round_robin SMG up with both replicas")
        assert proc.poll() is None, (cluster.work_dir / "round-robin-router.log").read_text()[-2000:]
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_conversations(client, model, n: int, turns: int, tag: str) -> list[list]:
    """n conversations of `turns` turns, one request at a time (so round_robin's placement is the
    same every run: turns 1 and 3 on one replica, turn 2 on the other); usage per turn."""
    def conversation(i):
        messages = [{"role": "system", "content": system_prompt(f"{tag}-{i}-{os.urandom(3).hex()}")}]
        usages = []
        for t in range(turns):
            messages.append({"role": "user", "content": f"Turn {t}: tell me one more thing about item {i}."})
            r = client.chat.completions.create(model=model, max_tokens=8, seed=i, temperature=0.0, messages=messages)
            messages.append({"role": "assistant", "content": r.choices[0].message.content or "ok"})
            usages.append(r.usage)
        return usages
    return [conversation(i) for i in range(n)]


def cached_share(conversations, from_turn: int = 0) -> float:
    prompt = sum(u.prompt_tokens for c in conversations for u in c[from_turn:])
    cached = sum(u.prompt_tokens_details.cached_tokens for c in conversations for u in c[from_turn:])
    return cached / prompt


def test_prefix_affinity_beats_round_robin(cluster, round_robin_router):
    import openai
    model = cluster.model_name
    t0 = time.monotonic()
    aware = run_conversations(openai_client(cluster), model, 20, 3, "aware")
    rr_client = openai.OpenAI(base_url=f"{round_robin_router}/v1", api_key=CLUSTER_KEYS[0], max_retries=0, timeout=120)
    rr = run_conversations(rr_client, model, 20, 3, "rr")
    figures = {name: (cached_share(c), cached_share(c, 1)) for name, c in (("cache_aware", aware), ("round_robin", rr))}
    print(f"\n20 conversations x 3 turns per policy in {time.monotonic() - t0:.1f} s; share of prompt tokens "
          "served from cache (all turns / turns 2-3): "
          + "; ".join(f"{k} {a:.1%} / {b:.1%}" for k, (a, b) in figures.items()))
    (aware_all, aware_later), (rr_all, rr_later) = figures["cache_aware"], figures["round_robin"]
    assert aware_later >= 0.6, figures
    assert aware_later > rr_later + 0.2, figures
