"""How many decoder requests this replica's frontend has open: the 429 gate's count.

The decoder holds `capacity` requests at once (its batch slots plus its queue, from the model
config; frontend/triton_client.py `decoder_capacity`). With one frontend process the count is a
plain integer. With `--frontend-workers N` the N processes share one decoder, so they share the
count: a small file (`--admission-file`, made by the launcher) holds one 64-bit counter per worker
(`--admission-slot`), each written only by its worker; admitting sums them and adds one under an
exclusive `flock`, so two workers cannot both take the last place. A worker that dies leaves its
lock (the kernel drops it) and its counter, which the launcher zeroes before it starts the worker
again (`clear_slot`), since the dead worker's decoder streams ended with it.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Protocol

_SLOT = struct.Struct("<q")


class Admission(Protocol):
    def try_acquire(self, capacity: Optional[int]) -> tuple[bool, int]:
        """Takes a place unless `capacity` (None: no limit) places are taken; (taken, open count)."""

    def release(self) -> None: ...

    @property
    def open(self) -> int:
        """Requests open now (all workers')."""


class LocalAdmission:
    """One frontend process: the count is its own."""

    def __init__(self) -> None:
        self._open = 0

    def try_acquire(self, capacity: Optional[int]) -> tuple[bool, int]:
        if capacity is not None and self._open >= capacity:
            return False, self._open
        self._open += 1
        return True, self._open

    def release(self) -> None:
        self._open -= 1

    @property
    def open(self) -> int:
        return self._open


def create_file(path: Path, slots: int) -> None:
    """The launcher's part: a zeroed counter per worker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(_SLOT.size * slots))


def clear_slot(path: Path, slot: int) -> None:
    """Zeroes a dead worker's counter (the launcher, before restarting it). No file: nothing counted."""
    if not Path(path).exists():
        return
    with open(path, "r+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(slot * _SLOT.size)
        f.write(_SLOT.pack(0))
        f.flush()


class SharedAdmission:
    """One worker of several: its counter in the shared file, the others read under the lock."""

    def __init__(self, path: str | os.PathLike, slot: int) -> None:
        self._fd = os.open(path, os.O_RDWR)
        size = os.fstat(self._fd).st_size
        if size % _SLOT.size or not 0 <= slot < size // _SLOT.size:
            os.close(self._fd)
            raise ValueError(f"admission file {path} has no slot {slot}")
        self._slots = size // _SLOT.size
        self._offset = slot * _SLOT.size
        self._map = mmap.mmap(self._fd, size)
        with self._locked():
            _SLOT.pack_into(self._map, self._offset, 0)   # a restarted worker starts with nothing open

    @contextmanager
    def _locked(self):
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _total(self) -> int:
        return sum(v for (v,) in _SLOT.iter_unpack(self._map))

    def try_acquire(self, capacity: Optional[int]) -> tuple[bool, int]:
        with self._locked():
            total = self._total()
            if capacity is not None and total >= capacity:
                return False, total
            mine = _SLOT.unpack_from(self._map, self._offset)[0]
            _SLOT.pack_into(self._map, self._offset, mine + 1)
            return True, total + 1

    def release(self) -> None:
        with self._locked():
            mine = _SLOT.unpack_from(self._map, self._offset)[0]
            _SLOT.pack_into(self._map, self._offset, mine - 1)

    @property
    def open(self) -> int:
        with self._locked():
            return self._total()

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)
