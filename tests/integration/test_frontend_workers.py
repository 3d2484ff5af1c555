"""Several frontend workers on one port (`--frontend-workers 2`): both listen, both serve, and
/metrics from whichever answers counts the requests of all of them."""
import concurrent.futures
import json
import re
import urllib.request

import psutil
import pytest

from tests.integration.stack import start_stack

REQUESTS = 16


@pytest.fixture(scope="module")
def two_workers(default_model_dir, tmp_path_factory):
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("workers"), "--frontend-workers", "2",
                    "--max-tokens-cap", "16", "--max-seq-len", "512")
    yield s
    s.stop()


def frontend_workers(stack) -> list[psutil.Process]:
    return stack.processes()["frontend"]


def chat(stack, i: int) -> dict:
    # urllib opens a new connection per request, so the kernel spreads them over the workers.
    body = json.dumps({"model": stack.model_name, "max_tokens": 4, "seed": i,
                       "messages": [{"role": "user", "content": f"count to {i}"}]}).encode()
    req = urllib.request.Request(f"{stack.base_url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        return json.loads(r.read())


def completed_chats(stack) -> float:
    with urllib.request.urlopen(f"{stack.base_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^llama_triton_http_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_both_workers_listen_on_the_port(two_workers):
    workers = frontend_workers(two_workers)
    assert len(workers) == 2
    for p in workers:
        listening = [c for c in p.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == two_workers.port]
        assert listening, f"worker {p.pid} does not listen on {two_workers.port}"


def test_requests_spread_and_metrics_sum_over_workers(two_workers):
    before = completed_chats(two_workers)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: chat(two_workers, i), range(REQUESTS)))
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    # Every scrape (each on a new connection, so from either worker) sees all of them.
    for _ in range(6):
        assert completed_chats(two_workers) - before == REQUESTS
    # Both workers served some of the 16 connections: their access lines carry their pids.
    ids = {r["id"] for r in results}
    served_by = {}
    for line in two_workers.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"frontend.access"' in line:
            rec = json.loads(line)
            if rec.get("request_id") in ids:
                served_by[rec["request_id"]] = rec["pid"]
    assert set(served_by) == ids
    assert set(served_by.values()) == {p.pid for p in frontend_workers(two_workers)}
