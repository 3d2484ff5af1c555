"""Where stored responses live: SQLite (one replica, the default) or PostgreSQL (a cluster).

A stored response is its Response object, this turn's input items, the id of the response it
continues, and its owner: a SHA-256 of the API key that created it (never the key). Every read
and delete is scoped to the owner, so another key's response is indistinguishable from one that
does not exist (404). With PostgreSQL every replica of a cluster reads the same table, so a
conversation continues on whichever replica the router picks.

Limits (settings, see docs/OPERATIONS.md): records expire after `ttl` seconds (never returned
after that, purged at most once a minute); a record larger than `max_record_bytes` is not kept
(the response says `store: false`); each owner keeps at most `max_per_owner` responses, the
oldest dropped first.

URLs: `sqlite:PATH` (`sqlite::memory:` for one process only), `postgresql://user@host:port/db`.
A password belongs in $LLAMA_TRITON_RESPONSES_STORE, PGPASSWORD or a pgpass file, never on a
command line (settings.py refuses it there).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Protocol

import orjson

log = logging.getLogger("frontend.responses.store")

PURGE_INTERVAL_S = 60.0
MAX_CHAIN = 1000            # turns followed back through previous_response_id


@dataclass(frozen=True)
class StoreLimits:
    ttl: float = 30 * 24 * 3600.0        # OpenAI keeps responses 30 days
    max_record_bytes: int = 16 * 1024 * 1024
    max_per_owner: int = 10_000


@dataclass
class StoredResponse:
    id: str
    owner: str
    created_at: float
    previous_response_id: Optional[str]
    response: dict
    input_items: list[dict]


class StoreUnavailable(RuntimeError):
    """The database cannot be reached (HTTP 503)."""


def owner_of_key(key: Optional[str]) -> str:
    """The owner recorded for an API key: its SHA-256 (the key itself is never stored). No key: ""."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest() if key else ""


class ResponseStore(Protocol):
    limits: StoreLimits

    async def put(self, record: StoredResponse) -> bool: ...

    async def get(self, id: str, owner: str) -> Optional[StoredResponse]: ...

    async def chain(self, id: str, owner: str) -> list[StoredResponse]: ...

    async def delete(self, id: str, owner: str) -> bool: ...

    async def close(self) -> None: ...


_COLUMNS = "id, owner, created_at, previous_response_id, response, input_items"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS llama_triton_responses ("
           " id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,"
           " expires_at DOUBLE PRECISION NOT NULL, previous_response_id TEXT,"
           " response TEXT NOT NULL, input_items TEXT NOT NULL)",
           "CREATE INDEX IF NOT EXISTS llama_triton_responses_owner"
           " ON llama_triton_responses (owner, created_at)",
           "CREATE INDEX IF NOT EXISTS llama_triton_responses_expiry ON llama_triton_responses (expires_at)")
# The conversation up to `id`, oldest first: one query however long the chain.
_CHAIN = ("WITH RECURSIVE chain(id, prev, depth) AS ("
          " SELECT id, previous_response_id, 0 FROM llama_triton_responses"
          "  WHERE id = {p1} AND owner = {p2} AND expires_at > {p3}"
          " UNION ALL"
          " SELECT r.id, r.previous_response_id, c.depth + 1 FROM llama_triton_responses r"
          "  JOIN chain c ON r.id = c.prev WHERE r.owner = {p2} AND r.expires_at > {p3} AND c.depth < {p4})"
          " SELECT r.id, r.owner, r.created_at, r.previous_response_id, r.response, r.input_items"
          " FROM llama_triton_responses r JOIN chain c ON r.id = c.id ORDER BY c.depth DESC")
_TRIM = ("DELETE FROM llama_triton_responses WHERE owner = {p1} AND id NOT IN ("
         " SELECT id FROM llama_triton_responses WHERE owner = {p1} ORDER BY created_at DESC LIMIT {p2})")


def _row(row) -> StoredResponse:
    return StoredResponse(row[0], row[1], float(row[2]), row[3], orjson.loads(row[4]), orjson.loads(row[5]))


class _Common:
    limits: StoreLimits
    _last_purge = 0.0

    def _encode(self, record: StoredResponse) -> Optional[tuple]:
        response, items = orjson.dumps(record.response), orjson.dumps(record.input_items)
        if len(response) + len(items) > self.limits.max_record_bytes:
            log.warning("response %s not stored: %d bytes, over the limit of %d", record.id,
                        len(response) + len(items), self.limits.max_record_bytes)
            return None
        return (record.id, record.owner, record.created_at, record.created_at + self.limits.ttl,
                record.previous_response_id, response.decode(), items.decode())

    def _purge_due(self) -> bool:
        now = time.monotonic()
        if now - self._last_purge < PURGE_INTERVAL_S:
            return False
        self._last_purge = now
        return True


class SQLiteStore(_Common):
    """One file shared by the replica's frontend workers (WAL mode), read and written on one
    thread per worker so the event loop never waits on the disk."""

    def __init__(self, path: str, limits: StoreLimits = StoreLimits()):
        self.path = path
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="responses-sqlite")
        self._db: Optional[sqlite3.Connection] = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            for statement in _SCHEMA:
                db.execute(statement)
            self._db = db
        return self._db

    async def _run(self, fn, *args):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.Error as e:
            raise StoreUnavailable(f"the response store failed: {e}") from None

    async def put(self, record: StoredResponse) -> bool:
        row = self._encode(record)
        if row is None:
            return False
        purge = self._purge_due()

        def work():
            db = self._conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO llama_triton_responses (id, owner, created_at, expires_at, "
                           "previous_response_id, response, input_items) VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                db.execute(_TRIM.format(p1="?", p2="?"), (record.owner, record.owner, self.limits.max_per_owner))
                if purge:
                    db.execute("DELETE FROM llama_triton_responses WHERE expires_at <= ?", (time.time(),))
            return True
        return await self._run(work)

    async def get(self, id: str, owner: str) -> Optional[StoredResponse]:
        def work():
            row = self._conn().execute(f"SELECT {_COLUMNS} FROM llama_triton_responses WHERE id = ? AND owner = ? "
                                       "AND expires_at > ?", (id, owner, time.time())).fetchone()
            return _row(row) if row else None
        return await self._run(work)

    async def chain(self, id: str, owner: str) -> list[StoredResponse]:
        sql = _CHAIN.format(p1="?", p2="?", p3="?", p4="?")
        now = time.time()

        def work():
            # sqlite numbers `?` by position, so the repeated parameters are passed again
            return [_row(r) for r in self._conn().execute(sql, (id, owner, now, owner, now, MAX_CHAIN)).fetchall()]
        return await self._run(work)

    async def delete(self, id: str, owner: str) -> bool:
        def work():
            cur = self._conn().execute("DELETE FROM llama_triton_responses WHERE id = ? AND owner = ? "
                                       "AND expires_at > ?", (id, owner, time.time()))
            return cur.rowcount > 0
        return await self._run(work)

    async def close(self) -> None:
        def work():
            if self._db is not None:
                self._db.close()
                self._db = None
        await self._run(work)
        self._pool.shutdown(wait=False)


class PostgresStore(_Common):
    """asyncpg pool on the cluster's database; the table is created by the first replica to connect
    (under an advisory lock: concurrent CREATE TABLE IF NOT EXISTS can collide in PostgreSQL)."""

    LOCK_ID = 0x6C6C616D61          # an arbitrary constant of ours, for pg_advisory_xact_lock

    def __init__(self, dsn: str, limits: StoreLimits = StoreLimits()):
        self.dsn = dsn
        self.limits = limits
        self._pool = None
        self._lock = asyncio.Lock()

    async def _get_pool(self):
        if self._pool is None:
            async with self._lock:
                if self._pool is None:
                    import asyncpg
                    try:
                        pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, command_timeout=10)
                        async with pool.acquire() as conn, conn.transaction():
                            await conn.execute("SELECT pg_advisory_xact_lock($1)", self.LOCK_ID)
                            for statement in _SCHEMA:
                                await conn.execute(statement)
                    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as e:
                        raise StoreUnavailable(f"cannot reach the response store: {type(e).__name__}: {e}") from None
                    self._pool = pool
        return self._pool

    async def _run(self, work):
        import asyncpg
        pool = await self._get_pool()
        try:
            async with pool.acquire() as conn:
                return await work(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as e:
            raise StoreUnavailable(f"the response store failed: {type(e).__name__}: {e}") from None

    async def put(self, record: StoredResponse) -> bool:
        row = self._encode(record)
        if row is None:
            return False
        purge = self._purge_due()

        async def work(conn):
            async with conn.transaction():
                await conn.execute("INSERT INTO llama_triton_responses (id, owner, created_at, expires_at, "
                                   "previous_response_id, response, input_items) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                                   *row)
                await conn.execute(_TRIM.format(p1="$1", p2="$2"), record.owner, self.limits.max_per_owner)
                if purge:
                    await conn.execute("DELETE FROM llama_triton_responses WHERE expires_at <= $1", time.time())
            return True
        return await self._run(work)

    async def get(self, id: str, owner: str) -> Optional[StoredResponse]:
        async def work(conn):
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM llama_triton_responses WHERE id = $1 AND owner = $2 "
                                      "AND expires_at > $3", id, owner, time.time())
            return _row(row) if row else None
        return await self._run(work)

    async def chain(self, id: str, owner: str) -> list[StoredResponse]:
        sql = _CHAIN.format(p1="$1", p2="$2", p3="$3", p4="$4")

        async def work(conn):
            return [_row(r) for r in await conn.fetch(sql, id, owner, time.time(), MAX_CHAIN)]
        return await self._run(work)

    async def delete(self, id: str, owner: str) -> bool:
        async def work(conn):
            status = await conn.execute("DELETE FROM llama_triton_responses WHERE id = $1 AND owner = $2 "
                                        "AND expires_at > $3", id, owner, time.time())
            return status.endswith(" 1")
        return await self._run(work)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def open_store(url: Optional[str], limits: StoreLimits = StoreLimits()) -> ResponseStore:
    """The store a URL names (nothing connects until first use). None: SQLite in memory."""
    if not url or url == "sqlite::memory:":
        return SQLiteStore(":memory:", limits)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, limits)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        return SQLiteStore(path, limits)
    raise ValueError(f"unknown response store {url!r}: use sqlite:PATH or postgresql://user@host:port/db")
