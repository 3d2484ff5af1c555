"""`llama-triton cluster`'s command lines: the SMG flags parse with the installed smg's own parser
and mean what docs/SCALE-OUT.md says; keys reach SMG from files, as tenants, never as admins and
never on a command line; the subcommand is wired into the launcher."""
from __future__ import annotations

import argparse
import sys

import pytest
from smg.launch_router import parse_router_args

from llama_triton.serve import router_launch
from llama_triton.serve.cluster import Cluster, RouterKeys, router_command, smg_flags
from llama_triton.serve.launcher import build_parser

WORKERS = ["http://127.0.0.1:8100", "http://127.0.0.1:8101"]


def smg_args(**kw):
    return parse_router_args(smg_flags("127.0.0.1", 8080, 29000, WORKERS, **kw))


def test_router_flags_as_smg_reads_them():
    a = smg_args()
    assert a.worker_urls == WORKERS and (a.host, a.port) == ("127.0.0.1", 8080)
    assert a.policy == "cache_aware"
    assert a.routing_key_override and "x-prompt-cache-key" in a.routing_key_headers
    assert a.worker_warmup_secs == 0
    assert (a.health_check_interval_secs, a.health_failure_threshold) == (2, 1)
    assert (a.prometheus_host, a.prometheus_port) == ("127.0.0.1", 29000)
    assert a.api_key is None and not a.tenant_api_keys and not a.control_plane_api_keys
    assert a.history_backend == "none"      # SMG stores nothing: stored responses are the replicas'


def test_the_front_door_takes_the_public_address_and_smg_moves_behind_it(tmp_path):
    (tmp_path / "admin").write_text("admin:k-admin\n")
    cmd = router_command(RouterKeys(tmp_path / "admin"), smg_flags("0.0.0.0", 8080, 29000, WORKERS))
    options, a = router_launch.parse(cmd[3:])
    assert options.public == ("0.0.0.0", 8080) and options.admin_key == "k-admin"
    assert a.host == "127.0.0.1" and a.port not in (0, 8080)          # a free loopback port
    options, a = router_launch.parse(["--smg-port", "18081", *cmd[3:]])
    assert (a.host, a.port) == ("127.0.0.1", 18081)


@pytest.fixture
def key_files(tmp_path, monkeypatch):
    monkeypatch.setenv("API_KEYS", "ops:k-env")
    (tmp_path / "admin").write_text("admin:k-admin\n")
    (tmp_path / "worker").write_text("k-worker\n")
    # as on Kubernetes, the replicas' keys file also lists the router's worker key
    (tmp_path / "clients").write_text("# clients\nalice:k-alice\nbob:k-bob\nk-bare\nrouter:k-worker\n")
    return RouterKeys(tmp_path / "admin", tmp_path / "worker", tmp_path / "clients")


def test_keys_reach_the_router_from_files_as_tenants(key_files):
    cmd = router_command(key_files, smg_flags("127.0.0.1", 8080, 29000, WORKERS))
    assert cmd[:3] == [sys.executable, "-m", "llama_triton.serve.router_launch"]
    for secret in ("k-admin", "k-worker", "k-alice", "k-bob", "k-bare", "k-env"):
        assert not any(secret in part for part in cmd)
    _, a = router_launch.parse(cmd[3:])
    assert a.worker_urls == WORKERS and a.policy == "cache_aware"
    # clients: tenants (the frontend's key ids), never the control plane's
    tenants = dict(a.tenant_api_keys)
    assert tenants["alice"] == "k-alice" and tenants["bob"] == "k-bob" and tenants["ops"] == "k-env"
    assert len(tenants) == 4 and tenants[next(t for t in tenants if t.startswith("key-"))] == "k-bare"
    assert a.control_plane_api_keys == [("admin", "admin", "k-admin", "admin")]
    assert a.api_key == "k-worker"        # SMG's own calls to the replicas; not a tenant too
    assert "router" not in tenants


def test_router_launch_refuses_keys_on_its_command_line_and_a_missing_admin_key(key_files, tmp_path, capsys):
    flags = smg_flags("127.0.0.1", 8080, 29000, WORKERS)
    for bad in (["--api-key", "x"], ["--api-key=x"], ["--tenant-api-key", "t:x"], ["--control-plane-api-keys", "a:b:admin:x"]):
        cmd = router_command(key_files, flags + bad)
        assert router_launch.main(cmd[3:]) == 2
        assert "may not be given on the command line" in capsys.readouterr().err
    with pytest.raises(SystemExit):     # --admin-key-file is required
        router_launch.parse(["--", *flags])
    capsys.readouterr()
    (tmp_path / "empty").write_text("# nothing\n")
    cmd = router_command(RouterKeys(tmp_path / "empty"), flags)
    assert router_launch.main(cmd[3:]) == 2 and "holds no key" in capsys.readouterr().err
    # client keys but no worker key: SMG could not discover the replicas' models
    cmd = router_command(RouterKeys(key_files.admin, None, key_files.tenants), flags)
    assert router_launch.main(cmd[3:]) == 2 and "worker-key-file" in capsys.readouterr().err


def test_without_client_keys_smg_has_no_data_plane_key(tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEYS", raising=False)
    (tmp_path / "admin").write_text("k-admin-only\n")
    _, a = router_launch.parse(router_command(RouterKeys(tmp_path / "admin"), smg_flags(
        "127.0.0.1", 8080, 29000, WORKERS))[3:])
    assert a.api_key is None and a.tenant_api_keys == []
    assert a.control_plane_api_keys == [("admin", "admin", "k-admin-only", "admin")]


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


def test_router_launch_stops_before_smg_when_the_front_door_cannot_listen(tmp_path, capsys):
    import socket
    (tmp_path / "admin").write_text("admin:k-admin\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = router_command(RouterKeys(tmp_path / "admin"), smg_flags("127.0.0.1", port, 0, WORKERS))
        assert router_launch.main(cmd[3:]) == 2
    assert f"the front door cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
