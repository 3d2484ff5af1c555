"""Failover on the 2-replica cluster, under streaming load through the router: one replica's
frontend is SIGKILLed, then (once it is back) another replica's tritonserver.

For each: every stream ends with [DONE] (completed, or an error event then [DONE]: none is lost),
the streams cut by the kill carry the error event, requests sent after the router's health check
marked the replica down see no error, and the replica comes back and is routed to again. The counts
are printed (`pytest -s`) so they can be quoted.
"""
from __future__ import annotations

import asyncio
import re
import time
import urllib.request

import pytest

from tests.integration.cluster_fixtures import CLUSTER_METRICS_KEY, Load, auth

pytestmark = pytest.mark.timeout(600)

CONCURRENCY = 6
MAX_TOKENS = 200


def in_flight(replica_url: str) -> float:
    # A replica's /metrics spans every tenant: it takes the metrics key, not a client key.
    req = urllib.request.Request(f"{replica_url}/metrics", headers=auth(CLUSTER_METRICS_KEY))
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(r"^llama_triton_requests_in_flight (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def poll(predicate, timeout: float, what: str) -> float:
    """Polls a blocking predicate off the event loop; returns the time it first held."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.1)
    return time.monotonic()


def kill_under_load(cluster, role: str) -> dict:
    async def scenario(load: Load) -> dict:
        urls = cluster.replica_urls()
        # Both replicas busy and all but two streams past their first tokens; then the busier replica
        # (at least half the streams, so at least one of them mid-stream) loses its `role` process.
        # (A request its frontend has not begun to answer gets a 503, which SMG retries elsewhere.)
        await poll(lambda: all(in_flight(u) >= 1 for u in urls), 60, "streams in flight on every replica")
        deadline = time.monotonic() + 60
        while load.mid_stream() < CONCURRENCY - 2:
            assert time.monotonic() < deadline, "streams never got going"
            await asyncio.sleep(0.01)
        victim = max(urls, key=in_flight)
        proc = cluster.replica_process(int(victim.rsplit(":", 1)[1]), role)
        assert proc is not None, f"no {role} process for {victim}"
        t = {"killed": time.monotonic()}
        proc.kill()
        t["marked_down"] = await poll(lambda: victim not in cluster.healthy_workers(), 30, "router marks it down")
        # Enough requests after that to see the router avoid it, then a quiet machine while the
        # replica reloads (two cores: the load would only slow its tritonserver's start).
        sent = len(load.outcomes)
        await poll(lambda: len(load.outcomes) >= sent + 4 * CONCURRENCY, 120, "requests after the replica went")
        load.resumed.clear()
        t["back"] = await poll(lambda: victim in cluster.healthy_workers(), 300, "replica healthy again")
        load.resumed.set()
        routed = cluster.routed().get(victim, 0)
        t["routed_again"] = await poll(lambda: cluster.routed().get(victim, 0) >= routed + 3, 60,
                                       "requests routed to the returned replica")
        return t

    load = Load(cluster, CONCURRENCY, MAX_TOKENS)
    t = asyncio.run(load.run(scenario))
    counts = load.counts()
    after_marked = load.counts(since=t["marked_down"])
    cut = [o for o in load.outcomes if o.started < t["killed"] < o.ended and o.kind != "completed"]
    print(f"\nkill {role} under load ({CONCURRENCY} streams of {MAX_TOKENS} tokens): {counts}; "
          f"router marked it down {t['marked_down'] - t['killed']:.1f} s after the kill, healthy again after "
          f"{t['back'] - t['killed']:.1f} s, routed to again after {t['routed_again'] - t['killed']:.1f} s; "
          f"sent after it was marked down: {after_marked}")
    return {"counts": counts, "after_marked": after_marked, "cut": cut}


def test_frontend_killed_under_load(cluster):
    r = kill_under_load(cluster, "frontend")
    assert r["counts"].get("lost", 0) == 0, r["counts"]
    # The streams the dead frontend was serving: SMG ends each with its error event, then [DONE].
    assert r["cut"] and all(o.kind == "error_event:stream_error" and o.done for o in r["cut"]), \
        [(o.kind, o.events[-2:]) for o in r["cut"]]
    assert set(r["after_marked"]) == {"sent", "completed"}, r["after_marked"]


def test_tritonserver_killed_under_load(cluster):
    r = kill_under_load(cluster, "tritonserver")
    assert r["counts"].get("lost", 0) == 0, r["counts"]
    # The replica's frontend saw its decoder go: our error event (model_not_ready), then [DONE].
    assert r["cut"] and all(o.kind == "error_event:model_not_ready" and o.done for o in r["cut"]), \
        [(o.kind, o.events[-2:]) for o in r["cut"]]
    assert set(r["after_marked"]) == {"sent", "completed"}, r["after_marked"]
