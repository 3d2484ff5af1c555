"""The cluster tests' shared 2-replica cluster (`llama-triton cluster`: two tritonserver +
frontend replicas behind Shepherd Model Gateway) and their streaming load client.

One cluster serves the whole session (tests/integration/test_cluster_*.py): starting two
tritonservers on two cores takes about a minute. It runs with API keys on, so every request
here carries one (test_cluster_auth.py checks both layers that enforce them).
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.served_cluster import ServedCluster, start_served_cluster
from tests.integration.stack import ROOT

CLUSTER_KEYS = ("cluster-key-a", "cluster-key-b")
# The clients' keys file (`ID:KEY` lines, frontend/tenancy/tenants.py), which the replicas and the router
# read; test_cluster_tenants.py rotates it. /metrics on the replicas takes the metrics key.
CLUSTER_KEY_IDS = ("alpha", "beta")
CLUSTER_METRICS_KEY = "cluster-metrics-key"
# Low caps (CI budgets), but streams long enough to be in flight when a replica is killed.
CLUSTER_SERVE_ARGS = ("--max-tokens-cap", "256", "--max-seq-len", "1024", "--max-num-tokens", "32768")
HEALTH_INTERVAL_S = 1


@pytest.fixture(scope="session")
def cluster(default_model_dir, tmp_path_factory, postgres_server) -> ServedCluster:
    """Its replicas keep stored responses (/v1/responses) in one real PostgreSQL database, as a
    deployed cluster does ($LLAMA_TRITON_RESPONSES_STORE, docs/SCALE-OUT.md)."""
    if os.environ.get("LLAMA_TRITON_EXTERNAL_URL"):
        pytest.skip("starts a cluster of its own; the suite targets an external stack")
    t0 = time.monotonic()
    keys_file = tmp_path_factory.mktemp("cluster-keys") / "client-keys"
    keys_file.write_text(client_keys_text())
    c = start_served_cluster(str(default_model_dir), tmp_path_factory.mktemp("cluster"), 2,
                             "--health-check-interval", str(HEALTH_INTERVAL_S), "--shutdown-grace", "5",
                             serve_args=CLUSTER_SERVE_ARGS, cwd=ROOT,
                             env={"API_KEYS_FILE": str(keys_file), "METRICS_KEYS": CLUSTER_METRICS_KEY,
                                  "LLAMA_TRITON_RESPONSES_STORE": postgres_server.url})
    c.client_keys_file = keys_file
    print(f"\n2-replica cluster serving after {time.monotonic() - t0:.1f} s")
    yield c
    c.stop()


def client_keys_text(extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> str:
    keys = {i: k for i, k in zip(CLUSTER_KEY_IDS, CLUSTER_KEYS) if k not in drop}
    return "".join(f"{i}:{k}\n" for i, k in {**keys, **(extra or {})}.items())


def auth(key: str = CLUSTER_KEYS[0]) -> dict:
    return {"Authorization": f"Bearer {key}"}


def openai_client(cluster: ServedCluster, key: str = CLUSTER_KEYS[0]):
    import openai
    return openai.OpenAI(base_url=cluster.api_url, api_key=key, max_retries=0, timeout=120)


# ----------------------------------------------------------------------------- streaming load


@dataclass
class StreamOutcome:
    started: float
    ended: float = 0.0
    status: int | None = None
    events: list[bytes] = field(default_factory=list)
    transport_error: str | None = None
    body: bytes = b""

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == b"[DONE]"

    @property
    def error(self) -> dict | None:
        for e in self.events:
            if e.startswith(b'{"error"'):
                return json.loads(e)["error"]
        return None

    @property
    def kind(self) -> str:
        """completed | error_event:<code or type> | http_<status> | lost (no [DONE], no error answer)."""
        if self.status is not None and self.status != 200:
            return f"http_{self.status}"
        if self.transport_error is not None or not self.done:
            return "lost"
        err = self.error
        if err is not None:
            return f"error_event:{err.get('code') or err.get('type')}"
        return "completed"


async def stream_once(session: aiohttp.ClientSession, base: str, body: dict, headers: dict,
                      out: StreamOutcome | None = None) -> StreamOutcome:
    """One streamed request; its events land in `out` as they arrive."""
    out = out or StreamOutcome(time.monotonic())
    try:
        async with session.post(f"{base}/v1/chat/completions", json=body, headers=headers) as r:
            out.status = r.status
            if r.status != 200:
                out.body = await r.read()
            else:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        out.events.append(line[6:].strip())
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        out.transport_error = f"{type(e).__name__}: {e}"
    out.ended = time.monotonic()
    return out


class Load:
    """`concurrency` clients streaming through the router back to back until stopped.

    Every prompt is new (a random prefix), so cache_aware spreads them by load over the replicas.
    """

    def __init__(self, cluster: ServedCluster, concurrency: int, max_tokens: int):
        self.cluster, self.concurrency, self.max_tokens = cluster, concurrency, max_tokens
        self.outcomes: list[StreamOutcome] = []
        self.live: list[StreamOutcome] = []      # streams in flight, their events so far
        self.stopping = False
        self.resumed = asyncio.Event()           # cleared: clients wait before their next request
        self.resumed.set()

    def body(self) -> dict:
        words = os.urandom(8).hex()
        return {"model": self.cluster.model_name, "stream": True, "max_tokens": self.max_tokens,
                "min_tokens": self.max_tokens, "temperature": 1.0,
                "messages": [{"role": "user", "content": f"{words} tell me a long story about {words}"}]}

    async def client(self, session):
        while not self.stopping:
            await self.resumed.wait()
            if self.stopping:
                break
            out = StreamOutcome(time.monotonic())
            self.live.append(out)
            await stream_once(session, self.cluster.base_url, self.body(), auth(), out)
            self.live.remove(out)
            self.outcomes.append(out)

    def mid_stream(self, events: int = 5) -> int:
        """Streams in flight that have already had `events` events."""
        return sum(1 for o in self.live if len(o.events) >= events)

    async def run(self, scenario):
        """Runs the load while `await scenario(self)` runs, then lets the streams in flight finish."""
        timeout = aiohttp.ClientTimeout(total=180)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = [asyncio.create_task(self.client(session)) for _ in range(self.concurrency)]
            try:
                return await scenario(self)
            finally:
                self.stopping = True
                self.resumed.set()
                await asyncio.gather(*clients)

    def counts(self, since: float = 0.0) -> dict[str, int]:
        counts: dict[str, int] = {"sent": 0}
        for o in self.outcomes:
            if o.started >= since:
                counts["sent"] += 1
                counts[o.kind] = counts.get(o.kind, 0) + 1
        return counts
