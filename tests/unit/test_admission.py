"""The 429 gate's count across frontend workers (frontend/admission.py), in separate processes as
the workers are."""
from __future__ import annotations

import multiprocessing

from frontend import admission
from frontend.admission import LocalAdmission, SharedAdmission


def _take(path: str, slot: int, capacity: int, n: int, out) -> None:
    a = SharedAdmission(path, slot)
    out.put(sum(a.try_acquire(capacity)[0] for _ in range(n)))


def test_workers_share_one_capacity(tmp_path):
    path = tmp_path / "admission"
    admission.create_file(path, 4)
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_take, args=(str(path), i, 10, 50, out))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sum(out.get(timeout=10) for _ in procs) == 10          # 200 tries, 10 places in all
    a = SharedAdmission(path, 0)                                  # a restarted worker 0: its count dropped
    assert a.open <= 10


def test_release_and_a_dead_workers_slot(tmp_path):
    path = tmp_path / "admission"
    admission.create_file(path, 2)
    w0, w1 = SharedAdmission(path, 0), SharedAdmission(path, 1)
    assert w0.try_acquire(3) == (True, 1) and w1.try_acquire(3) == (True, 2) and w1.try_acquire(3) == (True, 3)
    assert w0.try_acquire(3) == (False, 3)
    w0.release()
    assert w0.open == 2
    admission.clear_slot(path, 1)        # worker 1 died: the launcher frees its places
    assert w0.try_acquire(3) == (True, 1)
    assert w0.try_acquire(None)[0]       # no capacity known: no limit


def test_one_process_counts_alone():
    a = LocalAdmission()
    assert a.try_acquire(1) == (True, 1) and a.try_acquire(1) == (False, 1)
    a.release()
    assert a.open == 0
