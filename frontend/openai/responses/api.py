"""The Responses API's semantics, apart from HTTP: create (stream or not), retrieve, list input
items, delete, cancel. Generation is the chat service's (`CompletionService.start_chat`,
`events`); this module only builds the conversation, shapes the output and keeps the store."""
from __future__ import annotations

import logging
import time
from typing import AsyncIterator, Optional

from frontend import errors
from frontend.decoder import DecoderFailure, http_error
from frontend.openai.responses.chat_mapping import chat_request, stored_items, translate
from frontend.openai.responses.output import EventEncoder, OutputAssembler, new_id, response_object, usage
from frontend.openai.responses.request import ResponsesRequest, declared
from frontend.openai.responses.store import ResponseStore, StoredResponse, StoreUnavailable
from frontend.openai.sse import DECODER_ANSWERED, EventStream

log = logging.getLogger("frontend.responses")

MAX_INPUT_ITEMS_PAGE = 100


def not_found(id: str, param: Optional[str] = None) -> errors.APIError:
    # Also what another key's response gets: whether an id exists is not revealed.
    return errors.APIError(404, f"No response with id '{id}' found.", errors.NOT_FOUND, param, "response_not_found")


def store_error(e: StoreUnavailable) -> errors.APIError:
    return errors.APIError(503, f"Stored responses are not available right now: {e}", errors.SERVER, None,
                           "store_unavailable", {"Retry-After": "2"})


def _input_items_for_store(req: ResponsesRequest) -> list[dict]:
    """This turn's input items as OpenAI lists them: each with an id and a status, message text as
    content parts."""
    out = []
    for item in req.input_items:
        d = declared(item)
        if d.get("type", "message") == "message":
            d["type"] = "message"
            if isinstance(d.get("content"), str):
                part = "output_text" if d["role"] == "assistant" else "input_text"
                d["content"] = [{"type": part, "text": d["content"]}]
            d.setdefault("id", new_id("msg"))
        elif d["type"] == "function_call_output":
            d.setdefault("id", new_id("fco"))
        elif d["type"] == "function_call":
            d.setdefault("id", new_id("fc"))
        elif d["type"] == "reasoning":
            d.setdefault("id", new_id("rs"))
        d.setdefault("status", "completed")
        out.append(d)
    return out


class ResponsesAPI:
    def __init__(self, service, store: ResponseStore):
        self.service = service          # CompletionService
        self.store = store

    @property
    def model(self) -> str:
        return self.service.settings.served_model_name

    async def _stored(self, call):
        try:
            return await call
        except StoreUnavailable as e:
            raise store_error(e) from None

    # ---- create -----------------------------------------------------------------------------
    async def create(self, req: ResponsesRequest, owner: str):
        """The Response (dict) or, with stream, an EventStream of typed SSE events."""
        self.service.check_model(req.model)
        history: list = []
        if req.previous_response_id is not None:
            chain = await self._stored(self.store.chain(req.previous_response_id, owner))
            if not chain or chain[-1].id != req.previous_response_id:
                raise not_found(req.previous_response_id, "previous_response_id")
            for turn in chain:
                history += stored_items(turn.input_items) + stored_items(turn.response.get("output", []))
        input_items = _input_items_for_store(req) if req.store else []
        try:
            run = await self.service.start_chat(chat_request(req, history), prefix="resp")
        except errors.APIError as e:
            raise translate(e) from None
        turn = _Turn(self, req, owner, run, input_items)
        if req.stream:
            return EventStream(turn.id, turn.stream(), error_event=turn.error_event)
        return await turn.complete()

    # ---- stored responses -------------------------------------------------------------------
    async def retrieve(self, id: str, owner: str) -> dict:
        record = await self._stored(self.store.get(id, owner))
        if record is None:
            raise not_found(id)
        return record.response

    async def input_items(self, id: str, owner: str, *, after: Optional[str], limit: int, order: str) -> dict:
        record = await self._stored(self.store.get(id, owner))
        if record is None:
            raise not_found(id)
        items = list(record.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [i.get("id") for i in items]
            if after not in ids:
                raise errors.bad_request(f"'after' names no input item of response '{id}'.", "after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    async def delete(self, id: str, owner: str) -> dict:
        if not await self._stored(self.store.delete(id, owner)):
            raise not_found(id)
        return {"id": id, "object": "response.deleted", "deleted": True}

    async def cancel(self, id: str, owner: str) -> dict:
        if await self._stored(self.store.get(id, owner)) is None:
            raise not_found(id)
        raise errors.bad_request("Only responses created with background=true can be cancelled; this server has "
                                 "no background mode (a running request is cancelled by closing its connection).",
                                 None, "not_cancellable")


class _Turn:
    """One POST /v1/responses being generated."""

    def __init__(self, api: ResponsesAPI, req: ResponsesRequest, owner: str, run, input_items: list[dict]):
        self.api, self.req, self.owner, self.run = api, req, owner, run
        self.input_items = input_items
        self.id = run.prep.request_id        # also the Triton request id: server-made and unique
        self.created_at = int(time.time())
        self.out = run.outputs[0]
        self.assembler = OutputAssembler()

    def _object(self, status: str, *, output=None, usage_=None, error=None, incomplete=None, store=None) -> dict:
        return response_object(self.req, id=self.id, model=self.api.model, created_at=self.created_at,
                               status=status, output=[] if output is None else output, usage=usage_, error=error,
                               incomplete_reason=incomplete, store=store)

    async def _events(self) -> AsyncIterator[list[dict]]:
        """Stream events per decoder event; the chat output's items drive the assembler."""
        service = self.api.service
        try:
            async for ev in service.events(self.run.prep, self.run.gen):
                items = self.out.feed(ev.text)
                if ev.finish_reason is not None:
                    items += self.out.finish()
                yield self.assembler.add(items)
        except DecoderFailure as e:
            raise http_error(e) from None

    async def _final(self) -> tuple[dict, list[dict]]:
        """Closes the output, stores the response and returns it with the closing events."""
        choice = self.run.gen.choices[0]
        incomplete = "max_output_tokens" if choice.finish_reason == "length" else None
        status = "incomplete" if incomplete else "completed"
        events = self.assembler.finish("incomplete" if incomplete else "completed")
        gen, prep = self.run.gen, self.run.prep
        reasoning_text = self.assembler.reasoning_text
        reasoning_tokens = len(self.api.service.tokenizer.encode(reasoning_text)) if reasoning_text else 0
        response = self._object(status, output=self.assembler.items,
                                usage_=usage(len(prep.prompt_ids), gen.completion_tokens, gen.cached_tokens,
                                             min(reasoning_tokens, gen.completion_tokens)),
                                incomplete=incomplete)
        if self.req.store:
            record = StoredResponse(self.id, self.owner, time.time(), self.req.previous_response_id, response,
                                    self.input_items)
            try:
                stored = await self.api.store.put(record)
            except StoreUnavailable as e:
                log.error("response %s not stored: %s", self.id, e)
                stored = False
            if not stored:
                response["store"] = False
        return response, events

    async def complete(self) -> dict:
        async for _ in self._events():
            pass
        response, _ = await self._final()
        return response

    async def stream(self) -> AsyncIterator:
        enc = EventEncoder()
        yield enc.encode({"type": "response.created", "response": self._object("in_progress")})
        yield enc.encode({"type": "response.in_progress", "response": self._object("in_progress")})
        self.encoder = enc
        answered = False
        try:
            async for events in self._events():
                if not answered:
                    answered = True
                    yield DECODER_ANSWERED
                for event in events:
                    yield enc.encode(event)
        except errors.APIError as e:
            if not answered:
                raise           # before the first token: a real status code (429, 503, 400)
            for chunk in self._failure(e):
                yield chunk
            return
        response, events = await self._final()
        for event in events:
            yield enc.encode(event)
        kind = "response.completed" if response["status"] == "completed" else "response.incomplete"
        yield enc.encode({"type": kind, "response": response})

    def _failure(self, err: errors.APIError) -> list[bytes]:
        """`error`, then `response.failed`: how a Responses stream ends when generation fails."""
        enc = self.encoder
        error = {"code": err.code or err.type, "message": err.message}
        return [enc.encode({"type": "error", "code": err.code, "message": err.message, "param": err.param}),
                enc.encode({"type": "response.failed", "response": self._object("failed", error=error)})]

    def error_event(self, err: errors.APIError) -> bytes:
        """For the HTTP stream writer (frontend/http/sse_writer.py: timeouts, shutdown): the same two events."""
        if not hasattr(self, "encoder"):
            self.encoder = EventEncoder()
        return b"".join(self._failure(err))
