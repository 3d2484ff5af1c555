"""The cluster's front door (llama_triton/serve/router_front.py) between real HTTP servers: an
aiohttp app standing where SMG is and two standing where the replicas are (each says who it is).
Which paths go where, framings relayed byte for byte (chunked SSE event by event, a chunked
request body, Expect: 100-continue, keep-alive), ambiguous framing refused, a client that hangs
up mid-stream cutting the upstream off, and the front's own errors in the API's envelope.

The real thing is tested in tests/integration/test_cluster_responses.py (SMG 1.13 behind it)."""
from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

from llama_triton.serve import router_front
from llama_triton.serve.router_front import REPLICA_PATHS, Front, ReplicaList


@pytest.mark.parametrize("path, replica", [
    ("/v1/responses/resp-0a1b", True), ("/v1/responses/resp_1/input_items?limit=2&order=asc", True),
    ("/v1/responses/resp_1/cancel", True), ("/v1/conversations", True), ("/v1/conversations/c1/items/i2", True),
    ("/tokenize", True), ("/detokenize", True), ("/version", True),
    ("/v1/responses", False), ("/v1/responses?x=1", False), ("/v1/chat/completions", False),
    ("/v1/models", False), ("/health", False), ("/workers", False), ("/metrics", False),
    # nothing that a server could normalise into another route (around SMG's limits)
    ("/v1/responses/../chat/completions", False), ("/v1/responses/%2e%2e/chat/completions", False),
    ("/v1/responses/a/b", False), ("/v1/responses/a/input_items/x", False), ("/tokenize/x", False),
    ("/v1/conversations/a.b", False),
])
def test_which_paths_go_to_a_replica(path, replica):
    assert bool(REPLICA_PATHS.match(path)) is replica


class Upstreams:
    """SMG's stand-in and two replicas' on free ports; each records what it received."""

    def __init__(self):
        self.seen: list[tuple[str, str, str, bytes, dict]] = []      # (who, method, path, body, headers)
        self.stream_gone = asyncio.Event()
        self.stream_done = asyncio.Event()
        self.runners: list[web.AppRunner] = []
        self.ports: dict[str, int] = {}

    def app(self, who: str) -> web.Application:
        async def any_route(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.seen.append((who, request.method, request.path_qs, body, dict(request.headers)))
            if request.path == "/stream":
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                resp.enable_chunked_encoding()
                await resp.prepare(request)
                try:
                    for i in range(int(request.query.get("n", "3"))):
                        await resp.write(f"data: {i}\n\n".encode())
                        await asyncio.sleep(float(request.query.get("gap", "0")))
                    await resp.write(b"data: [DONE]\n\n")
                except (ConnectionError, asyncio.CancelledError):
                    self.stream_gone.set()
                    raise
                await resp.write_eof()
                self.stream_done.set()
                return resp
            if request.path == "/workers":
                if request.headers.get("Authorization") != "Bearer admin-k":
                    return web.json_response({"error": "no"}, status=401)
                return web.json_response({"workers": [
                    {"url": f"http://127.0.0.1:{self.ports['replica-0']}", "is_healthy": True},
                    {"url": f"http://127.0.0.1:{self.ports['replica-1']}", "is_healthy": True},
                    {"url": "http://127.0.0.1:1", "is_healthy": False},
                    {"url": "grpc://127.0.0.1:2", "is_healthy": True}]})
            return web.json_response({"who": who, "method": request.method, "path": request.path_qs,
                                      "body": body.decode()}, headers={"X-Upstream": who})
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_route)
        return app

    async def start(self) -> None:
        for who in ("smg", "replica-0", "replica-1"):
            runner = web.AppRunner(self.app(who))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            self.ports[who] = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()


def run(scenario):
    async def main():
        up = Upstreams()
        await up.start()
        replicas = ReplicaList(("127.0.0.1", up.ports["smg"]), "admin-k")
        front = Front(("127.0.0.1", up.ports["smg"]), replicas.candidates)
        await front.start("127.0.0.1", 0)
        port = front.server.sockets[0].getsockname()[1]
        try:
            return await scenario(up, front, port)
        finally:
            front.server.close()
            await up.stop()
    return asyncio.run(main())


async def exchange(port: int, raw: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 20) if read_until_close else b""
    writer.close()
    return data


def split(response: bytes) -> tuple[int, dict, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower().decode(): v.strip().decode() for k, _, v in (ln.partition(b":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_stored_response_paths_go_to_the_replicas_in_turn_the_rest_to_smg():
    async def scenario(up, front, port):
        whos = []
        for path in ("/v1/responses/resp_1", "/v1/responses/resp_1/input_items?limit=1", "/version",
                     "/v1/responses/resp_1"):
            status, headers, _ = split(await exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                                                      f"Authorization: Bearer k\r\nConnection: close\r\n\r\n".encode()))
            assert status == 200
            whos.append(headers["x-upstream"])
        status, headers, body = split(await exchange(
            port, b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"))
        assert status == 200 and headers["x-upstream"] == "smg" and json.loads(body)["body"] == "{}"
        return whos, up.seen
    whos, seen = run(scenario)
    assert set(whos) == {"replica-0", "replica-1"} and whos[0] != whos[1]         # both, in turn
    replica_requests = [s for s in seen if s[0].startswith("replica")]
    assert [s[2] for s in replica_requests] == ["/v1/responses/resp_1", "/v1/responses/resp_1/input_items?limit=1",
                                                "/version", "/v1/responses/resp_1"]
    # the client's key reaches the replica, which checks it; hop-by-hop headers do not
    assert all(s[4].get("Authorization") == "Bearer k" for s in replica_requests)
    assert all(s[4].get("Connection") == "close" for s in replica_requests)


def test_a_stream_is_relayed_event_by_event_and_the_connection_kept():
    async def scenario(up, front, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream?n=3&gap=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head and b"text/event-stream" in head
        # the first event arrives while the upstream is still writing the others
        first = await asyncio.wait_for(reader.readuntil(b"data: 0\n\n\r\n"), 10)
        assert not up.stream_done.is_set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 10)
        events = [line for line in (first + rest).split(b"\r\n") if line.startswith(b"data:")]
        assert events == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
        # keep-alive: a second request on the same connection, to a replica this time
        writer.write(b"GET /v1/responses/r1 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200") and b"X-Upstream: replica-" in head
        writer.close()
    run(scenario)


def test_a_chunked_request_body_and_expect_continue():
    async def scenario(up, front, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10) == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        status, headers, body = split(await asyncio.wait_for(reader.read(), 10))
        writer.close()
        assert status == 200 and json.loads(body)["body"] == "hello world"
        (_, _, _, _, received), = [s for s in up.seen if s[2] == "/v1/chat/completions"]
        assert "Expect" not in received
    run(scenario)


@pytest.mark.parametrize("head, status", [
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"GET /v1/realtime HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 501),
    (b"GET /v1/models\r\n\r\n", 400),
    (b"GET /v1/models HTTP/1.1\r\nbad header\r\n\r\n", 400),
    (b"GET /v1/models HTTP/1.1\r\nX-Big: " + b"a" * (router_front.MAX_HEAD_BYTES + 10) + b"\r\n\r\n", 431),
])
def test_what_cannot_be_relayed_safely_is_refused_in_the_envelope(head, status):
    async def scenario(up, front, port):
        got, headers, body = split(await exchange(port, head))
        assert got == status and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert not up.seen                                     # nothing reached an upstream
    run(scenario)


def test_a_client_that_hangs_up_mid_stream_cuts_the_upstream_off():
    async def scenario(up, front, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream?n=200&gap=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"data: 1\n\n"), 10)
        writer.close()
        await asyncio.wait_for(up.stream_gone.wait(), 10)     # long before its 200 events
    run(scenario)


def test_no_healthy_replica_is_a_503_and_a_dead_upstream_a_503():
    async def scenario(up, front, port):
        async def none():
            return []
        front.replicas = none
        status, headers, body = split(await exchange(port, b"GET /v1/responses/r1 HTTP/1.1\r\n\r\n"))
        assert status == 503 and headers["retry-after"] == "2"
        assert json.loads(body)["error"]["code"] == "router_unavailable"
        front.smg = ("127.0.0.1", 1)                           # nothing listens there
        status, _, body = split(await exchange(port, b"GET /v1/models HTTP/1.1\r\n\r\n"))
        assert status == 503 and "router" in json.loads(body)["error"]["message"]
    run(scenario)


def test_the_replica_list_is_smgs_healthy_http_workers():
    async def scenario(up, front, port):
        listed = await ReplicaList(("127.0.0.1", up.ports["smg"]), "admin-k").fetch()
        assert listed == [("127.0.0.1", up.ports["replica-0"]), ("127.0.0.1", up.ports["replica-1"])]
        with pytest.raises(OSError, match="401"):
            await ReplicaList(("127.0.0.1", up.ports["smg"]), "wrong").fetch()
    run(scenario)
