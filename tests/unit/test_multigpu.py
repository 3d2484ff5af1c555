"""Multi-GPU launch: the mpirun line for a TP4 x PP2 engine, ports, shm prefixes, model control."""
import json
import stat

import pytest

from llama_triton.gpu.build import EngineSpec, plan_build, write_repository
from llama_triton.gpu.plan import load_model_shape
from llama_triton.serve.common import LaunchError, free_port
from llama_triton.serve.launcher import build_parser
from llama_triton.serve.multigpu import MultiGpuError, mpirun_command, rank_command, resolve_world_size
from llama_triton.serve.supervisor import Supervisor
from llama_triton.serve.tritonserver import TritonInstall


@pytest.fixture(scope="module")
def tp4pp2_repo(tmp_path_factory):
    """The repository `make engine MODEL=llama-2-70b TP=4 PP=2 QUANT=fp8` renders."""
    tmp = tmp_path_factory.mktemp("tp4pp2")
    bp = plan_build(EngineSpec(model="llama-2-70b", out_dir=str(tmp / "out"), tp=4, pp=2, quant="fp8"),
                    load_model_shape("llama-2-70b"))
    return write_repository(bp, tmp / "model_repository")


def segments(cmd: list[str]) -> list[list[str]]:
    out, cur = [], []
    for a in cmd[2:]:
        if a == ":":
            out.append(cur)
            cur = []
        else:
            cur.append(a)
    return out + [cur]


def test_tp4_pp2_mpirun_command(tp4pp2_repo):
    world = resolve_world_size(None, tp4pp2_repo)
    assert world == 8
    install = TritonInstall(binary="/opt/tritonserver/bin/tritonserver")
    cmd = mpirun_command(install, tp4pp2_repo, world, 8001, 8000, 8002, bind_address="0.0.0.0")
    assert cmd[:2] == ["mpirun", "--allow-run-as-root"]
    ranks = segments(cmd)
    assert len(ranks) == 8
    prefixes = []
    for rank, seg in enumerate(ranks):
        assert seg[:3] == ["-n", "1", "/opt/tritonserver/bin/tritonserver"]
        args = seg[3:]
        assert f"--model-repository={tp4pp2_repo}" in args
        assert "--disable-auto-complete-config" in args
        shm = [a for a in args if a.startswith("--backend-config=python,shm-region-prefix-name=")]
        assert len(shm) == 1
        prefixes.append(shm[0].rsplit("=", 1)[1])
        ports = [a for a in args if a.split("=")[0] in ("--grpc-port", "--http-port", "--metrics-port")]
        if rank == 0:
            # The leader serves: every model, the ports, on the requested address.
            assert ports == ["--grpc-port=8001", "--http-port=8000", "--metrics-port=8002"]
            assert "--grpc-address=0.0.0.0" in args
            assert not any(a.startswith(("--model-control-mode", "--load-model", "--allow-")) for a in args)
        else:
            # The others only run their share of the engine: one model, no endpoint.
            assert ports == []
            assert "--model-control-mode=explicit" in args
            assert [a for a in args if a.startswith("--load-model=")] == ["--load-model=tensorrt_llm"]
            assert {"--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"} <= set(args)
    assert prefixes == [f"prefix{i}_" for i in range(8)]


def test_rank_command_options():
    install = TritonInstall(binary="tritonserver", backend_dir="/opt/b")
    cmd = rank_command(install, "/r", 3, grpc_port=1, http_port=2, metrics_port=3, log_verbose=1)
    assert "--backend-directory=/opt/b" in cmd and "--log-verbose=1" in cmd
    assert cmd[-1] == "--backend-config=python,shm-region-prefix-name=prefix3_"
    cmd = mpirun_command("tritonserver", "/r", 2, 1, 2, 3, mpirun="/usr/bin/mpirun", oversubscribe=True)
    assert cmd[:3] == ["/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe"]
    with pytest.raises(MultiGpuError):
        mpirun_command("tritonserver", "/r", 1, 1, 2, 3)


def test_world_size_resolution(tmp_path, tp4pp2_repo):
    assert resolve_world_size(None, None) == 1
    assert resolve_world_size(None, tmp_path) == 1                     # no build-info.json: one process
    assert resolve_world_size(8, tp4pp2_repo) == 8
    with pytest.raises(MultiGpuError, match="built for 8 GPUs"):
        resolve_world_size(4, tp4pp2_repo)
    with pytest.raises(MultiGpuError, match="needs --repository"):
        resolve_world_size(2, None)
    (tmp_path / "build-info.json").write_text(json.dumps({"tp": 2, "pp": 1}))
    assert resolve_world_size(None, tmp_path) == 2


def fake_executable(path):
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def serve_args(tmp_path, repo, *extra):
    ports = [str(free_port()) for _ in range(4)]
    return build_parser().parse_args([
        "serve", "--repository", str(repo), "--tritonserver", str(fake_executable(tmp_path / "tritonserver")),
        "--work-dir", str(tmp_path / "run"), "--port", ports[0], "--triton-grpc-port", ports[1],
        "--triton-http-port", ports[2], "--triton-metrics-port", ports[3], *extra])


def test_launcher_starts_mpirun_for_a_multi_gpu_repository(tmp_path, tp4pp2_repo):
    mpirun = fake_executable(tmp_path / "mpirun")
    args = serve_args(tmp_path, tp4pp2_repo, "--mpirun", str(mpirun))
    assert args.world_size is None
    cmd = Supervisor(args).prepare()
    assert cmd[:2] == [str(mpirun), "--allow-run-as-root"] and cmd.count(":") == 7
    assert f"--grpc-port={args.triton_grpc_port}" in cmd and f"--http-port={args.triton_http_port}" in cmd

    args = serve_args(tmp_path, tp4pp2_repo, "--world-size", "4", "--mpirun", str(mpirun))
    with pytest.raises(LaunchError, match="built for 8 GPUs"):
        Supervisor(args).prepare()
    args = serve_args(tmp_path, tp4pp2_repo, "--mpirun", str(tmp_path / "no-mpirun"))
    with pytest.raises(LaunchError, match="needs mpirun"):
        Supervisor(args).prepare()


def test_launcher_single_gpu_repository_runs_one_server(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    cmd = Supervisor(serve_args(tmp_path, repo)).prepare()
    assert cmd[0].endswith("tritonserver") and "mpirun" not in cmd[0] and ":" not in cmd


def test_launcher_cpu_repository_is_one_process(tmp_path, default_model_dir):
    ports = [str(free_port()) for _ in range(4)]
    args = build_parser().parse_args([
        "serve", "--model-dir", str(default_model_dir), "--tritonserver", str(fake_executable(tmp_path / "ts")),
        "--work-dir", str(tmp_path / "run"), "--port", ports[0], "--triton-grpc-port", ports[1],
        "--triton-http-port", ports[2], "--triton-metrics-port", ports[3]])
    cmd = Supervisor(args).prepare()
    assert ":" not in cmd and "--backend-config=python,shm-region-prefix-name=prefix0_" not in cmd
    with pytest.raises(LaunchError, match="needs --repository"):
        Supervisor(build_parser().parse_args(
            ["serve", "--model-dir", str(default_model_dir), "--tritonserver", str(tmp_path / "ts"),
             "--work-dir", str(tmp_path / "run2"), "--port", ports[0], "--triton-grpc-port", ports[1],
             "--triton-http-port", ports[2], "--triton-metrics-port", ports[3], "--world-size", "2"])).prepare()


def test_per_rank_command_for_srun_and_hostfile_launches(tmp_path, capsys, monkeypatch):
    """`python -m llama_triton.serve.multigpu rank`: the same command on every rank (Slurm, Kubernetes)."""
    from llama_triton.serve import multigpu

    ts = str(fake_executable(tmp_path / "tritonserver"))
    for name in multigpu.RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "5")
    assert multigpu.main(["rank", "--repository", str(tmp_path), "--tritonserver", ts, "--print"]) == 0
    out = capsys.readouterr().out
    assert "prefix5_" in out and "--load-model=tensorrt_llm" in out and "--grpc-port" not in out
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")                     # mpirun's variable wins
    assert multigpu.main(["rank", "--repository", str(tmp_path), "--tritonserver", ts, "--print"]) == 0
    out = capsys.readouterr().out
    assert "prefix0_" in out and "--grpc-port=8001" in out and "--grpc-address=0.0.0.0" in out
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK")
    monkeypatch.delenv("SLURM_PROCID")
    assert multigpu.main(["rank", "--repository", str(tmp_path), "--tritonserver", ts, "--print"]) == 2
    assert "no MPI rank" in capsys.readouterr().err
