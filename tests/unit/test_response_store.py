"""The response store on both backends (SQLite file, a real PostgreSQL server): owner scoping,
conversation chains, retention, size and per-key limits."""
from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from frontend.openai.responses.store import StoredResponse, StoreLimits, open_store, owner_of_key


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:{tmp_path}/responses.sqlite3"
    server = request.getfixturevalue("postgres_server")
    return server.url


def record(owner: str, prev=None, text="hi", created=None) -> StoredResponse:
    rid = f"resp-{uuid.uuid4().hex}"
    return StoredResponse(rid, owner, created or time.time(), prev, {"id": rid, "output": [{"text": text}]},
                          [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}])


def run(coro):
    return asyncio.run(coro)


def test_owner_scoping_chain_and_delete(store_url):
    async def go():
        store = open_store(store_url)
        a, b = owner_of_key("key-a"), owner_of_key("key-b")
        assert a != b and "key-a" not in a
        first = record(a, text="one")
        second = record(a, first.id, "two")
        third = record(a, second.id, "three")
        for r in (first, second, third):
            assert await store.put(r)
        assert (await store.get(first.id, a)).response == first.response
        assert await store.get(first.id, b) is None
        chain = await store.chain(third.id, a)
        assert [r.id for r in chain] == [first.id, second.id, third.id]
        assert await store.chain(third.id, b) == []
        assert not await store.delete(second.id, b)
        assert await store.delete(second.id, a)
        assert [r.id for r in await store.chain(third.id, a)] == [third.id]    # the chain ends where a turn is gone
        assert not await store.delete(second.id, a)
        await store.close()
    run(go())


def test_limits(store_url):
    async def go():
        owner = owner_of_key(uuid.uuid4().hex)
        store = open_store(store_url, StoreLimits(ttl=3600, max_record_bytes=600, max_per_owner=2))
        assert not await store.put(record(owner, text="x" * 700))              # too big: not kept
        kept = [record(owner, text=str(i), created=time.time() + i) for i in range(3)]
        for r in kept:
            assert await store.put(r)
        assert [await store.get(r.id, owner) is not None for r in kept] == [False, True, True]
        await store.close()
        expired = open_store(store_url, StoreLimits(ttl=0.001))
        r = record(owner)
        assert await expired.put(r)
        await asyncio.sleep(0.01)
        assert await expired.get(r.id, owner) is None and await expired.chain(r.id, owner) == []
        await expired.close()
    run(go())


def test_two_stores_on_one_database_see_each_other(store_url):
    """Two replicas (or two frontend workers) on the same database."""
    async def go():
        one, two = open_store(store_url), open_store(store_url)
        owner = owner_of_key("k")
        r = record(owner)
        await one.put(r)
        assert (await two.get(r.id, owner)).id == r.id
        assert await two.delete(r.id, owner)
        assert await one.get(r.id, owner) is None
        await one.close()
        await two.close()
    run(go())


def test_a_password_is_refused_on_the_command_line_but_taken_from_the_environment(monkeypatch, capsys):
    from frontend.settings import RESPONSES_STORE_ENV, parse_args
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", "m", "--responses-store", "postgresql://app:s3cret@db:5432/r"])
    assert "s3cret" not in capsys.readouterr().err
    monkeypatch.setenv(RESPONSES_STORE_ENV, "postgresql://app:s3cret@db:5432/r")
    assert parse_args(["--model-dir", "m"]).responses_store == "postgresql://app:s3cret@db:5432/r"
    assert parse_args(["--model-dir", "m", "--responses-store", "sqlite:/x.db"]).responses_store == "sqlite:/x.db"
