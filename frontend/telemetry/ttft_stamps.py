"""The frontend's time points of a request's time to first token (benchmark switch, off by default).

llama_triton/ttft_stamps.py has the switch (LLAMA_TRITON_TTFT_STAMPS) and the clock. With it on,
a request's RequestContext carries a dict of named time points, and its finish writes them as one
line, with the Triton request id the decoder's own line is joined on (benchmarks/ttft_segments.py):

  first_byte   the connection's first bytes of this request reached aiohttp's protocol
               (data_received; a subclass of aiohttp's RequestHandler, only while on)
  handler      the middlewares' first line (headers parsed, request object made)
  body_read    the whole body read
  validated    the body parsed into the request model
  render_start / rendered / encoded   the chat template and tokenizer, in their worker thread
  on_loop      back on the event loop with the prompt ids
  guide_done   the guide (tools / response_format) resolved
  grpc_start   the decoder stream opened (limits, tensors and the 429 gate behind it)
  grpc_first   the decoder's first response read from the stream
  first_write  the first content event handed to the socket

Every call site tests `ENABLED` first, so with the switch off nothing here runs.
"""
from __future__ import annotations

from typing import Optional

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

from llama_triton.ttft_stamps import ENABLED, StampLog, now

__all__ = ["ENABLED", "stamp", "first_byte", "body_read", "write_record", "app_runner", "STAMP_LOG"]

STAMP_LOG = web.AppKey("ttft_stamp_log", StampLog)


def _ctx():
    from frontend.telemetry.logging_setup import current_request
    return current_request.get()


def stamp(name: str) -> None:
    """The current request's time point `name` (the first one of that name counts)."""
    ctx = _ctx()
    if ctx is not None and ctx.stamps is not None:
        ctx.stamps.setdefault(name, now())


def first_byte(request: web.Request) -> Optional[int]:
    return getattr(request.protocol, "ttft_first_byte", None)


def body_read(request: web.Request) -> None:
    """The body is in: later bytes on this connection belong to its next request."""
    stamp("body_read")
    proto = request.protocol
    if isinstance(proto, _StampingHandler):     # (a test server's runner is aiohttp's own)
        proto.ttft_first_byte = None


def write_record(log: StampLog, ctx) -> None:
    if ctx.stamps is None or ctx.triton_request_id is None:
        return
    # crid: the client's X-Request-Id (aiperf sends one per request), to join the client's own times
    log.write({"rid": ctx.triton_request_id, "crid": ctx.client_request_id, "status": ctx.status,
               "outcome": ctx.outcome, **ctx.stamps})


class _StampingHandler(RequestHandler):
    """aiohttp's protocol, noting when the first bytes of a request arrive (before parsing)."""

    ttft_first_byte: Optional[int] = None

    def data_received(self, data: bytes) -> None:
        if self.ttft_first_byte is None:
            self.ttft_first_byte = now()
        super().data_received(data)


class _StampingServer(Server):
    def __call__(self) -> RequestHandler:
        return _StampingHandler(self, loop=self._loop, **self._kwargs)


class _StampingRunner(web.AppRunner):
    async def _make_server(self) -> Server:
        server = await super()._make_server()
        server.__class__ = _StampingServer    # the same server; only its protocol factory differs
        return server


def app_runner(app: web.Application, **kwargs) -> web.AppRunner:
    """The app's runner: aiohttp's own, or with the switch on one whose connections stamp."""
    return _StampingRunner(app, **kwargs) if ENABLED else web.AppRunner(app, **kwargs)
