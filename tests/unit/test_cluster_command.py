"""`llama-triton cluster`'s command lines: the SMG flags parse with the installed smg's own parser
and mean what docs/SCALE-OUT.md says; the subcommand is wired into the launcher."""
from __future__ import annotations

import argparse

from smg.launch_router import parse_router_args

from llama_triton.serve.cluster import Cluster, router_command
from llama_triton.serve.launcher import build_parser

WORKERS = ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]


def smg_args(**kw):
    cmd = router_command(["smg"], "127.0.0.1", 8080, 29000, WORKERS, **kw)
    assert cmd[:2] == ["smg", "launch"]
    return parse_router_args(cmd[2:])


def test_router_flags_as_smg_reads_them():
    a = smg_args()
    assert a.worker_urls == WORKERS and (a.host, a.port) == ("127.0.0.1", 8080)
    assert a.policy == "cache_aware"
    assert a.routing_key_override and "x-prompt-cache-key" in a.routing_key_headers
    assert a.worker_warmup_secs == 0
    assert (a.health_check_interval_secs, a.health_failure_threshold) == (2, 1)
    assert (a.prometheus_host, a.prometheus_port) == ("127.0.0.1", 29000)
    assert a.api_key is None and not a.tenant_api_keys


def test_api_keys_reach_the_router():
    a = smg_args(api_keys=("k1", "k2", "k3"))
    assert a.api_key == "k1"
    assert sorted(a.tenant_api_keys) == [("key-1", "k2"), ("key-2", "k3")]


def test_round_robin_for_the_comparison():
    assert smg_args(policy="round_robin").policy == "round_robin"


def test_cluster_subcommand_parses_and_passes_serve_options_on():
    args = build_parser().parse_args(["cluster", "--replicas", "3", "--port", "9000", "--",
                                      "--decoder-kind", "zero_cost"])
    assert (args.command, args.replicas, args.port) == ("cluster", 3, 9000)
    assert Cluster(args).serve_args == ["--decoder-kind", "zero_cost"]


def test_zero_replicas_is_refused(tmp_path, capsys):
    args = build_parser().parse_args(["cluster", "--replicas", "0", "--work-dir", str(tmp_path)])
    assert Cluster(args).run() == 1
    assert "--replicas must be at least 1" in capsys.readouterr().err


def test_serve_still_parses():
    assert isinstance(build_parser().parse_args(["serve"]), argparse.Namespace)
