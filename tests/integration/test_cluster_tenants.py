"""Tenants on the suite's shared 2-replica cluster (started as `make cluster` starts it, with a
clients' keys file): client keys never administer SMG, no key is on any command line, one key's
cached prompt is not another's, and the keys file rotates without restarting a replica (issue 25)."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.integration.cluster_fixtures import (CLUSTER_KEY_IDS, CLUSTER_KEYS, CLUSTER_METRICS_KEY, auth,
                                                client_keys_text)
from tests.integration.stack import wait_for

pytestmark = pytest.mark.timeout(600)

# SMG 1.13's control plane (its route table, read from the smg 1.13.0 wheel and probed): workers,
# WASM modules, tokenizers, the cache, load reports, heap profiles, the function-call parser.
CONTROL_ROUTES = [("GET", "/workers", None), ("POST", "/workers", {"url": "http://127.0.0.1:9/"}),
                  ("GET", "/workers/x", None), ("PUT", "/workers/x", {}), ("DELETE", "/workers/x", None),
                  ("GET", "/wasm", None), ("POST", "/wasm", {"modules": []}), ("DELETE", "/wasm/x", None),
                  ("GET", "/v1/tokenizers", None), ("POST", "/v1/tokenizers", {"name": "x", "source": "/etc"}),
                  ("GET", "/v1/tokenizers/x/status", None), ("POST", "/flush_cache", None),
                  ("GET", "/get_loads", None), ("POST", "/heap_profile", None),
                  ("POST", "/parse/function_call", {})]


def call(method: str, url: str, headers: dict | None = None, body=None, timeout: float = 60) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError) as e:
        return 0, str(e).encode()      # no answer: refused (the router being swapped), reset


def chat(base: str, key: str | None, content: str = "hi", system: str = "You are a careful assistant."):
    body = {"model": "llama2-tiny", "max_tokens": 2, "seed": 1, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": content}]}
    status, raw = call("POST", f"{base}/v1/chat/completions", auth(key) if key else {}, body)
    return status, (json.loads(raw) if raw.startswith(b"{") else raw)


def test_client_keys_cannot_administer_the_router(cluster):
    before = sorted(w["url"] for w in cluster.workers())
    for key in CLUSTER_KEYS + (None, "wrong-key"):
        for method, path, body in CONTROL_ROUTES:
            status, raw = call(method, f"{cluster.base_url}{path}", auth(key) if key else {}, body)
            assert status in (401, 403), (key, method, path, status, raw[:200])
    # The admin key does administer it; nothing a client sent changed the worker list.
    status, raw = call("GET", f"{cluster.base_url}/workers", cluster.admin_auth())
    assert status == 200 and sorted(w["url"] for w in json.loads(raw)["workers"]) == before == \
        sorted(cluster.replica_urls())
    # SMG's /engine_metrics gathers the workers' /metrics: the replicas refuse it to anything but a
    # metrics key, so a client learns no other tenant's counters through it.
    status, raw = call("GET", f"{cluster.base_url}/engine_metrics", auth(CLUSTER_KEYS[0]))
    assert b"llama_triton_key_requests" not in raw and b"llama_triton_http_requests" not in raw, (status, raw[:300])
    # SMG's own polling of the replicas' /metrics (its worker key, `router:KEY` on the replicas)
    # gets the load gauges it routes by, and only those (it was a 403 every 10 s).
    worker_key = (cluster.work_dir / "keys" / "router-worker-key").read_text().strip()
    for url in cluster.replica_urls():
        status, raw = call("GET", f"{url}/metrics", {"Authorization": f"Bearer {worker_key}"})
        assert status == 200 and b"vllm:num_requests_running{" in raw, (status, raw[:300])
        assert b"key_id" not in raw and b"llama_triton_" not in raw, raw[:300]
    # ... and the admin key is no client key: the data plane refuses it, as the replicas do.
    assert chat(cluster.base_url, cluster.admin_key)[0] == 401
    assert chat(cluster.replica_urls()[0], cluster.admin_key)[0] == 401


def cluster_processes(cluster) -> list[psutil.Process]:
    root = psutil.Process(cluster.proc.pid)
    return [root, *root.children(recursive=True)]


def frontend_pids(cluster) -> set[int]:
    pids = set()
    for p in cluster_processes(cluster):
        try:
            if "frontend" in p.cmdline():
                pids.add(p.pid)
        except psutil.Error:
            pass                      # gone, or a router that is exiting (a zombie until reaped)
    return pids


def test_no_key_on_any_command_line(cluster):
    keys_dir = cluster.work_dir / "keys"
    secrets = list(CLUSTER_KEYS) + [CLUSTER_METRICS_KEY, cluster.admin_key,
                                    (keys_dir / "router-worker-key").read_text().strip()]
    procs = cluster_processes(cluster)
    kinds = set()
    for p in procs:
        try:
            raw = Path(f"/proc/{p.pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue                 # exited meanwhile (a probe, a restart)
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace")
        for secret in secrets:
            assert secret not in cmdline, f"a key on the command line of pid {p.pid}: {cmdline[:120]}..."
        kinds |= {k for k in ("smg::router", "tritonserver", "frontend", "serve", "cluster") if k in cmdline}
    # the whole cluster was looked at: the router, both replicas' launchers, Triton and frontends
    assert kinds == {"smg::router", "tritonserver", "frontend", "serve", "cluster"}, kinds
    for name in ("router-admin-key", "router-worker-key"):
        assert (keys_dir / name).stat().st_mode & 0o077 == 0, f"{name} is readable by others"


def test_one_keys_cached_prompt_is_not_anothers(cluster):
    a_key, b_key = CLUSTER_KEYS
    for base in (cluster.replica_urls()[0], cluster.base_url):   # the replica itself, and through the router
        # A prompt no one has sent: several 16-token blocks, the same for both keys.
        system = f"{os.urandom(6).hex()}: you are a careful assistant for the long running project. " * 4
        status, first = chat(base, a_key, "Repeat after me.", system)
        status, again = chat(base, a_key, "Repeat after me.", system)
        assert status == 200 and again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16, again
        status, other = chat(base, b_key, "Repeat after me.", system)
        assert status == 200 and other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0, other
        # key B's own repeat is cached, in B's scope
        status, b_again = chat(base, b_key, "Repeat after me.", system)
        assert b_again["usage"]["prompt_tokens_details"]["cached_tokens"] >= 16, b_again


def metrics_of(url: str) -> str:
    status, raw = call("GET", f"{url}/metrics", auth(CLUSTER_METRICS_KEY))
    assert status == 200
    return raw.decode()


def test_keys_rotate_without_a_restart_and_are_counted_by_id(cluster):
    keys_file: Path = cluster.client_keys_file
    replica_pids = frontend_pids(cluster)
    assert len(replica_pids) == 2
    new_key, (a_key, b_key) = f"cluster-key-{os.urandom(4).hex()}", CLUSTER_KEYS

    def rewrite(text: str) -> None:
        tmp = keys_file.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, keys_file)
    try:
        rewrite(client_keys_text({"gamma": new_key}, drop=(b_key,)))
        for base in (cluster.replica_urls()[0], cluster.base_url):
            wait_for(lambda: chat(base, new_key)[0] == 200, timeout=120, interval=0.5, what=f"new key at {base}")
            wait_for(lambda: chat(base, b_key)[0] == 401, timeout=120, interval=0.5, what=f"dropped key at {base}")
            assert chat(base, a_key)[0] == 200
        text = "".join(metrics_of(url) for url in cluster.replica_urls())
        assert 'llama_triton_key_requests_total{key_id="gamma"}' in text
        assert 'llama_triton_key_tokens_total{key_id="gamma",kind="prompt"}' in text
        assert f'key_id="{CLUSTER_KEY_IDS[0]}"' in text
        for secret in (new_key, a_key, b_key):
            assert secret not in text
    finally:
        rewrite(client_keys_text())
        wait_for(lambda: chat(cluster.base_url, b_key)[0] == 200, timeout=120, interval=0.5, what="key restored")
        wait_for(lambda: chat(cluster.base_url, new_key)[0] == 401, timeout=120, interval=0.5, what="key removed")
    # the replicas reloaded the file themselves: the same frontend processes serve
    assert frontend_pids(cluster) == replica_pids
