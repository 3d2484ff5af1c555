"""Operator endpoints in vLLM's shapes: POST /tokenize, POST /detokenize, GET /version.

/tokenize counts exactly as the server does: `messages` go through the chat request's own
rendering (`CompletionService.render_chat`: template, tools, reasoning, request text kept as
text), `prompt` through the legacy completions encoding (special tokens added). Both take the
chat path's Bearer auth and body cap (middleware.py and routes.py's `read_body`).
"""
from __future__ import annotations

import asyncio
from importlib import metadata
from typing import Optional

import orjson
from aiohttp import web

from frontend import errors
from frontend.http.app_keys import SERVICE, SETTINGS
from frontend.http.operator_models import (DetokenizeRequest, DetokenizeResponse, TokenizeChatRequest,
                                           TokenizePromptRequest, TokenizeResponse, VersionResponse)
from frontend.http.routes import json_response, read_body
from frontend.openai import parse_request


def _version() -> str:
    try:
        return metadata.version("llama-triton")
    except metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


async def _context(service) -> Optional[int]:
    try:
        return await service.context_limit()
    except Exception:           # decoder down: the count is still right, the limit unknown
        return None


async def tokenize(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    body = await read_body(request, request.app[SETTINGS].max_body_bytes)
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = None
    if isinstance(raw, dict) and "messages" in raw:
        req = parse_request(TokenizeChatRequest, raw)
        strs = req.return_token_strs
        ids = (await service.render_chat(req)).prompt_ids
    else:
        preq = parse_request(TokenizePromptRequest, body)
        service.check_model(preq.model)
        strs = preq.return_token_strs
        # As a completions prompt: refused on its length before tokenizing, which runs off the loop.
        await service.check_text_fits(len(preq.prompt), "prompt")
        ids = await asyncio.to_thread(service.tokenizer.encode, preq.prompt,
                                      add_special_tokens=preq.add_special_tokens)
    token_strs = None
    if strs:
        table = service.tokenizer.token_bytes
        token_strs = [table[t].decode("utf-8", "replace") for t in ids]
    return json_response(TokenizeResponse(count=len(ids), max_model_len=await _context(service), tokens=ids,
                                          token_strs=token_strs).model_dump())


async def detokenize(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    req = parse_request(DetokenizeRequest, await read_body(request, request.app[SETTINGS].max_body_bytes))
    service.check_model(req.model)
    for i, t in enumerate(req.tokens):
        if t >= service.tokenizer.vocab_size:
            raise errors.bad_request(f"token id {t} is outside the vocabulary (size {service.tokenizer.vocab_size}).",
                                     f"tokens[{i}]")
    from llama_triton.text.detokenize import decode
    return json_response(DetokenizeResponse(prompt=decode(service.tokenizer, list(req.tokens))).model_dump())


async def version(request: web.Request) -> web.Response:
    return json_response(VersionResponse(version=VERSION).model_dump())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/detokenize", detokenize)
    app.router.add_get("/version", version)
