"""The router's front door: the cluster's public port, in front of Shepherd Model Gateway (SMG).

SMG 1.13 answers some routes from its own state instead of forwarding them (read in its 1.13.0
source distribution, model_gateway/src/server.rs `build_app` and `v1_responses_get` /
`v1_responses_delete` / `v1_responses_list_input_items`, and measured, docs/SCALE-OUT.md):

* `GET /v1/responses/{id}`, `GET .../input_items`, `DELETE /v1/responses/{id}` come from SMG's own
  history store, whatever the router mode; its HTTP router stores nothing a worker created, so
  they answered 404 for every response our replicas stored;
* `/v1/conversations...` creates and reads conversations in SMG's own store, which no replica
  honours (ours refuse `conversation`);
* `/tokenize`, `/detokenize`, `/version` are not SMG routes at all (404).

No SMG setting forwards them. This front sends exactly those paths (REPLICA_PATHS) to a healthy
replica, and every other request to SMG unchanged: the replicas share one PostgreSQL store, so
any replica answers for any stored response, and each checks the caller's key itself. The
replicas are the ones SMG reports healthy on its `/workers` control-plane route (the admin key,
which router_launch.py holds), so the front needs no address list of its own, on a laptop or on
Kubernetes.

It is a byte relay for HTTP/1.1, not a second router: one request at a time per client
connection, a fresh loopback connection to the upstream per request (`Connection: close`), the
request and response bodies streamed in whatever framing they came with (Content-Length,
chunked, or until the upstream closes), so SSE streams pass event by event. A client that goes
away mid-answer closes its upstream connection at once, which SMG and the frontend see as the
disconnect they cancel the generation on. Ambiguous framing (Transfer-Encoding with
Content-Length, a Transfer-Encoding other than chunked, several Content-Lengths) is refused, so
the front and the upstream never disagree on where a request ends. Its own errors use the API's
error envelope.

Only the standard library, so it runs inside SMG's image beside router_launch.py (deploy/base/router.yaml).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional
from urllib.parse import urlsplit

log = logging.getLogger("llama_triton.router_front")

# The routes the replicas answer and SMG does not (see the module docstring): stored responses
# by id (retrieve, delete, input items, cancel), conversations, and the operator endpoints.
# Ids are plain tokens (ours: resp_<hex>): no dots, no percent-escapes, so no path that a server
# would normalise into another route (a way around SMG's per-tenant limits) can match.
_ID = r"[A-Za-z0-9_-]+"
REPLICA_PATHS = re.compile(rf"^(?:/v1/responses/{_ID}(?:/input_items|/cancel)?"
                           rf"|/v1/conversations(?:/{_ID}(?:/items(?:/{_ID})?)?)?"
                           rf"|/tokenize|/detokenize|/version)(?:\?[^#]*)?$")

MAX_HEAD_BYTES = 64 * 1024          # request or response line plus headers
MAX_HEADERS = 128
IDLE_TIMEOUT_S = 75.0               # a keep-alive client connection with no request in this time is closed
HEAD_TIMEOUT_S = 30.0               # a request head (and each body read) must arrive within this
CHUNK = 64 * 1024
WORKERS_TTL_S = 1.0                 # how long SMG's list of healthy replicas is reused
# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, never forwarded. Expect is
# answered here (the body is relayed as it comes), Upgrade refused.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade", b"expect",
                        b"proxy-authenticate", b"proxy-authorization"})
_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] ([1-5][0-9][0-9])(?: .*)?$")


class BadMessage(Exception):
    """A message the front cannot relay safely: answered with `status` (client side) or 502."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Head:
    first: bytes                     # request line or status line
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def get(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k.lower() == name]


def error_body(status: int, message: str, code: str) -> bytes:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def error_response(status: int, message: str, code: str, retry_after: Optional[int] = None) -> bytes:
    body = error_body(status, message, code)
    reason = {400: "Bad Request", 408: "Request Timeout", 431: "Request Header Fields Too Large",
              501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable"}.get(status, "Error")
    extra = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"X-Content-Type-Options: nosniff\r\n{extra}Connection: close\r\n\r\n").encode() + body


async def read_head(reader: asyncio.StreamReader, timeout: float, status: int) -> Optional[Head]:
    """One message head, or None at a clean end of stream before it. `status`: what a malformed
    head is answered with (400 from a client; 502 when the upstream sent it)."""
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise BadMessage(status, "the message head ended early") from None
    except asyncio.LimitOverrunError:
        raise BadMessage(431 if status == 400 else 502, f"the message head is over {MAX_HEAD_BYTES} bytes") from None
    lines = raw[:-4].split(b"\r\n")
    head = Head(lines[0])
    if len(lines) - 1 > MAX_HEADERS:
        raise BadMessage(431 if status == 400 else 502, f"more than {MAX_HEADERS} header fields")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.match(name) or line[:1] in (b" ", b"\t"):
            raise BadMessage(status, "a malformed header field")
        head.headers.append((name, value.strip(b" \t")))
    return head


def body_framing(head: Head, status: int) -> tuple[str, int]:
    """("none" | "length" | "chunked", length): how a message's body is delimited, strictly."""
    te = head.get(b"transfer-encoding")
    cl = head.get(b"content-length")
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(b",") if c.strip()]
        if cl:
            raise BadMessage(status, "both Transfer-Encoding and Content-Length")
        if codings != [b"chunked"]:
            raise BadMessage(501 if status == 400 else 502, "a Transfer-Encoding other than chunked")
        return "chunked", 0
    if cl:
        values = {v.strip() for v in cl}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise BadMessage(status, "an invalid Content-Length")
        return "length", int(next(iter(values)))
    return "none", 0


def forwarded_head(head: Head, first: bytes, extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    named = {t.strip().lower() for v in head.get(b"connection") for t in v.split(b",")}
    out = [first]
    for name, value in head.headers:
        low = name.lower()
        if low in HOP_BY_HOP or low in named:
            continue
        out.append(name + b": " + value)
    out += [name + b": " + value for name, value in extra]
    return b"\r\n".join(out) + b"\r\n\r\n"


async def relay_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framing: str, length: int,
                     timeout: Optional[float]) -> None:
    """Copies one body in its own framing; `timeout` bounds each read (None: none, for answers)."""
    async def read(call):
        return await (call if timeout is None else asyncio.wait_for(call, timeout))
    if framing == "length":
        left = length
        while left:
            data = await read(reader.read(min(left, CHUNK)))
            if not data:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(data)
            writer.write(data)
            await writer.drain()
    elif framing == "chunked":
        while True:
            line = await read(reader.readuntil(b"\r\n"))
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadMessage(400, "a malformed chunk size") from None
            if size == 0:
                trailer = line
                while True:                          # trailer fields, then the empty line
                    part = await read(reader.readuntil(b"\r\n"))
                    trailer += part
                    if part == b"\r\n":
                        break
                writer.write(trailer)
                await writer.drain()
                return
            data = await read(reader.readexactly(size + 2))
            if data[-2:] != b"\r\n":
                raise BadMessage(400, "a chunk without its CRLF")
            writer.write(line + data)       # one write per chunk: an SSE event leaves as it came
            await writer.drain()
    elif framing == "close":
        while data := await read(reader.read(CHUNK)):
            writer.write(data)
            await writer.drain()


class ReplicaList:
    """Healthy replicas as SMG reports them (its /workers route, with the admin key), briefly cached."""

    def __init__(self, smg: tuple[str, int], admin_key: str):
        self.smg, self.admin_key = smg, admin_key
        self._urls: list[tuple[str, int]] = []
        self._at = 0.0
        self._turn = itertools.count()

    async def fetch(self) -> list[tuple[str, int]]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*self.smg), 5)
        try:
            writer.write(f"GET /workers HTTP/1.1\r\nHost: {self.smg[0]}\r\nAuthorization: Bearer {self.admin_key}\r\n"
                         f"Connection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
            status_line = head.split(b"\r\n", 1)[0][:60]
            raise OSError(f"SMG's /workers answered {status_line!r}")
        if b"transfer-encoding: chunked" in head.lower():
            body = _dechunk(body)
        data = json.loads(body)
        workers = data.get("workers", data) if isinstance(data, dict) else data
        out = []
        for w in workers if isinstance(workers, list) else ():
            if not isinstance(w, dict) or not w.get("is_healthy", False):
                continue
            url = urlsplit(str(w.get("url", "")))
            if url.scheme == "http" and url.hostname:
                out.append((url.hostname, url.port or 80))
        return out

    async def candidates(self) -> list[tuple[str, int]]:
        """Every healthy replica, starting with the next in turn."""
        now = time.monotonic()
        if now - self._at > WORKERS_TTL_S:
            try:
                self._urls = await self.fetch()
            except (OSError, ValueError, asyncio.TimeoutError) as e:
                log.warning("cannot read SMG's replica list: %s", e)
                self._urls = []
            self._at = now
        urls = list(self._urls)
        if not urls:
            return []
        start = next(self._turn) % len(urls)
        return urls[start:] + urls[:start]


def _dechunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";", 1)[0], 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


class Front:
    """See the module docstring. `replicas()` gives the replicas to try for REPLICA_PATHS, in order."""

    def __init__(self, smg: tuple[str, int], replicas: Callable[[], Awaitable[list[tuple[str, int]]]]):
        self.smg, self.replicas = smg, replicas
        self.server: Optional[asyncio.AbstractServer] = None
        self.counts = {"smg": 0, "replica": 0, "refused": 0}

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self.client, host, port, limit=MAX_HEAD_BYTES, reuse_address=True)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self.one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except BadMessage as e:             # mid-answer: nothing more can be said to the client
            log.warning("front: %s; connection closed", e.message)
        except Exception:
            log.exception("front: unexpected error")
        finally:
            writer.close()

    async def one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Relays one request and its answer; False when the client connection is to be closed."""
        try:
            head = await read_head(reader, IDLE_TIMEOUT_S, 400)
            if head is None:
                return False
            parts = head.first.split(b" ")
            if len(parts) != 3 or not _TOKEN.match(parts[0]) or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
                raise BadMessage(400, "a malformed request line")
            method, target, version = parts
            if head.get(b"upgrade") or method == b"CONNECT":
                raise BadMessage(501, "protocol upgrades and CONNECT are not served here")
            framing, length = body_framing(head, 400)
        except BadMessage as e:
            self.counts["refused"] += 1
            writer.write(error_response(e.status, e.message, "bad_request" if e.status == 400 else "unsupported"))
            await writer.drain()
            return False
        connection = {t.strip().lower() for v in head.get(b"connection") for t in v.split(b",")}
        keep_alive = b"close" not in connection and (version == b"HTTP/1.1" or b"keep-alive" in connection)
        if any(v.strip().lower() == b"100-continue" for v in head.get(b"expect")) and framing != "none":
            # The body is relayed as it comes: ask for it now (the upstream never sees Expect).
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        to_replica = bool(REPLICA_PATHS.match(target.decode("latin-1")))
        upstream = await self.connect_upstream(to_replica)
        if upstream is None:
            self.counts["refused"] += 1
            what = "no replica is healthy" if to_replica else "the router is not answering"
            writer.write(error_response(503, f"Service unavailable: {what}; retry shortly.", "router_unavailable", 2))
            await writer.drain()
            return False
        self.counts["replica" if to_replica else "smg"] += 1
        up_reader, up_writer = upstream
        try:
            return await self.exchange(head, method, framing, length, keep_alive, reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def connect_upstream(self, to_replica: bool):
        targets = await self.replicas() if to_replica else [self.smg]
        for host, port in targets:
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEAD_BYTES), 10)
            except (OSError, asyncio.TimeoutError) as e:
                log.warning("front: cannot connect to %s:%s: %s", host, port, e)
        return None

    async def exchange(self, head: Head, method: bytes, framing: str, length: int, keep_alive: bool,
                       reader, writer, up_reader, up_writer) -> bool:
        parts = head.first.split(b" ")
        up_writer.write(forwarded_head(head, b" ".join([parts[0], parts[1], b"HTTP/1.1"]),
                                       [(b"Connection", b"close")]))
        body_ok = True
        try:
            await up_writer.drain()
            await relay_body(reader, up_writer, framing, length, HEAD_TIMEOUT_S)
        except (ConnectionError, OSError):
            body_ok = False         # the upstream stopped reading (it may have answered early)
        except BadMessage as e:
            writer.write(error_response(e.status, e.message, "bad_request"))
            await writer.drain()
            return False
        # The answer: interim 1xx heads are passed on, then the final one and its body. Meanwhile
        # a client that hangs up ends the exchange: closing the upstream connection is the
        # disconnect SMG and the frontend cancel the generation on.
        watch = ClientWatch(reader) if body_ok else None
        try:
            while True:
                response = await watch_while(watch, read_head(up_reader, None, 502))
                if response is _GONE:
                    return False
                m = None if response is None else _STATUS_LINE.match(response.first)
                if m is None:
                    what = "the upstream closed without an answer" if response is None else "a malformed status line"
                    writer.write(error_response(502, f"Bad gateway: {what}.", "bad_gateway"))
                    await writer.drain()
                    return False
                status = int(m.group(1))
                if status >= 200:
                    break
                if status != 101:
                    writer.write(forwarded_head(response, response.first))
                    await writer.drain()
            if method == b"HEAD" or status in (204, 304):
                up_framing, up_length = "none", 0
            else:
                up_framing, up_length = body_framing(response, 502)
                if up_framing == "none":
                    up_framing = "close"                           # delimited by the upstream's close
            keep_alive = keep_alive and body_ok and up_framing != "close"
            first = b"HTTP/1.1 " + response.first.split(b" ", 1)[1]
            writer.write(forwarded_head(response, first, [] if keep_alive else [(b"Connection", b"close")]))
            await writer.drain()
            done = await watch_while(watch, relay_body(up_reader, writer, up_framing, up_length, None))
            return keep_alive and done is not _GONE and not (watch is not None and watch.pipelined)
        except BadMessage as e:
            if not writer.is_closing():
                writer.write(error_response(502, f"Bad gateway: {e.message}.", "bad_gateway"))
                await writer.drain()
            return False
        finally:
            if watch is not None:
                await watch.stop()


_GONE = object()


class ClientWatch:
    """Watches a client connection while its answer is relayed: end of stream means the client
    hung up. Bytes instead mean a pipelined request, which the front does not serve: the
    connection closes after this answer (the client sends it again on a new one)."""

    def __init__(self, reader: asyncio.StreamReader):
        self.task = asyncio.ensure_future(reader.read(1))
        self.pipelined = False

    def gone(self) -> bool:
        if not self.task.done() or self.task.cancelled():
            return False
        try:
            data = self.task.result()
        except (ConnectionError, OSError):
            return True
        if data:
            self.pipelined = True
            return False
        return True

    async def stop(self) -> None:
        if not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def watch_while(watch: Optional[ClientWatch], work):
    """`work`'s result, or _GONE (work cancelled) as soon as the client hangs up."""
    task = asyncio.ensure_future(work)
    if watch is None:
        return await task
    while True:
        waiting = {task} if watch.pipelined or watch.task.done() else {task, watch.task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        if watch.gone():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return _GONE


async def serve(host: str, port: int, smg: tuple[str, int], admin_key: str,
                started: Optional[Callable[[], None]] = None) -> None:
    """Runs the front until cancelled."""
    front = Front(smg, ReplicaList(smg, admin_key).candidates)
    await front.start(host, port)
    if started is not None:
        started()
    async with front.server:
        await front.server.serve_forever()
