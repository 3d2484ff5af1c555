"""The 429 gate's count across frontend workers (frontend/tenancy/admission.py), in separate processes as
the workers are."""
from __future__ import annotations

import multiprocessing

from frontend.tenancy import admission
from frontend.tenancy.admission import LocalAdmission, SharedAdmission


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


def test_per_key_counts_span_the_workers(tmp_path):
    """Fair share (frontend/tenancy/fair_share.py) judges a key by its requests in every worker."""
    path = tmp_path / "admission"
    admission.create_file(path, 2)
    w0, w1 = SharedAdmission(path, 0), SharedAdmission(path, 1)
    assert w0.try_acquire(10, "alpha")[0] and w1.try_acquire(10, "alpha")[0] and w1.try_acquire(10, "beta")[0]
    assert (w0.key_open("alpha"), w0.key_open("beta"), w1.key_open("alpha")) == (2, 1, 2)
    assert w0.keys_with_work() == {w0.key_of("alpha"), w0.key_of("beta")} and len(w0.keys_with_work()) == 2
    w1.release("alpha")
    assert w0.key_open("alpha") == 1 and w0.open == 2
    admission.clear_slot(path, 1)        # worker 1 died: its per-key counts go with it
    assert w0.key_open("beta") == 0 and w0.keys_with_work() == {w0.key_of("alpha")}


def test_one_process_counts_keys_exactly():
    a = LocalAdmission()
    assert a.try_acquire(3, "x")[0] and a.try_acquire(3, "y")[0] and a.try_acquire(3, "x")[0]
    assert (a.key_open("x"), a.key_open("y"), a.keys_with_work()) == (2, 1, {"x", "y"})
    a.release("y")
    assert a.keys_with_work() == {"x"}
