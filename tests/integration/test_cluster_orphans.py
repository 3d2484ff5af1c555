"""`llama-triton cluster` killed hard (issue 24, finding 14): its replicas ran in sessions of their
own and outlived it as orphans, holding their ports, tritonserver and memory. Now the kernel tells
them when the cluster process dies (parent-death signal), and each replica stops its own processes.

A cluster of its own (one replica on the zero-cost decoder: the decoder's work plays no part here),
since the test kills it."""
from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.integration.stack import ROOT
from tests.served_cluster import start_served_cluster

pytestmark = pytest.mark.skipif(bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")),
                                reason="starts a cluster of its own; the suite targets an external stack")


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_replicas_and_router_die_with_a_cluster_killed_hard(default_model_dir, tmp_path):
    cluster = start_served_cluster(str(default_model_dir), tmp_path, 1, "--shutdown-grace", "1",
                                   serve_args=("--decoder-kind", "zero_cost", "--max-seq-len", "256"), cwd=ROOT)
    family: list[psutil.Process] = []
    try:
        family = psutil.Process(cluster.proc.pid).children(recursive=True)   # router, replica, its processes
        names = {p.name() for p in family}
        assert any(port for port, _ in cluster.replica_launchers())
        assert cluster.replica_process(cluster.replica_launchers()[0][0], "tritonserver") is not None
        os.kill(cluster.proc.pid, signal.SIGKILL)
        cluster.proc.wait()
        deadline = time.monotonic() + 120
        while any(alive(p) for p in family) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [(p.pid, p.name()) for p in family if alive(p)]
        assert not left, f"outlived the cluster: {left} (of {sorted(names)})"
    finally:
        for p in family:            # whatever outlived it (the failure above): not left behind
            if alive(p):
                p.kill()
        cluster.stop()
