"""What the launcher, its supervisor and the cluster share: their log lines, `LaunchError`, free
ports, the HTTP readiness poll, and the line a supervising process waits for."""
from __future__ import annotations

import socket
import sys
import urllib.request

DEFAULT_MODEL_DIR = "var/models/llama2-tiny"
# Logged once every frontend worker listens: what a supervising process waits for (served_stack.py).
SERVING_LINE = b"serving the OpenAI API at"


class LaunchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[llama-triton] {msg}", file=sys.stderr, flush=True)


def loud(msg: str) -> None:
    """A failure of the replica's own processes: one line an operator's log search finds."""
    print(f"[llama-triton] ERROR {msg}", file=sys.stderr, flush=True)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except Exception:
        return False
