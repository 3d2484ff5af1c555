"""OpenAI semantics over the decoder: prompt building, limits, field mapping, admission, the chat
answer and stream.

`/v1/completions` is legacy_completions.py on this service; one choice's chat output (reasoning,
content, tool calls) is chat_output.py. HTTP concerns (auth, body limits, SSE writing) stay in
frontend/http/; Triton concerns in frontend/decoder/.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Optional, Union

import numpy as np

from frontend import errors
from frontend.decoder import DecoderBusy, DecoderClient, DecoderFailure, http_error
from frontend.openai.chat_output import ChatOutput
from frontend.openai.chat_prompt import render_prompt, template_renders_tools
from frontend.openai.generation import ChoiceEvent, Generation
from frontend.openai.literal_text import encode_prompt
from frontend.openai.parsers import REASONING_PARSERS, ReasoningParser, reasoning_parser_for
from frontend.openai.reasoning import THINK_END, close_reasoning, prompt_opens_reasoning, thinking_disabled
from frontend.openai.request_models import ChatCompletionRequest, CompletionRequest
from frontend.openai.sse import DECODER_ANSWERED, ChatChunkEncoder, EventStream, usage_dict
from frontend.openai.structured import StructuredOutputs, response_format_guide
from frontend.openai.tools import ToolPlan, check_combination
from frontend.settings import Settings
from frontend.telemetry import current_request, tracing, ttft_stamps
from frontend.tenancy import OPEN, FairShareGate, OverShare, cache_salt
from llama_triton.text.tokenization import Tokenizer
from llama_triton.trtllm.request_encoding import DecodeSettings, UnsupportedField, decoder_arrays
from llama_triton.trtllm.tensor_contract import TENANT_RANK

RANK_MAX = 2 ** 31 - 1          # the tenant_rank tensor is int32

log = logging.getLogger("frontend.service")


def _model_context(model_dir: str) -> int:
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        return int(config.get("max_position_embeddings") or 4096)
    except (OSError, ValueError):
        return 4096


def reports_usage(req: Union[ChatCompletionRequest, CompletionRequest]) -> bool:
    """Whether the reply carries usage: always without streaming; a stream unless its
    stream_options turn the usage chunk off (and ask for no per-chunk usage either)."""
    opts = req.stream_options
    return not req.stream or opts is None or opts.include_usage or opts.continuous_usage_stats


@dataclass
class Prepared:
    request_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    arrays: dict


class CompletionService:
    def __init__(self, settings: Settings, tokenizer: Tokenizer, decoder: DecoderClient,
                 gate: Optional[FairShareGate] = None):
        self.settings = settings
        self.tokenizer = tokenizer
        self.decoder = decoder
        # The 429 gate: the decoder's places shared fairly between API keys (frontend/tenancy/fair_share.py)
        self.gate = gate or FairShareGate(wait_s=settings.fair_share_wait)
        self.created = int(time.time())
        self.model_context = _model_context(settings.model_dir)
        self.structured = StructuredOutputs(tokenizer.hf, tokenizer.vocab_size)
        self.renders_tools = template_renders_tools(tokenizer.chat_template)
        # The reasoning-parser family (frontend/openai/parsers/), None for a model without reasoning
        self.reasoning_parser = reasoning_parser_for(tokenizer.chat_template, tokenizer.hf.get_vocab())
        # No token stands for more bytes than this, so a text longer than context x this many
        # characters cannot fit the context, whatever it tokenizes to (see check_text_fits).
        self.max_token_bytes = max(1, max(map(len, tokenizer.token_bytes), default=1))

    # ---- limits -----------------------------------------------------------------------------
    async def context_limit(self) -> int:
        if self.settings.max_context:
            return self.settings.max_context
        caps = await self.decoder.capabilities()
        seq = caps.parameters.get("max_seq_len")
        if seq and seq.isdigit():
            return int(seq)
        return self.model_context

    def cache_salt(self, req: Union[ChatCompletionRequest, CompletionRequest]) -> int:
        """The request's prefix-cache scope: its key's (or key group's), narrowed by prompt_cache_key
        and cache_salt (frontend/tenancy/tenants.py). Without keys every request is the one open tenant."""
        ctx = current_request.get()
        tenant = ctx.tenant if ctx is not None and ctx.tenant is not None else OPEN
        return cache_salt(self.settings.hash_secret, tenant, req.prompt_cache_key, req.cache_salt)

    async def check_text_fits(self, chars: int, param: str) -> None:
        """Refuses, before any templating or tokenizing, a text that no prompt within the context
        can hold: each token stands for at most `max_token_bytes` bytes (each at least one
        character), so more characters than context x that is more tokens than the context. The
        cost of what follows (template, tokenizer) is then bounded by the context, not the body."""
        limit = await self.context_limit()
        most = limit * self.max_token_bytes
        if chars > most:
            raise errors.text_exceeds_context(chars, limit, most, param)

    def check_model(self, name: str) -> None:
        if name != self.settings.served_model_name:
            raise errors.not_found_model(name)

    async def prepare(self, req: Union[ChatCompletionRequest, CompletionRequest], prompt_ids: list[int],
                      prefix: str, *, guide: tuple[Optional[str], Optional[str]] = (None, None),
                      logprobs: bool = False, top_logprobs: int = 0) -> Prepared:
        limit = await self.context_limit()
        if len(prompt_ids) >= limit:
            raise errors.context_length_exceeded(len(prompt_ids), limit,
                                                 "messages" if isinstance(req, ChatCompletionRequest) else "prompt")
        room = limit - len(prompt_ids)
        asked = req.max_new_tokens
        max_new = min(room, self.settings.max_tokens_cap) if asked is None else min(asked, room)
        caps = await self.decoder.capabilities()
        settings = DecodeSettings(
            prompt_ids=prompt_ids, max_new_tokens=max_new, temperature=req.temperature, top_p=req.top_p,
            top_k=req.top_k, min_p=req.min_p, repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty, seed=req.seed,
            n=req.n, end_id=self.tokenizer.eos_id, ignore_eos=req.ignore_eos,
            # Other end-of-turn ids (Llama-3.1's <|eom_id|>, <|end_of_text|>) stop as stop words, unless
            # ignore_eos (as vLLM: only the request's own stop_token_ids then).
            stop_token_ids=sorted(set(req.stop_token_ids or []) | (
                set() if req.ignore_eos else set(self.tokenizer.eos_ids) - {self.tokenizer.eos_id})),
            min_tokens=min(req.min_tokens, max_new), logprobs=logprobs, top_logprobs=top_logprobs,
            logit_bias=req.logit_bias, vocab_size=self.tokenizer.vocab_size,
            guide_type=guide[0], guide=guide[1], report_cached_tokens=reports_usage(req),
            cache_salt=self.cache_salt(req), cache_salt_asked=req.cache_salt is not None, priority=req.priority)
        for i, t in enumerate(req.stop_token_ids or []):
            # Checked here, with the field's place: past the vocabulary the decoder would refuse it
            # without naming the field, and past int32 the tensor could not even be built.
            if t >= self.tokenizer.vocab_size:
                raise errors.bad_request(f"stop_token_ids[{i}] = {t} is outside the vocabulary "
                                         f"(size {self.tokenizer.vocab_size}).", f"stop_token_ids[{i}]")
        if settings.logit_bias:
            bad = [t for t in settings.logit_bias if t >= self.tokenizer.vocab_size]
            if bad:
                raise errors.bad_request(f"logit_bias token id {bad[0]} is outside the vocabulary "
                                         f"(size {self.tokenizer.vocab_size}).", "logit_bias")
        try:
            arrays = decoder_arrays(settings, caps.inputs)
        except UnsupportedField as e:
            raise errors.unsupported(e.field, str(e)) from None
        return Prepared(f"{prefix}-{uuid.uuid4().hex}", prompt_ids, max_new, arrays)

    # ---- decoding ---------------------------------------------------------------------------
    async def events(self, prep: Prepared, gen: Generation) -> AsyncIterator[ChoiceEvent]:
        try:
            async with aclosing(self._events(prep, gen)) as evs:
                async for ev in evs:
                    yield ev
        finally:
            # The request's token counts for the access log and the metrics: the same figures as
            # its `usage` (self.usage), from the one place that counts them, whatever ended it.
            ctx = current_request.get()
            if ctx is not None:
                ctx.prompt_tokens = len(prep.prompt_ids)
                ctx.completion_tokens = gen.completion_tokens

    async def _events(self, prep: Prepared, gen: Generation) -> AsyncIterator[ChoiceEvent]:
        if prep.max_new_tokens == 0:
            for c in gen.choices:
                c.finish_reason = "length"
                yield ChoiceEvent(c.index, finish_reason="length")
            return
        ctx = current_request.get()
        decode = tracing.start_span("decode")             # None unless tracing is on
        queue = tracing.start_span("queue", decode) if decode is not None else None
        if ctx is not None and decode is not None:
            ctx.trace_headers = tracing.grpc_headers(decode)    # Triton's own spans join the trace
        try:
            # aclosing at every hand-off: closing this generator closes the next one down to the
            # decoder's stream, whose stop request has gone out when aclose() returns (without it
            # the inner generators were left to a finaliser task, after the request had ended).
            async with aclosing(gen.events(self._admitted(prep))) as evs:
                async for ev in evs:
                    if queue is not None:
                        queue.end()
                        queue = None
                        decode.add_event("first_token")
                    yield ev
        except DecoderFailure as e:
            raise http_error(e) from None
        finally:
            if queue is not None:
                queue.end()
            if decode is not None:
                decode.set_attribute("gen_ai.usage.output_tokens", gen.completion_tokens)
                decode.end()
        if ctx is not None:     # for the metrics of finished requests (vllm_metrics.py)
            ctx.cached_tokens = gen.cached_tokens
            ctx.finish_reasons = [c.finish_reason for c in gen.choices]

    async def _admitted(self, prep: Prepared):
        """The decoder's stream of `prep`, once the fair-share gate gave it a place (429 otherwise);
        the place is held until the stream is over. A decoder that refuses the admitted request as
        full before answering (its queue moves a step behind the gate's count) sends it back to
        the gate: a key below its share waits for the next completion, one at its share gets 429."""
        ctx = current_request.get()
        key = (ctx.tenant if ctx is not None and ctx.tenant is not None else OPEN).key_id
        caps = await self.decoder.capabilities()
        while True:
            try:
                rank = await self.gate.acquire(key, getattr(self.decoder, "capacity", None))
            except OverShare as e:
                raise errors.queue_full(e.retry_after, str(e)) from None
            arrays = prep.arrays
            if TENANT_RANK in caps.inputs:
                # The decoder's waiting order between keys (llama_triton/engine/scheduler.py)
                arrays = {**arrays, TENANT_RANK: np.asarray([[min(rank, RANK_MAX)]], dtype=np.int32)}
            answered, held = False, True
            try:
                async with aclosing(self.decoder.generate(prep.request_id, arrays)) as stream:
                    async for resp in stream:
                        answered = True
                        yield resp
                return
            except DecoderBusy:
                if answered:
                    raise
                held = False            # refused_by_decoder gives the place back
                if not self.gate.refused_by_decoder(key):
                    raise
            finally:
                if held:
                    self.gate.release(key)

    # ---- chat -------------------------------------------------------------------------------
    async def chat(self, req: ChatCompletionRequest):
        run = await self.start_chat(req)
        if req.stream:
            return EventStream(run.prep.request_id, self._chat_stream(req, run.prep, run.gen, run.outputs))
        return await self._chat_full(req, run.prep, run.gen, run.outputs)

    async def start_chat(self, req: ChatCompletionRequest, prefix: str = "chatcmpl") -> "ChatRun":
        """Everything a chat request needs before its first decoder token: the prompt (template,
        tools, reasoning), the guide, the decoder tensors, and one ChatOutput per choice. The chat
        endpoint and the Responses API (frontend/openai/responses/) both run requests through it."""
        with tracing.span("template"):
            chat = await self.render_chat(req)
        if chat.guide is not None:
            with tracing.span("guide_compile"):
                guide = await self.structured.resolve(chat.guide)
        else:
            guide = await self.structured.resolve(None)
        if ttft_stamps.ENABLED:
            ttft_stamps.stamp("guide_done")
        prep = await self.prepare(req, chat.prompt_ids, prefix, guide=guide, logprobs=bool(req.logprobs),
                                  top_logprobs=req.top_logprobs or 0)
        gen = Generation(self.tokenizer, req.n, req.stop_strings, prep.max_new_tokens,
                         bool(req.logprobs), req.top_logprobs or 0, bool(req.return_tokens_as_token_ids))
        return ChatRun(prep, gen, [ChatOutput(chat.plan, self._reasoning_parser(chat.reasoning)) for _ in gen.choices])

    def _reasoning_parser(self, start: Optional[str]) -> Optional[ReasoningParser]:
        """One choice's reasoning parser, given where the reply starts (RenderedChat.reasoning)."""
        if start is None:
            return None
        return REASONING_PARSERS.lookup(self.reasoning_parser)(inside=start == "inside")

    async def render_chat(self, req: ChatCompletionRequest) -> "RenderedChat":
        """The prompt ids of a chat request (template, tools, reasoning) and what decoding it needs:
        what the decoder is sent, and what POST /tokenize returns for the same messages."""
        self.check_model(req.model)
        plan = ToolPlan.from_request(req, self.renders_tools)
        format_guide = response_format_guide(req.response_format)
        check_combination(req, plan, format_guide is not None)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        kwargs = dict(req.chat_template_kwargs or {})
        effort = req.reasoning_effort or (req.reasoning.effort if req.reasoning else None)
        if effort is not None:
            kwargs.setdefault("reasoning_effort", effort)
        enabled = (req.reasoning.enabled if req.reasoning and req.reasoning.enabled is not None
                   else (effort != "none" if effort is not None else None))
        if enabled is not None:
            kwargs.setdefault("enable_thinking", enabled)
        chars = sum(_message_chars(m) for m in req.messages)
        await self.check_text_fits(chars, "messages")
        if plan.active or chars + sum(len(str(v)) for v in kwargs.values()) > self.settings.inline_prompt_chars:
            # Templating and tokenizing cost time linear in the text: off the event loop, which keeps
            # serving every other request meanwhile (the tokenizer releases the GIL while it works).
            prompt_ids, reasoning = await asyncio.to_thread(self._render_and_encode, messages, plan, kwargs)
        else:
            # Opt-in (--inline-prompt-chars): a short prompt without tools costs under a millisecond
            # here, where the thread's hand-off and return cost tens of ms on a busy loop; measured
            # end to end it did not pay (benchmarks/ttft_segments.py, frontend/settings.py).
            prompt_ids, reasoning = self._render_and_encode(messages, plan, kwargs)
        if ttft_stamps.ENABLED:
            ttft_stamps.stamp("on_loop")
        spec = plan.guide() if plan.active else format_guide
        if spec is not None and reasoning is not None:
            spec = spec.after_reasoning(reasoning)
        return RenderedChat(prompt_ids, plan, reasoning, spec)

    def _render_and_encode(self, messages: list[dict], plan: ToolPlan, kwargs: dict) -> tuple[list[int], Optional[str]]:
        """The prompt's ids, and where a reasoning model's reply starts ("inside", "optional" or
        None). Runs in a worker thread."""
        if ttft_stamps.ENABLED:
            ttft_stamps.stamp("render_start")
        prompt = render_prompt(self.tokenizer, messages, tools=plan.template_tools(), tool_prompt=plan.system_prompt(),
                               template_kwargs=kwargs)
        reasoning = None
        if self.reasoning_parser is not None:
            if prompt_opens_reasoning(prompt) and thinking_disabled(kwargs):
                prompt = close_reasoning(prompt)
            if prompt_opens_reasoning(prompt):
                reasoning = "inside"
            elif not prompt.rstrip().endswith(THINK_END):
                reasoning = "optional"
        if ttft_stamps.ENABLED:
            ttft_stamps.stamp("rendered")
        ids = encode_prompt(self.tokenizer, prompt)   # the request's text is text, see literal_text
        if ttft_stamps.ENABLED:
            ttft_stamps.stamp("encoded")
        return ids, reasoning

    def usage(self, prep: Prepared, gen: Generation) -> dict:
        # Never more than the prompt less its last token, which no decoder serves from its cache (the
        # logits come from it). TensorRT-LLM counts partially matched KV blocks as reused
        # (kv_cache_reused_blocks x tokens_per_block: a repeated 200-token prompt with 32-token blocks
        # gave 224); with partial reuse (its default) an exact repeat reuses all but that last token.
        prompt = len(prep.prompt_ids)
        return usage_dict(prompt, gen.completion_tokens, min(gen.cached_tokens, max(0, prompt - 1)))

    async def _chat_full(self, req: ChatCompletionRequest, prep: Prepared, gen: Generation,
                         outputs: list["ChatOutput"]) -> dict:
        lps: list[Optional[list]] = [[] if req.logprobs else None for _ in gen.choices]
        async with aclosing(self.events(prep, gen)) as evs:
            async for ev in evs:
                out = outputs[ev.index]
                out.collect(out.feed(ev.text))
                if ev.finish_reason is not None:
                    out.collect(out.finish())
                if ev.logprobs is not None and lps[ev.index] is not None:
                    lps[ev.index].extend(ev.logprobs)
        choices = []
        for c in gen.choices:
            out = outputs[c.index]
            choices.append({"index": c.index, "message": out.message(),
                            "logprobs": {"content": lps[c.index]} if lps[c.index] is not None else None,
                            "finish_reason": out.finish_reason(c.finish_reason)})
        return {"id": prep.request_id, "object": "chat.completion", "created": int(time.time()),
                "model": self.settings.served_model_name, "choices": choices, "usage": self.usage(prep, gen)}

    async def _chat_stream(self, req: ChatCompletionRequest, prep: Prepared, gen: Generation,
                           outputs: list["ChatOutput"]) -> AsyncIterator[bytes]:
        enc = ChatChunkEncoder(prep.request_id, self.settings.served_model_name, int(time.time()))
        explicit = req.stream_options is not None
        include_usage = req.stream_options.include_usage if explicit else True
        continuous = bool(explicit and req.stream_options.continuous_usage_stats)

        def running_usage() -> Optional[dict]:
            return self.usage(prep, gen) if continuous else None

        for c in gen.choices:
            yield enc.delta({"role": "assistant", "content": ""}, c.index, usage=running_usage())
        remaining = len(gen.choices)
        answered = False
        async with aclosing(self.events(prep, gen)) as evs:
            async for ev in evs:
                if not answered:
                    answered = True
                    yield DECODER_ANSWERED
                out = outputs[ev.index]
                lp = {"content": ev.logprobs} if ev.logprobs is not None else None
                if out.plain:
                    # The per-token hot path: one pre-rendered template and one orjson call.
                    if ev.text or ev.logprobs:
                        yield enc.content(ev.text, ev.index, lp, usage=running_usage())
                else:
                    items = out.feed(ev.text)
                    if ev.finish_reason is not None:
                        items += out.finish()
                    deltas = out.deltas(items)
                    if not deltas and ev.logprobs:
                        deltas = [{}]
                    for i, delta in enumerate(deltas):
                        yield enc.delta(delta, ev.index, lp if i == 0 else None, usage=running_usage())
                if ev.finish_reason is not None:
                    remaining -= 1
                    last = remaining == 0
                    yield enc.finish(out.finish_reason(ev.finish_reason), ev.index,
                                     self.usage(prep, gen) if (last and include_usage) or continuous else None)
        if explicit and include_usage:
            yield enc.usage(self.usage(prep, gen))
        yield b"data: [DONE]\n\n"


@dataclass
class RenderedChat:
    prompt_ids: list[int]
    plan: ToolPlan
    reasoning: Optional[str]        # where a reasoning model's reply starts: "inside", "optional" or None
    guide: Optional[object]         # the GuideSpec for tools / response_format, or None


@dataclass
class ChatRun:
    """A chat request ready to decode: iterate `CompletionService.events(prep, gen)` and feed each
    event's text to `outputs[event.index]`."""
    prep: Prepared
    gen: Generation
    outputs: list["ChatOutput"]


def _message_chars(message) -> int:
    """Characters of a message's text and of its tool calls' arguments: part of the prompt."""
    chars = len(message.text())
    for call in getattr(message, "tool_calls", None) or ():
        chars += len(call.function.arguments)
    return chars
