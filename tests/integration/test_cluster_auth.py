"""API keys through the router: the cluster runs with two keys; SMG checks them on its serving
routes (its control routes take only the admin key: test_cluster_tenants.py), forwards the client's Authorization header, and every replica checks it again.
/metrics answers without a key on the router's Prometheus port (loopback here; a NetworkPolicy in
deploy/) and to the metrics key on each replica."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from tests.integration.cluster_fixtures import CLUSTER_KEYS, CLUSTER_METRICS_KEY, auth, openai_client

pytestmark = pytest.mark.timeout(600)   # the session cluster may start here: two replicas and SMG


def get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def post_chat(base: str, headers: dict) -> tuple[int, bytes]:
    body = json.dumps({"model": "llama2-tiny", "max_tokens": 2,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_every_key_works_through_the_router(cluster):
    for key in CLUSTER_KEYS:
        r = openai_client(cluster, key).chat.completions.create(
            model=cluster.model_name, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content is not None
        stream = openai_client(cluster, key).chat.completions.create(
            model=cluster.model_name, max_tokens=2, stream=True, messages=[{"role": "user", "content": "hi"}])
        assert [c for c in stream]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"},
                                     {"Authorization": f"Basic {CLUSTER_KEYS[0]}"}], ids=["none", "wrong", "basic"])
def test_router_refuses_a_missing_or_wrong_key(cluster, headers):
    status, _ = post_chat(cluster.base_url, headers)
    assert status == 401
    # its control plane (the replicas' addresses, adding and removing workers) too
    assert get(f"{cluster.base_url}/workers", headers)[0] == 401


def test_openai_client_sees_an_authentication_error(cluster):
    with pytest.raises(openai.AuthenticationError):
        openai_client(cluster, "wrong-key").chat.completions.create(
            model=cluster.model_name, max_tokens=2, messages=[{"role": "user", "content": "hi"}])


def test_replicas_check_the_key_too(cluster):
    for url in cluster.replica_urls():
        status, body = post_chat(url, {})
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", body
        assert post_chat(url, {"Authorization": "Bearer wrong-key"})[0] == 401
        assert post_chat(url, auth(CLUSTER_KEYS[1]))[0] == 200


def test_metrics_on_the_router_and_every_replica(cluster):
    status, text = get(cluster.router_metrics_url)
    assert status == 200 and b"smg_worker_requests_total" in text and b"smg_worker_health" in text
    for url in cluster.replica_urls():
        # a replica's /metrics spans every tenant: the metrics key reads it, a client key may not
        status, text = get(f"{url}/metrics", {"Authorization": f"Bearer {CLUSTER_METRICS_KEY}"})
        assert status == 200 and b"llama_triton_requests_in_flight" in text
        assert get(f"{url}/metrics")[0] == 401
        assert get(f"{url}/metrics", auth())[0] == 403
