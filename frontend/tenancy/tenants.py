"""Tenants: API keys with ids, their reload, and what each key is kept apart by (docs/OPERATIONS.md).

Keys come from $API_KEYS (comma-separated) and the keys file (--api-keys-file / $API_KEYS_FILE,
one per line, `#` comments). A line `ID:KEY` names the key: ID is what metrics and logs show for
it (letters, digits, `_.-`, at most 64). A bare `KEY` gets the id `key-` + 8 hex digits of a
SHA-256 of the key, so that nothing derived from the key alone is cheap to reverse for a random
key; name your keys. A key is never logged, exported or echoed.

The file is re-read when it changes (checked at most once per RELOAD_CHECK_S, on requests): keys
rotate without a restart. A file that cannot be read or that holds no key keeps the keys in force
(and says so in the log): a half-written file must not open the API or lock everyone out.

Each request runs as a `Tenant`: its key id and its prefix-cache scope. The scope is the key's own
id unless the key is in a sharing group (`--cache-share-group NAME=ID,ID...`), which lets a team's
keys reuse each other's cached prompt prefixes. `cache_salt` turns the scope (plus the request's
`prompt_cache_key` and `cache_salt`) into the uint64 the decoder scopes its cache by, keyed with
this replica's secret (`hash_secret`) so a direct Triton client cannot compute another tenant's.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger("frontend.tenants")   # its name before the move

RELOAD_CHECK_S = 1.0
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# The frontend workers of one replica share its decoder, so they must salt alike: the launcher
# generates this once per replica (llama_triton/serve/supervisor.py) unless the operator sets it.
HASH_SECRET_ENV = "LLAMA_TRITON_HASH_SECRET"
# The id the router's own key has in a replica's keys file (`router:KEY`: llama-triton cluster and
# deploy/ write it so). Besides the API, it may read the replica's load gauges on /metrics, which
# SMG polls; never the rest, which spans every tenant.
ROUTER_KEY_ID = "router"


@dataclass(frozen=True)
class Tenant:
    key_id: str        # what metrics and logs call the key
    cache_scope: str   # who shares cached prompt blocks: "key:<id>", "group:<name>" or "open"


OPEN = Tenant("anonymous", "open")     # no keys configured: one tenant


class KeysInvalid(ValueError):
    """A keys source that cannot be used (the message never contains a key)."""


def derived_id(key: str) -> str:
    return "key-" + hashlib.sha256(b"llama-triton key id\0" + key.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def parse_keys(env_value: Optional[str], file_text: Optional[str]) -> dict[str, str]:
    """key -> key id, from $API_KEYS and the keys file's text. Raises KeysInvalid naming the line."""
    entries: list[tuple[str, str]] = []
    for i, item in enumerate((env_value or "").split(",")):
        if item.strip():
            entries.append((f"$API_KEYS item {i + 1}", item.strip()))
    for n, line in enumerate((file_text or "").splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((f"keys file line {n}", line))
    keys: dict[str, str] = {}
    ids: dict[str, str] = {}
    for where, item in entries:
        key_id, sep, key = item.partition(":")
        if not sep:
            key_id, key = derived_id(item), item
        key_id, key = key_id.strip(), key.strip()
        if not KEY_ID.match(key_id):
            raise KeysInvalid(f"{where}: the key id before ':' must be 1-64 of A-Z a-z 0-9 _ . -")
        if not key or any(c.isspace() for c in key):
            raise KeysInvalid(f"{where}: the key is empty or holds whitespace")
        if key in keys and keys[key] != key_id:
            raise KeysInvalid(f"{where}: the same key is listed under two ids ({keys[key]}, {key_id})")
        if ids.get(key_id, key) != key:
            raise KeysInvalid(f"{where}: the id {key_id} names two different keys")
        keys[key], ids[key_id] = key_id, key
    return keys


def parse_share_groups(specs: list[str]) -> dict[str, str]:
    """key id -> group name, from `NAME=ID,ID...` items (--cache-share-group, $CACHE_SHARE_GROUPS)."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        name = name.strip()
        if not sep or not KEY_ID.match(name):
            raise KeysInvalid(f"cache share group {spec!r}: expected NAME=KEY_ID,KEY_ID,... (NAME: A-Z a-z 0-9 _ . -)")
        for member in (m.strip() for m in members.split(",")):
            if not member:
                continue
            if member in out and out[member] != name:
                raise KeysInvalid(f"key id {member} is in two cache share groups ({out[member]}, {name})")
            out[member] = name
    return out


class KeyRing:
    """The keys one frontend accepts, their ids, and the file they are reloaded from."""

    def __init__(self, env_value: Optional[str] = None, keys_file: Optional[str] = None,
                 share_groups: Optional[dict[str, str]] = None):
        self.env_value = env_value
        self.keys_file = Path(keys_file) if keys_file else None
        self.share_groups = dict(share_groups or {})
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._keys = parse_keys(env_value, self._read())
        self._encoded = [(k.encode(), i) for k, i in self._keys.items()]
        self._ever: tuple[str, ...] = tuple(sorted(self._keys))   # rotated-out keys stay secrets (log redaction)
        self._next_check = time.monotonic() + RELOAD_CHECK_S
        self.reloads = 0

    @classmethod
    def of(cls, keys: dict[str, str]) -> "KeyRing":
        """A fixed ring (tests, tools): key -> id."""
        ring = cls()
        ring._keys = dict(keys)
        ring._encoded = [(k.encode(), i) for k, i in ring._keys.items()]
        ring._ever = tuple(sorted(ring._keys))
        return ring

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def ids(self) -> list[str]:
        return sorted(set(self._keys.values()))

    def secrets(self) -> tuple[str, ...]:
        """Every key this ring has held, for log redaction (the same object until a reload)."""
        return self._ever

    def tenant(self, key_id: str) -> Tenant:
        group = self.share_groups.get(key_id)
        return Tenant(key_id, f"group:{group}" if group else f"key:{key_id}")

    def authenticate(self, token: bytes) -> Optional[Tenant]:
        """The tenant of a bearer token, or None. Compares against every key, so the time taken
        does not tell which one matched."""
        self.maybe_reload()
        found = None
        for key, key_id in self._encoded:
            if hmac.compare_digest(token, key) and found is None:
                found = key_id
        return None if found is None else self.tenant(found)

    def maybe_reload(self) -> bool:
        """Re-reads the keys file when it changed (at most once per RELOAD_CHECK_S)."""
        if self.keys_file is None or time.monotonic() < self._next_check:
            return False
        with self._lock:
            if time.monotonic() < self._next_check:
                return False
            self._next_check = time.monotonic() + RELOAD_CHECK_S
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                keys = parse_keys(self.env_value, self._read())
            except (OSError, KeysInvalid) as e:
                log.error("API keys file %s not reloaded, the keys in force stay: %s", self.keys_file, e)
                return False
            if not keys:
                log.error("API keys file %s now holds no key; the keys in force stay", self.keys_file)
                return False
            added, removed = set(keys.values()) - set(self._keys.values()), set(self._keys.values()) - set(keys.values())
            self._keys = keys
            self._encoded = [(k.encode(), i) for k, i in keys.items()]
            self._ever = tuple(sorted(set(self._ever) | set(keys)))
            self.reloads += 1
            log.info("API keys reloaded: %d key(s); ids added %s, removed %s", len(keys), sorted(added) or "none",
                     sorted(removed) or "none")
            return True

    def _file_stamp(self):
        if self.keys_file is None:
            return None
        try:
            st = self.keys_file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> Optional[str]:
        if self.keys_file is None:
            return None
        try:
            return self.keys_file.read_text()
        except UnicodeDecodeError:
            raise KeysInvalid(f"{self.keys_file}: not UTF-8 text") from None


def hash_secret() -> bytes:
    """This replica's secret for salts and user hashes: $LLAMA_TRITON_HASH_SECRET, else random
    (then it differs per process, and per-user labels and cache salts differ per worker)."""
    value = os.environ.get(HASH_SECRET_ENV)
    return value.encode() if value else secrets.token_bytes(32)


def cache_salt(secret: bytes, tenant: Tenant, prompt_cache_key: Optional[str], salt: Optional[str]) -> int:
    """The uint64 the decoder scopes its prefix cache by: equal only for the same tenant scope,
    prompt_cache_key and cache_salt. Fields are length-prefixed, so no two tuples collide by
    concatenation."""
    h = hmac.new(secret, b"llama-triton cache salt", hashlib.sha256)
    for part in (tenant.cache_scope, prompt_cache_key, salt):
        data = b"\xff" if part is None else b"\x00" + part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(4, "little") + data)
    return int.from_bytes(h.digest()[:8], "little")
