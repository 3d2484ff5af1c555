"""Stored responses in the suite's 2-replica cluster (tests/integration/cluster_fixtures.py): both
replicas keep them in one real PostgreSQL database, so a conversation continues on either replica
and every replica can read or delete what another stored, each only for the key that made it.

What Shepherd Model Gateway 1.13 does with the Responses API (measured, docs/SCALE-OUT.md): it
forwards POST /v1/responses to a replica (adding `top_k: -1`, `priority: 0` and the sampling
defaults), but answers GET/DELETE /v1/responses/{id} from its own history, which holds nothing
that an HTTP worker created. Retrieval and deletion therefore go to a replica's own port, which
these tests use; creation and `previous_response_id` chains go through the router."""
from __future__ import annotations

import openai
import pytest

from tests.integration.cluster_fixtures import CLUSTER_KEYS, openai_client


def replica_client(url: str, key: str = CLUSTER_KEYS[0]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def test_conversation_across_replicas_through_the_router(cluster):
    router = openai_client(cluster)
    first = router.responses.create(model=cluster.model_name, input="My name is Ada.", max_output_tokens=4,
                                    temperature=0)
    second = router.responses.create(model=cluster.model_name, input="What is my name?", max_output_tokens=4,
                                     temperature=0, previous_response_id=first.id)
    assert second.previous_response_id == first.id
    replicas = [replica_client(url) for url in cluster.replica_urls()]
    assert len(replicas) == 2
    # each replica continues the conversation, whichever one stored its turns
    thirds = [r.responses.create(model=cluster.model_name, input="Again?", max_output_tokens=4, temperature=0,
                                 previous_response_id=second.id) for r in replicas]
    assert thirds[0].usage.input_tokens == thirds[1].usage.input_tokens > second.usage.input_tokens
    assert thirds[0].output_text == thirds[1].output_text
    for r in replicas:
        assert r.responses.retrieve(first.id).output_text == first.output_text
        assert [i.content[0].text for i in r.responses.input_items.list(second.id).data] == ["What is my name?"]


def test_stored_response_invisible_to_another_key_and_deleted_everywhere(cluster):
    router_a = openai_client(cluster, CLUSTER_KEYS[0])
    resp = router_a.responses.create(model=cluster.model_name, input="a secret", max_output_tokens=4)
    urls = cluster.replica_urls()
    for url in urls:
        other = replica_client(url, CLUSTER_KEYS[1])
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(resp.id)
        with pytest.raises(openai.NotFoundError):
            other.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):      # nor can key B continue key A's conversation
        openai_client(cluster, CLUSTER_KEYS[1]).responses.create(
            model=cluster.model_name, input="x", max_output_tokens=2, previous_response_id=resp.id)
    replica_client(urls[0]).responses.delete(resp.id)
    for url in urls:
        with pytest.raises(openai.NotFoundError):
            replica_client(url).responses.retrieve(resp.id)
