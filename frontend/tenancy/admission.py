"""How many decoder requests this replica's frontend has open, in all and per API key: the 429
gate's counts (frontend/tenancy/fair_share.py decides with them).

The decoder holds `capacity` requests at once (its batch slots plus its queue, from the model
config; frontend/decoder/triton_client.py `decoder_capacity`). With one frontend process the counts are
plain integers. With `--frontend-workers N` the N processes share one decoder, so they share the
counts: a small file (`--admission-file`, made by the launcher) holds one record per worker
(`--admission-slot`), each written only by its worker: its open requests, then its open requests
per key bucket (KEY_BUCKETS buckets; a key id's bucket is a hash of it). Admitting sums the records
and adds one under an exclusive `flock`, so two workers cannot both take the last place, and every
worker sees every key's open requests. Two keys that share a bucket count as one key with both
keys' requests (each looks bigger than it is, never smaller). A worker that dies leaves its lock
(the kernel drops it) and its record, which the launcher zeroes before it starts the worker again
(`clear_slot`), since the dead worker's decoder streams ended with it.
"""
from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Hashable, Optional, Protocol

_COUNT = struct.Struct("<q")
KEY_BUCKETS = 256
_RECORD = _COUNT.size * (1 + KEY_BUCKETS)     # one worker's: its total, then its count per key bucket


def key_bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()[:4], "little") % KEY_BUCKETS


class Admission(Protocol):
    def try_acquire(self, capacity: Optional[int], key: Optional[str] = None) -> tuple[bool, int]:
        """Takes a place for `key` unless `capacity` (None: no limit) places are taken; (taken, open count)."""

    def release(self, key: Optional[str] = None) -> None: ...

    @property
    def open(self) -> int:
        """Requests open now (all workers')."""

    def key_open(self, key: str) -> int:
        """Requests of `key` open now (all workers')."""

    def keys_with_work(self) -> set[Hashable]:
        """Who has requests open (all workers'): each key as `key_of` names it."""

    def key_of(self, key: str) -> Hashable: ...


class LocalAdmission:
    """One frontend process: the counts are its own, per key exactly."""

    def __init__(self) -> None:
        self._open = 0
        self._keys: dict[str, int] = {}

    def try_acquire(self, capacity: Optional[int], key: Optional[str] = None) -> tuple[bool, int]:
        if capacity is not None and self._open >= capacity:
            return False, self._open
        self._open += 1
        if key is not None:
            self._keys[key] = self._keys.get(key, 0) + 1
        return True, self._open

    def release(self, key: Optional[str] = None) -> None:
        self._open -= 1
        if key is not None:
            n = self._keys.get(key, 0) - 1
            if n > 0:
                self._keys[key] = n
            else:
                self._keys.pop(key, None)

    @property
    def open(self) -> int:
        return self._open

    def key_open(self, key: str) -> int:
        return self._keys.get(key, 0)

    def keys_with_work(self) -> set[Hashable]:
        return set(self._keys)

    def key_of(self, key: str) -> Hashable:
        return key


def create_file(path: Path, slots: int) -> None:
    """The launcher's part: a zeroed record per worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(_RECORD * slots))


def clear_slot(path: Path, slot: int) -> None:
    """Zeroes a dead worker's record (the launcher, before restarting it). No file: nothing counted."""
    if not Path(path).exists():
        return
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(slot * _RECORD)
        f.write(bytes(_RECORD))
        f.flush()


class SharedAdmission:
    """One worker of several: its record in the shared file, the others read under the lock."""

    def __init__(self, path: str | os.PathLike, slot: int) -> None:
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size % _RECORD or not 0 <= slot < size // _RECORD:
            os.close(self._fd)
            raise ValueError(f"admission file {path} has no slot {slot}")
        self._slots = size // _RECORD
        self._offset = slot * _RECORD
        self._map = mmap.mmap(self._fd, size)
        with self._locked():
            self._map[self._offset:self._offset + _RECORD] = bytes(_RECORD)   # a restarted worker: nothing open

    @contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _sum(self, index: int) -> int:
        """Index 0: open requests; 1 + b: open requests of key bucket b; summed over the workers."""
        return sum(_COUNT.unpack_from(self._map, w * _RECORD + index * _COUNT.size)[0] for w in range(self._slots))

    def _add(self, index: int, delta: int) -> None:
        at = self._offset + index * _COUNT.size
        _COUNT.pack_into(self._map, at, _COUNT.unpack_from(self._map, at)[0] + delta)

    def try_acquire(self, capacity: Optional[int], key: Optional[str] = None) -> tuple[bool, int]:
        with self._locked():
            total = self._sum(0)
            if capacity is not None and total >= capacity:
                return False, total
            self._add(0, 1)
            if key is not None:
                self._add(1 + key_bucket(key), 1)
            return True, total + 1

    def release(self, key: Optional[str] = None) -> None:
        with self._locked():
            self._add(0, -1)
            if key is not None:
                self._add(1 + key_bucket(key), -1)

    @property
    def open(self) -> int:
        with self._locked():
            return self._sum(0)

    def key_open(self, key: str) -> int:
        with self._locked():
            return self._sum(1 + key_bucket(key))

    def keys_with_work(self) -> set[Hashable]:
        with self._locked():
            counts = struct.unpack_from(f"<{self._slots * (1 + KEY_BUCKETS)}q", self._map)
        return {b for b in range(KEY_BUCKETS)
                if sum(counts[w * (1 + KEY_BUCKETS) + 1 + b] for w in range(self._slots)) > 0}

    def key_of(self, key: str) -> Hashable:
        return key_bucket(key)

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
