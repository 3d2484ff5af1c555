"""`POST /v1/completions` on the chat service's machinery: prompt text or token ids, echo, the
legacy integer logprobs with their text offsets."""
from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Optional

from frontend import errors
from frontend.openai.generation import Generation
from frontend.openai.request_models import CompletionRequest
from frontend.openai.service import CompletionService, Prepared
from frontend.openai.sse import DECODER_ANSWERED, CompletionChunkEncoder, EventStream, completion_logprobs


class LegacyCompletions:
    """`POST /v1/completions` on the same machinery: prompt text or ids, echo, integer logprobs."""

    def __init__(self, service: CompletionService):
        self.s = service

    async def complete(self, req: CompletionRequest):
        s = self.s
        s.check_model(req.model)
        if isinstance(req.prompt, str):
            prompt_text = req.prompt
            await s.check_text_fits(len(prompt_text), "prompt")
            # Raw: the caller writes the template, so `</s>` here is the token (README, Security).
            # Off the loop unless short and --inline-prompt-chars allows it (see render_chat).
            if len(prompt_text) > s.settings.inline_prompt_chars:
                prompt_ids = await asyncio.to_thread(s.tokenizer.encode, req.prompt, add_special_tokens=True)
            else:
                prompt_ids = s.tokenizer.encode(req.prompt, add_special_tokens=True)
        else:
            prompt_ids = list(req.prompt)
            limit = await s.context_limit()
            if len(prompt_ids) >= limit:
                raise errors.context_length_exceeded(len(prompt_ids), limit, "prompt")
            bad = [t for t in prompt_ids if t >= s.tokenizer.vocab_size]
            if bad:
                raise errors.bad_request(f"prompt token id {bad[0]} is outside the vocabulary.", "prompt")
            from llama_triton.text.detokenize import decode
            prompt_text = decode(s.tokenizer, prompt_ids)
        top = req.logprobs or 0
        prep = await s.prepare(req, prompt_ids, "cmpl", logprobs=req.logprobs is not None, top_logprobs=top)
        gen = Generation(s.tokenizer, req.n, req.stop_strings, prep.max_new_tokens, req.logprobs is not None, top,
                         bool(req.return_tokens_as_token_ids))
        echo = prompt_text if req.echo else ""
        if req.stream:
            return EventStream(prep.request_id, self._stream(req, prep, gen, echo))
        texts = [[echo] for _ in gen.choices]
        lps: list[list] = [[] for _ in gen.choices]
        async with aclosing(s.events(prep, gen)) as evs:
            async for ev in evs:
                texts[ev.index].append(ev.text)
                if ev.logprobs:
                    lps[ev.index].extend(ev.logprobs)
        choices = [{"index": c.index, "text": "".join(texts[c.index]),
                    "logprobs": _legacy_logprobs(lps[c.index], len(echo))[0] if req.logprobs is not None else None,
                    "finish_reason": c.finish_reason} for c in gen.choices]
        return {"id": prep.request_id, "object": "text_completion", "created": int(time.time()),
                "model": s.settings.served_model_name, "choices": choices, "usage": s.usage(prep, gen)}

    async def _stream(self, req: CompletionRequest, prep: Prepared, gen: Generation, echo: str):
        s = self.s
        enc = CompletionChunkEncoder(prep.request_id, s.settings.served_model_name, int(time.time()))
        explicit = req.stream_options is not None
        include_usage = req.stream_options.include_usage if explicit else True
        if echo:
            for c in gen.choices:
                yield enc.text(echo, c.index)
        remaining = len(gen.choices)
        answered = False
        # Each choice's text_offset runs on across chunks from the end of the echoed prompt: the
        # same figures as the non-streamed response.
        offsets = [len(echo)] * len(gen.choices)
        async with aclosing(s.events(prep, gen)) as evs:
            async for ev in evs:
                if not answered:
                    answered = True
                    yield DECODER_ANSWERED
                if ev.text or ev.logprobs:
                    lp = None
                    if req.logprobs is not None:
                        lp, offsets[ev.index] = _legacy_logprobs(ev.logprobs, offsets[ev.index])
                    yield enc.text(ev.text, ev.index, lp)
                if ev.finish_reason is not None:
                    remaining -= 1
                    yield enc.finish(ev.finish_reason, ev.index,
                                     s.usage(prep, gen) if remaining == 0 and include_usage else None)
        if explicit and include_usage:
            yield enc.usage(s.usage(prep, gen))
        yield b"data: [DONE]\n\n"


def _legacy_logprobs(entries: Optional[list[dict]], start: int) -> tuple[dict, int]:
    """The legacy logprobs object of these tokens, the first at character `start` of the choice's
    text, and the offset after the last. Offsets count the tokens' own text (also when `token`
    says "token_id:N"), so streamed chunks and the whole response agree."""
    entries = entries or []
    offsets, pos = [], start
    for e in entries:
        offsets.append(pos)
        pos += len(bytes(e["bytes"]).decode("utf-8", "replace"))
    return completion_logprobs([e["token"] for e in entries], [e["logprob"] for e in entries],
                               [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                               offsets), pos
