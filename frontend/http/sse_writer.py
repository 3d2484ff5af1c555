"""Writing a service `EventStream` to the client as server-sent events: the status line held back
until the decoder answered, writes bounded by `--write-timeout` for clients that stop reading, and
the error event plus `data: [DONE]` when a started stream fails, times out or is shut down."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Optional

from aiohttp import web

from frontend import errors
from frontend.http.app_keys import CTX, METRICS, SETTINGS
from frontend.http.middleware import cancelled_error, take_own_cancellation
from frontend.openai import DECODER_ANSWERED, SSE_DONE, EventStream
from frontend.telemetry import RequestContext, ttft_stamps

log = logging.getLogger("frontend")

FAST_WRITE_MAX = 16 * 1024   # an event this small, into an empty buffer, cannot pause the transport
ERROR_EVENT_WRITE_TIMEOUT_S = 1.0


class SlowClient(Exception):
    """A streamed write waited longer than --write-timeout on a client that does not read."""


async def stream_sse(request: web.Request, stream: EventStream) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    ctx: Optional[RequestContext] = request.get(CTX)
    metrics = request.app[METRICS]
    if ctx is not None:
        ctx.request_id = stream.id
    # Hold the status line back until the decoder has answered (the role-only chunks a chat stream
    # starts with come before it): errors found up to then (queue full, decoder down, a refused
    # request) still get their own status code, 429 with Retry-After included.
    iterator = stream.chunks.__aiter__()
    pending: list[bytes] = []
    try:
        while True:
            chunk = await iterator.__anext__()
            if chunk is DECODER_ANSWERED:
                break
            pending.append(chunk)
    except StopAsyncIteration:
        pending.append(SSE_DONE)
    except BaseException:
        # Cancelled (timeout, client gone) or failed before the decoder answered: the decoder
        # request is stopped here, before the error answer leaves.
        await iterator.aclose()
        raise
    first_content = time.perf_counter()
    if ctx is not None:
        ctx.stream = True
        ctx.ttft = first_content - ctx.started
        metrics.ttft.observe(ctx.ttft)
    resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream",
                                                   "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
    except BaseException:
        await iterator.aclose()
        raise
    metrics.active_streams.inc()
    write_timeout = settings.write_timeout
    transport, protocol = request.transport, request.protocol

    async def write(data: bytes) -> None:
        # aiohttp's write() waits in drain() only while the transport has paused writing (its
        # buffer went past the high-water mark, 64 KiB): a client that stops reading holds the
        # handler here, not more memory, and past --write-timeout it is given up on. With nothing
        # buffered, one event cannot reach that mark, so the write cannot wait and needs no timer
        # (arming one per token cost several percent of the frontend's CPU).
        if (transport is not None and len(data) <= FAST_WRITE_MAX and transport.get_write_buffer_size() == 0
                and not protocol.writing_paused):
            await resp.write(data)
            return
        try:
            async with asyncio.timeout(write_timeout):
                await resp.write(data)
        except TimeoutError:
            raise SlowClient() from None

    last = first_content
    try:
        await write(b"".join(pending))
        async for data in iterator:
            now = time.perf_counter()
            metrics.itl.observe(now - last)
            last = now
            await write(data)
            if ttft_stamps.ENABLED:
                ttft_stamps.stamp("first_write")
    except errors.APIError as e:
        if ctx is not None:
            ctx.outcome, ctx.error_code = "error", e.code
        await _write_error(resp, e, stream)
    except asyncio.CancelledError:
        await iterator.aclose()          # cancels the decoder request (stream cancel + stop=true)
        reason = take_own_cancellation(ctx)
        if reason is None:
            raise                        # the client went away
        err = cancelled_error(reason, settings)
        ctx.error_code = err.code
        await _write_error(resp, err, stream)
    except SlowClient:
        await iterator.aclose()
        if ctx is not None:
            ctx.outcome = "slow_client"
        log.warning("client stopped reading for %.0f s; cancelled the request and closed the connection",
                    write_timeout)
        if request.transport is not None:
            request.transport.abort()    # drop what is buffered for it
        return resp
    except ConnectionResetError:
        await iterator.aclose()
        raise
    except Exception:
        log.exception("stream failed")
        if ctx is not None:
            ctx.outcome, ctx.error_code = "error", "internal_error"
        await _write_error(resp, errors.internal(), stream)
    finally:
        metrics.active_streams.dec()
        await iterator.aclose()
    await resp.write_eof()
    return resp


async def _write_error(resp: web.StreamResponse, err: errors.APIError, stream: EventStream) -> None:
    """The error event and `data: [DONE]` (or the stream's own error events), given at most a
    second (the client may not be reading)."""
    data = stream.error_event(err) if stream.error_event is not None else \
        errors.sse_error_event(err) + b"data: [DONE]\n\n"
    try:
        async with asyncio.timeout(ERROR_EVENT_WRITE_TIMEOUT_S):
            await resp.write(data)
    except (TimeoutError, ConnectionError):
        pass
