"""Extra frontend processes against the session's Triton (auth, limits, a dead decoder)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager

from llama_triton.serve.common import free_port
from tests.integration.stack import ROOT


@contextmanager
def extra_frontend(model_dir: str, grpc_url: str, *args: str, env: dict | None = None, expect_healthy=True):
    port = free_port()
    cmd = [sys.executable, "-m", "frontend", "--model-dir", model_dir, "--triton-grpc", grpc_url,
           "--port", str(port), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode()[-3000:])
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except urllib.error.HTTPError:
                if not expect_healthy:
                    break       # it answers (503), which is all we wait for
            except Exception:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("extra frontend did not start")
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
