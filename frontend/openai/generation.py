"""Turns the decoder's token stream into per-choice text events.

Per choice: byte-exact incremental detokenization, text-level stop strings (held back while a
match is possible, never emitted), logprobs in OpenAI's shape, and the finish reason. The same
events feed both the SSE stream and the non-streamed response, so both carry identical text.
"""
from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

from frontend.decoder import DecoderResponse
from frontend.openai.sse import token_logprob
from llama_triton.text.detokenize import IncrementalDetokenizer
from llama_triton.text.stop_strings import StopStringMatcher
from llama_triton.text.tokenization import Tokenizer


@dataclass
class ChoiceEvent:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: Optional[list[dict]] = None
    finish_reason: Optional[str] = None


class ChoiceState:
    def __init__(self, index: int, tokenizer: Tokenizer, stops: list[str], max_new_tokens: int,
                 logprobs: bool, top_logprobs: int, token_ids_as_text: bool = False):
        self.index = index
        self.tokenizer = tokenizer
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopStringMatcher(stops)
        self.max_new_tokens = max_new_tokens
        self.want_logprobs = logprobs
        self.top_logprobs = top_logprobs
        self.token_ids_as_text = token_ids_as_text
        self.num_tokens = 0
        self.finish_reason: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def _raw(self, tid: int) -> bytes:
        return self.tokenizer.token_bytes[tid] if 0 <= tid < len(self.tokenizer.token_bytes) else b""

    def _text(self, tid: int, raw: bytes) -> str:
        # return_tokens_as_token_ids (vLLM's extension): "token_id:N" names the token exactly where
        # its text alone cannot (a partial UTF-8 byte, two tokens with the same text). `bytes`
        # keeps the token's own bytes.
        return f"token_id:{tid}" if self.token_ids_as_text else raw.decode("utf-8", "replace")

    def token_entry(self, tid: int, lp: float, top_ids, top_lps) -> dict:
        raw = self._raw(tid)
        top = ()
        if top_ids is not None and self.top_logprobs:
            alts = [int(t) for t in top_ids[: self.top_logprobs]]
            top = [(self._text(alt, self._raw(alt)), float(alt_lp), self._raw(alt))
                   for alt, alt_lp in zip(alts, top_lps[: self.top_logprobs])]
        return token_logprob(self._text(tid, raw), lp, raw, top)

    def on_response(self, r: DecoderResponse) -> ChoiceEvent:
        ev = ChoiceEvent(self.index)
        if self.done:
            return ev
        self.num_tokens += len(r.token_ids)
        ev.token_ids = r.token_ids
        if self.want_logprobs and r.log_probs:
            # Only tokens the decoder sent a log-prob for: a made-up 0.0 would claim certainty.
            lps = r.log_probs
            ev.logprobs = [self.token_entry(t, lps[i],
                                            r.top_ids[i] if r.top_ids is not None else None,
                                            r.top_log_probs[i] if r.top_log_probs is not None else None)
                           for i, t in enumerate(r.token_ids[: len(lps)])]
        text, matched = self.stops.feed(self.detok.add(r.token_ids))
        ev.text = text
        if matched:
            self.finish_reason = ev.finish_reason = "stop"
        elif self.num_tokens >= self.max_new_tokens:
            ev.text += self._flush()
            self.finish_reason = ev.finish_reason = "length"
        return ev

    def _flush(self) -> str:
        text, matched = self.stops.feed(self.detok.finish())
        return text if matched else text + self.stops.flush()

    def end(self) -> ChoiceEvent:
        """The decoder finished this choice before max_new_tokens: EOS, a stop token or a grammar end."""
        ev = ChoiceEvent(self.index)
        if not self.done:
            ev.text = self._flush()
            self.finish_reason = ev.finish_reason = "stop" if self.num_tokens < self.max_new_tokens else "length"
        return ev


class Generation:
    """One request's choices over one decoder stream."""

    def __init__(self, tokenizer: Tokenizer, n: int, stops: list[str], max_new_tokens: int,
                 logprobs: bool = False, top_logprobs: int = 0, token_ids_as_text: bool = False):
        self.choices = [ChoiceState(i, tokenizer, stops, max_new_tokens, logprobs, top_logprobs, token_ids_as_text)
                        for i in range(n)]
        self.cached_tokens = 0

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self.choices)

    async def events(self, responses: AsyncIterator[DecoderResponse]) -> AsyncIterator[ChoiceEvent]:
        async with aclosing(responses) as stream:
            async for r in stream:
                if r.num_reused_tokens:
                    self.cached_tokens = max(self.cached_tokens, r.num_reused_tokens)
                if r.token_ids and 0 <= r.sequence_index < len(self.choices):
                    yield self.choices[r.sequence_index].on_response(r)
                if all(c.done for c in self.choices):
                    break   # leaving the stream cancels the decoder request (stop strings matched)
                if r.is_final:
                    break
        for c in self.choices:
            if not c.done:
                yield c.end()
