"""The launcher's one-line errors for the usual set-up mistakes."""
import socket
import subprocess
import sys

from llama_triton.serve.common import free_port


def serve(*args: str) -> subprocess.CompletedProcess:
    ports = [str(free_port()) for _ in range(4)]
    cmd = [sys.executable, "-m", "llama_triton.serve.launcher", "serve", "--port", ports[0], "--triton-grpc-port", ports[1],
           "--triton-http-port", ports[2], "--triton-metrics-port", ports[3], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if "error:" in line]


def test_missing_model_directory(tmp_path):
    r = serve("--model-dir", str(tmp_path / "nope"), "--work-dir", str(tmp_path / "run"))
    assert r.returncode == 1
    [line] = error_lines(r)
    assert "model directory" in line and "not found" in line


def test_port_taken(default_model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        r = serve("--model-dir", str(default_model_dir), "--work-dir", str(tmp_path / "run"), "--port", str(taken))
    assert r.returncode == 1
    [line] = error_lines(r)
    assert f"port {taken}" in line and "already in use" in line


def test_tritonserver_not_found(default_model_dir, tmp_path):
    r = serve("--model-dir", str(default_model_dir), "--work-dir", str(tmp_path / "run"),
              "--tritonserver", str(tmp_path / "no-such-tritonserver"))
    assert r.returncode == 1
    [line] = error_lines(r)
    assert "tritonserver" in line and "not an executable" in line


def test_frontend_workers_below_one(default_model_dir, tmp_path):
    r = serve("--model-dir", str(default_model_dir), "--work-dir", str(tmp_path / "run"), "--frontend-workers", "0")
    assert r.returncode == 1
    [line] = error_lines(r)
    assert "--frontend-workers must be at least 1" in line
