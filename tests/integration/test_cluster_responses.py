"""Stored responses in the suite's 2-replica cluster (tests/integration/cluster_fixtures.py), all
through the router with the openai SDK: both replicas keep them in one real PostgreSQL database,
so a conversation continues on either replica, and retrieval, input items and deletion answer
through the router for the key that made them only.

Shepherd Model Gateway 1.13 answers GET/DELETE /v1/responses/{id} (and input_items, and
/v1/conversations) from its own history store, which holds nothing an HTTP worker created (404
for every stored response, measured, docs/SCALE-OUT.md). The cluster's front door
(llama_triton/serve/router_front.py) sends those paths to a replica instead; these tests fail
without it."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from tests.integration.cluster_fixtures import CLUSTER_KEYS, auth, openai_client


def replica_client(url: str, key: str = CLUSTER_KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def http(cluster, method: str, path: str, body=None, key: str = CLUSTER_KEYS[0]) -> tuple[int, dict]:
    req = urllib.request.Request(f"{cluster.base_url}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **auth(key)})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_a_conversation_through_the_router(cluster):
    router = openai_client(cluster)
    first = router.responses.create(model=cluster.model_name, input="My name is Ada.", max_output_tokens=4,
                                    temperature=0)
    second = router.responses.create(model=cluster.model_name, input="What is my name?", max_output_tokens=4,
                                     temperature=0, previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens       # the first turn is in its prompt
    # Retrieval through the router, repeatedly: the front door spreads it over the replicas, and
    # every one of them finds what either stored.
    for _ in range(4):
        assert router.responses.retrieve(first.id).output_text == first.output_text
        assert router.responses.retrieve(second.id).previous_response_id == first.id
        items = router.responses.input_items.list(second.id).data
        assert [i.content[0].text for i in items] == ["What is my name?"]
    # a third turn, streamed through the router (4 tokens: it may end incomplete)
    events = list(router.responses.create(model=cluster.model_name, input="Again?", max_output_tokens=4,
                                          temperature=0, previous_response_id=second.id, stream=True))
    assert events[0].type == "response.created"
    assert events[-1].type in ("response.completed", "response.incomplete"), events[-1]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    third = events[-1].response
    assert third.previous_response_id == second.id and third.usage.input_tokens > second.usage.input_tokens
    assert router.responses.retrieve(third.id).output_text == third.output_text
    # each replica continues the conversation, whichever one stored its turns
    fourths = [r.responses.create(model=cluster.model_name, input="Once more?", max_output_tokens=4,
                                  temperature=0, previous_response_id=third.id)
               for r in (replica_client(url) for url in cluster.replica_urls())]
    assert len(fourths) == 2 and fourths[0].usage.input_tokens == fourths[1].usage.input_tokens
    assert fourths[0].output_text == fourths[1].output_text


def test_stored_response_invisible_to_another_key_and_deleted_through_the_router(cluster):
    router_a = openai_client(cluster, CLUSTER_KEYS[0])
    router_b = openai_client(cluster, CLUSTER_KEYS[1])
    resp = router_a.responses.create(model=cluster.model_name, input="a secret", max_output_tokens=4)
    for _ in range(2):                       # twice: both replicas get asked
        with pytest.raises(openai.NotFoundError):
            router_b.responses.retrieve(resp.id)
        with pytest.raises(openai.NotFoundError):
            router_b.responses.input_items.list(resp.id)
        with pytest.raises(openai.NotFoundError):
            router_b.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):      # nor can key B continue key A's conversation
        router_b.responses.create(model=cluster.model_name, input="x", max_output_tokens=2,
                                  previous_response_id=resp.id)
    assert router_a.responses.retrieve(resp.id).id == resp.id          # B's attempts changed nothing
    deleted = router_a.responses.with_raw_response.delete(resp.id)      # the SDK's delete() returns None
    assert deleted.status_code == 200
    assert deleted.http_response.json() == {"id": resp.id, "object": "response.deleted", "deleted": True}
    for _ in range(2):
        with pytest.raises(openai.NotFoundError):
            router_a.responses.retrieve(resp.id)
    for url in cluster.replica_urls():       # gone from the shared store, not from one replica's view
        with pytest.raises(openai.NotFoundError):
            replica_client(url).responses.retrieve(resp.id)


def test_the_router_owns_no_stored_state(cluster):
    """What answers is a replica: our error envelope (SMG's would say `not_found`), SMG's own
    conversation store is out of reach (SMG would create one: 200), and the operator endpoints,
    which SMG does not serve (404 `unknown_url`), answer as on a replica."""
    status, body = http(cluster, "GET", "/v1/responses/resp_0123456789abcdef")
    assert status == 404 and body["error"]["code"] == "response_not_found", body
    status, body = http(cluster, "POST", "/v1/conversations", {})
    assert status == 404 and body["error"]["type"] == "not_found_error", body
    status, body = http(cluster, "POST", "/tokenize", {"model": cluster.model_name, "prompt": "Hello world"})
    assert status == 200 and body["tokens"] == [1, 15043, 3186], body
    status, body = http(cluster, "GET", "/version")
    assert status == 200 and body["version"], body
    status, body = http(cluster, "GET", "/version", key="not-a-key")        # replicas check keys too
    assert status == 401, body
