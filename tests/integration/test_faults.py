"""Faults on a stack of our own: per-request timeouts, a client that stops reading, tritonserver
killed mid-stream (the launcher restarts it, the frontend comes back on its own) and SIGTERM to the
launcher (stop accepting, finish what can finish within --shutdown-grace, cancel the rest).

The tests run in file order on one module stack; the last one shuts it down. Timings they measure
are printed (`pytest -s`) so they can be quoted.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.error
import urllib.request

import aiohttp
import psutil
import pytest

from tests.integration.conftest import DECODER_MODES, decoder_mode
from tests.integration.frontends import extra_frontend
from tests.integration.stack import start_stack, wait_for

pytestmark = [pytest.mark.timeout(600), pytest.mark.skipif(
    bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")),
    reason="starts, kills and stops a CPU stack of its own; the suite targets an external stack")]

SHUTDOWN_GRACE = 6.0
WRITE_TIMEOUT = 3.0
LONG = 3000          # max_tokens no request here reaches before it is cut off (~150 tokens/s on CPU)


# ----------------------------------------------------------------------------- helpers (also used by test_soak)


def launcher_children(stack) -> list[psutil.Process]:
    try:
        return psutil.Process(stack.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def frontend_process(stack) -> psutil.Process:
    frontends = stack.processes()["frontend"]
    assert frontends, "no frontend process under the launcher"
    return frontends[0]


def triton_process(stack) -> psutil.Process | None:
    for p in launcher_children(stack):
        try:
            if p.name() == "tritonserver" and p.status() != psutil.STATUS_ZOMBIE:
                return p
        except psutil.Error:
            continue
    return None


def rss(proc: psutil.Process, with_children: bool = False) -> int:
    """Resident bytes of a process (and of its children: the Python backend stubs of tritonserver)."""
    procs = [proc] + (proc.children(recursive=True) if with_children else [])
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def http(base: str, path: str, body=None, headers=None, timeout=60, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, raw, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def health(base: str) -> int:
    try:
        return http(base, "/health", timeout=5)[0]
    except OSError:
        return 0


def chat_body(model: str, max_tokens: int = LONG, stream: bool = True, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Tell me a long story"}],
            "max_tokens": max_tokens, "stream": stream, "temperature": 1.0, "seed": 7, **extra}


def idle(stack):
    s = stack.engine_stats()
    return s if s.get("num_running") == 0 and s.get("num_waiting") == 0 else None


class SSEClient:
    """One streamed request read line by line, with the arrival time of every event."""

    def __init__(self, base: str, body: dict):
        self.base, self.body = base, body
        self.status: int | None = None
        self.events: list[tuple[float, bytes]] = []
        self.closed_at: float | None = None
        self.error: BaseException | None = None

    async def run(self, session: aiohttp.ClientSession) -> "SSEClient":
        try:
            async with session.post(f"{self.base}/v1/chat/completions", json=self.body) as r:
                self.status = r.status
                async for line in r.content:
                    if line.startswith(b"data: "):
                        self.events.append((time.monotonic(), line[6:].strip()))
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            self.error = e
        self.closed_at = time.monotonic()
        return self

    @property
    def chunks(self) -> int:
        return sum(1 for _, d in self.events if d.startswith(b"{") and b'"choices"' in d)

    def error_event(self) -> tuple[float, dict] | None:
        for t, d in self.events:
            if d.startswith(b'{"error"'):
                return t, json.loads(d)["error"]
        return None

    def done_at(self) -> float | None:
        return next((t for t, d in self.events if d == b"[DONE]"), None)


async def wait_async(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        await asyncio.sleep(0.02)


# ----------------------------------------------------------------------------- the module stack


# The CPU and GPU decoder modes (issue 11): the GPU-mode decoder errs and ends streams as
# TensorRT-LLM does. Not the LLM-API mode: this module needs a stack of its own per mode, and the
# LLM-API decoder's cancellation and errors run through the session stack (test_cancellation.py,
# test_llmapi_decoder.py) without a third one.
FAULT_MODES = tuple(m for m in DECODER_MODES if m != "llmapi")


@pytest.fixture(scope="module", params=FAULT_MODES)
def fault_stack(request, default_model_dir, tmp_path_factory):
    mode = ("--decoder-io", request.param) if request.param != "cpu" else ()
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("faults"), *mode,
                    "--max-tokens-cap", "4096", "--max-seq-len", "4096", "--max-num-tokens", "65536",
                    "--shutdown-grace", str(SHUTDOWN_GRACE),
                    frontend_args=("--write-timeout", str(WRITE_TIMEOUT)))
    s.decoder_io = request.param
    yield s
    s.stop()


# ----------------------------------------------------------------------------- per-request timeout


def test_request_timeout_cancels_the_triton_request(fault_stack, default_model_dir):
    stack = fault_stack
    limit = 1.5
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--request-timeout", str(limit),
                        "--served-model-name", stack.model_name) as (base, _):
        # Non-streamed: a 504 with the envelope, and the decoder slot is freed.
        before = wait_for(lambda: idle(stack), what="idle decoder")
        t0 = time.monotonic()
        status, raw, headers = http(base, "/v1/chat/completions", chat_body(stack.model_name, stream=False))
        took = time.monotonic() - t0
        err = json.loads(raw)["error"]
        assert status == 504 and err["code"] == "request_timeout", (status, raw)
        assert headers.get("X-Request-Id", "").startswith("chatcmpl-")
        # Not before the configured limit; that it fired at all is the 504 (the request would
        # otherwise run its LONG tokens to a 200). No wall-clock upper bound: the box may be loaded.
        assert took >= limit, took
        after = wait_for(lambda: (lambda s: s if s["num_cancelled"] > before["num_cancelled"]
                                  and s["num_running"] == 0 else None)(stack.engine_stats()),
                         what="decoder slot freed")
        assert after["num_generated_tokens"] - before["num_generated_tokens"] < LONG
        assert after["last_cancel_latency_steps"] <= 1      # stop=true / the stream cancel reached it at once
        print(f"\nnon-streamed: 504 after {took:.2f} s (limit {limit} s); slot freed")

        # Streamed: chunks, then an error event with the same code, then [DONE].
        before = after

        async def one():
            async with aiohttp.ClientSession() as session:
                return await SSEClient(base, chat_body(stack.model_name)).run(session)
        t0 = time.monotonic()
        c = asyncio.run(one())
        assert c.status == 200 and c.chunks > 3
        t_err, err = c.error_event()
        assert err["code"] == "request_timeout"
        assert c.events[-1][1] == b"[DONE]"
        assert limit <= t_err - t0 < limit + 2
        wait_for(lambda: (lambda s: s if s["num_cancelled"] > before["num_cancelled"]
                          and s["num_running"] == 0 else None)(stack.engine_stats()), what="decoder slot freed")
        status, raw, _ = http(base, "/metrics", method="GET")
        assert b'llama_triton_cancellations_total{reason="timeout"} 2.0' in raw
        print(f"streamed: {c.chunks} chunks, then the timeout error event after {t_err - t0:.2f} s; slot freed")
        # The frontend keeps serving.
        ok = http(base, "/v1/chat/completions", chat_body(stack.model_name, max_tokens=4, stream=False))
        assert ok[0] == 200


# ----------------------------------------------------------------------------- a client that stops reading


def test_slow_client_is_cut_off_with_bounded_memory(fault_stack):
    stack = fault_stack
    fe = frontend_process(stack)
    before = wait_for(lambda: idle(stack), what="idle decoder")
    rss0 = rss(fe)
    # Large events (4 choices, 20 top logprobs per token; GPU mode has no top logprobs) and a tiny
    # receive window.
    top = {} if decoder_mode(stack) == "gpu" else {"top_logprobs": 20}
    body = json.dumps(chat_body(stack.model_name, n=4, logprobs=True, **top)).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", stack.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    t0 = time.monotonic()
    peak = rss0
    try:
        wait_for(lambda: stack.engine_stats()["num_running"] >= 4, timeout=60, what="decoding started")

        def freed():
            nonlocal peak
            peak = max(peak, rss(fe))
            s = stack.engine_stats()
            return s if s["num_cancelled"] > before["num_cancelled"] and s["num_running"] == 0 else None
        after = wait_for(freed, timeout=120, interval=0.2, what="slow client cancelled")
        cut = time.monotonic() - t0
        # The server closed the connection: reading drains what the kernel holds, then EOF/reset.
        sock.settimeout(10)
        received = 0
        try:
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                received += len(data)
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        sock.close()
    generated = int(after["num_generated_tokens"] - before["num_generated_tokens"])
    growth = peak - rss0
    print(f"\nslow client: cancelled {cut:.1f} s after the request ({generated} tokens generated, "
          f"{received / 1e6:.1f} MB had reached the client's socket); frontend RSS {rss0 / 2**20:.0f} MiB -> "
          f"peak {peak / 2**20:.0f} MiB (+{growth / 2**20:.1f} MiB)")
    assert generated < 4 * LONG
    assert growth < 64 * 2**20, growth
    status, raw, _ = http(stack.base_url, "/metrics", method="GET")
    assert b'llama_triton_cancellations_total{reason="slow_client"} 1.0' in raw
    assert http(stack.base_url, "/v1/chat/completions", chat_body(stack.model_name, 4, stream=False))[0] == 200


# ----------------------------------------------------------------------------- tritonserver killed mid-stream


def test_tritonserver_killed_mid_stream_and_recovery(fault_stack):
    stack = fault_stack
    triton = triton_process(stack)
    assert triton is not None
    old_stubs = {p.pid for p in triton.children(recursive=True)}
    assert old_stubs, "expected Python backend stubs under tritonserver"
    clients = [SSEClient(stack.base_url, chat_body(stack.model_name, seed=i)) for i in range(6)]

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            tasks = [asyncio.create_task(c.run(session)) for c in clients]
            await wait_async(lambda: all(c.chunks >= 3 for c in clients), 60, "all streams flowing")
            killed = time.monotonic()
            os.kill(triton.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            return killed
    killed = asyncio.run(scenario())
    delays = []
    for c in clients:
        assert c.status == 200 and c.error is None, (c.status, c.error)
        t_err, err = c.error_event()
        assert err["code"] == "model_not_ready" and err["type"] == "server_error", err
        assert c.events[-1][1] == b"[DONE]"
        delays.append(c.done_at() - killed)
    print(f"\nSIGKILL tritonserver: {len(clients)} open streams got the error event and [DONE] after "
          f"{min(delays):.3f}..{max(delays):.3f} s")
    assert max(delays) < 1.0, delays

    # While Triton is down: 503 from /health and from new requests, with the envelope.
    assert health(stack.base_url) == 503
    status, raw, headers = http(stack.base_url, "/v1/chat/completions", chat_body(stack.model_name, 4, stream=False))
    assert status == 503 and json.loads(raw)["error"]["type"] == "server_error" and "Retry-After" in headers
    status, raw, _ = http(stack.base_url, "/v1/chat/completions", chat_body(stack.model_name, 4))
    assert status == 503

    # The launcher restarts tritonserver with backoff; the same frontend process serves again.
    fe_pid = frontend_process(stack).pid
    wait_for(lambda: health(stack.base_url) == 200, timeout=300, interval=0.25, what="recovery")
    recovered = time.monotonic() - killed
    new_triton = triton_process(stack)
    assert new_triton is not None and new_triton.pid != triton.pid
    assert frontend_process(stack).pid == fe_pid
    status, raw, _ = http(stack.base_url, "/v1/chat/completions", chat_body(stack.model_name, 8, stream=False))
    assert status == 200, raw
    served = time.monotonic() - killed

    async def stream_again():
        async with aiohttp.ClientSession() as session:
            return await SSEClient(stack.base_url, chat_body(stack.model_name, 8)).run(session)
    again = asyncio.run(stream_again())
    assert again.status == 200 and again.error_event() is None and again.events[-1][1] == b"[DONE]"
    # The killed server's stubs did not outlive it.
    leftovers = [pid for pid in old_stubs if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not leftovers, leftovers
    log = stack.log_path.read_text(errors="replace")
    assert "restarting in" in log and "tritonserver is back" in log
    print(f"recovery: /health 200 {recovered:.1f} s after the kill, first completion {served:.1f} s "
          f"(same frontend pid {fe_pid}; new tritonserver pid {new_triton.pid})")


# ----------------------------------------------------------------------------- graceful shutdown (last: ends the stack)


def test_sigterm_drains_then_cancels(fault_stack):
    stack = fault_stack
    wait_for(lambda: idle(stack), what="idle decoder")
    short = SSEClient(stack.base_url, chat_body(stack.model_name, max_tokens=60, seed=1))
    long = SSEClient(stack.base_url, chat_body(stack.model_name, max_tokens=LONG, seed=2))
    refused_after: list[float] = []

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            tasks = [asyncio.create_task(c.run(session)) for c in (short, long)]
            await wait_async(lambda: short.chunks >= 2 and long.chunks >= 2, 60, "both streams flowing")
            sent = time.monotonic()
            stack.proc.send_signal(signal.SIGTERM)
            # New connections are refused while the drain runs: within the first half of the grace
            # period (the server itself goes away only after all of it).
            while time.monotonic() - sent < SHUTDOWN_GRACE / 2:
                try:
                    with socket.create_connection(("127.0.0.1", stack.port), timeout=0.5):
                        pass
                except OSError:
                    refused_after.append(time.monotonic() - sent)
                    break
                await asyncio.sleep(0.05)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            return sent
    sent = asyncio.run(scenario())
    assert refused_after, "the frontend kept accepting connections after SIGTERM"
    # The short request finished normally inside the grace period.
    assert short.error_event() is None and short.events[-1][1] == b"[DONE]"
    finals = [json.loads(d) for _, d in short.events if d.startswith(b"{")]
    assert any(ch.get("finish_reason") == "length" for f in finals for ch in f.get("choices", []))
    # The long one was cancelled at the end of the grace period, with an error event and [DONE].
    t_err, err = long.error_event()
    assert err["code"] == "shutting_down"
    assert long.events[-1][1] == b"[DONE]"
    # Not before the configured grace; that it was cut at all is the shutting_down code (the LONG
    # request would otherwise run to its end). No wall-clock upper bound: the box may be loaded.
    assert t_err - sent >= SHUTDOWN_GRACE - 0.5, t_err - sent
    rc = stack.proc.wait(60)
    exited = time.monotonic() - sent
    assert rc == 0
    assert triton_process(stack) is None
    print(f"\nSIGTERM: new connections refused after {refused_after[0]:.2f} s; the short stream finished "
          f"at {short.done_at() - sent:.2f} s; the long one got 'shutting_down' at {t_err - sent:.2f} s "
          f"(grace {SHUTDOWN_GRACE} s); launcher exited (rc 0) after {exited:.1f} s")
