"""One frontend process with keys against the session's Triton: idle keep-alive connections are
closed, and the --metrics-port listener serves /metrics (and only it) to Prometheus while the API
port keeps it from client keys (issue 25)."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from llama_triton.serve.common import free_port
from tests.integration.frontends import extra_frontend

pytestmark = pytest.mark.timeout(300)

KEY = "sk-tenant-Rt5Yu6Io7Pa8Sd9Fg0"


def get(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_idle_keepalive_is_bounded_and_metrics_have_their_own_port(stack, default_model_dir):
    if not hasattr(stack, "proc"):
        pytest.skip("starts a frontend of its own against the stack's Triton")
    metrics_port = free_port()
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        "--keepalive-timeout", "1", "--metrics-port", str(metrics_port),
                        env={"API_KEYS": f"tenant:{KEY}"}) as (base, _proc):
        host, port = base.rsplit("//", 1)[1].split(":")
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")      # HTTP/1.1: keep-alive
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" not in answer
            # Idle from here: the server closes it (aiohttp's default kept it for an hour). The
            # socket timeout only guards against a hang; the assertion is the EOF.
            rest = b""
            while chunk := s.recv(65536):
                rest += chunk
            assert rest == b""
        # /metrics: the metrics port, without a key; not there on the API port for a client key
        assert get(f"http://127.0.0.1:{metrics_port}/metrics") == 200
        assert get(f"http://127.0.0.1:{metrics_port}/v1/models", KEY) == 404
        assert get(f"{base}/metrics", KEY) == 403 and get(f"{base}/metrics") == 401
        assert get(f"{base}/v1/models", KEY) == 200
