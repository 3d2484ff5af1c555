"""Server-sent events: what the service hands the HTTP layer for a streamed response.

An `EventStream` is the completion id plus the SSE chunks (pre-rendered bytes) and, once, the
`DECODER_ANSWERED` marker: chunks before it (a chat stream's role-only chunks) were written before
the decoder said anything, so frontend/http/sse_writer.py holds them and the status line back until
the marker arrives; errors found until then (queue full, decoder down, a refused request) keep
their own status code.

The chunk encoders render each event straight to bytes, in exactly the shape of response_models.py
(tests compare them byte for byte). Measured on a 2-core box: a content chunk
(`ChatChunkEncoder.content`) 0.5-0.8 us (the constant head is rendered once per stream into a bytes
%-format template; only the text goes through orjson), a whole-chunk dict + orjson.dumps about 1 us;
with five top logprobs 1.4 us (+3 us for `token_logprob` building the entry).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Optional, Sequence, Union

import orjson

LOGPROB_FLOOR = -9999.0  # JSON has no -inf; OpenAI-compatible servers send this floor instead


class DecoderAnswered:
    """The marker type; use the `DECODER_ANSWERED` instance."""

    def __repr__(self) -> str:
        return "DECODER_ANSWERED"


DECODER_ANSWERED = DecoderAnswered()


@dataclass
class EventStream:
    id: str                                                     # the completion id (chatcmpl-/cmpl-/resp-...)
    chunks: AsyncIterator[Union[bytes, DecoderAnswered]]
    # How this stream reports an error the writer finds (timeout, shutdown) once it has started;
    # None: the chat framing, an error envelope then `data: [DONE]`. The Responses API has its own.
    error_event: Optional[Callable[[Any], bytes]] = None


# ----------------------------------------------------------------------------------------------------
# Streaming: plain-dict builders and SSE chunk encoders (the hot path)

SSE_DONE = b"data: [DONE]\n\n"
_FINISH = {None: b"null", "stop": b'"stop"', "length": b'"length"', "tool_calls": b'"tool_calls"',
           "content_filter": b'"content_filter"'}


def usage_dict(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def floor_logprob(logprob: float) -> float:
    return logprob if logprob >= LOGPROB_FLOOR else LOGPROB_FLOOR  # also maps NaN to the floor


def token_logprob(token: str, logprob: float, token_bytes: Optional[bytes] = None,
                  top: Sequence[tuple[str, float, Optional[bytes]]] = ()) -> dict:
    """One entry of chat `logprobs.content`; `token_bytes` defaults to the token's UTF-8 bytes."""
    return {"token": token, "logprob": floor_logprob(logprob),
            "bytes": list(token.encode() if token_bytes is None else token_bytes),
            "top_logprobs": [{"token": t, "logprob": floor_logprob(lp), "bytes": list(t.encode() if b is None else b)}
                             for t, lp, b in top]}


def _json(value: Any) -> bytes:
    return b"null" if value is None else orjson.dumps(value)


def _usage(usage: Optional[dict]) -> bytes:
    """A chunk's usage member: none without usage."""
    return b"" if usage is None else b',"usage":' + orjson.dumps(usage)


def _stream_head(id: str, object: str, model: str, created: int) -> bytes:
    """`data: {"id":..,"object":..,"created":..,"model":..,"choices":[` with any `%` doubled, ready
    to be the start of a bytes %-format template."""
    head = (b'data: {"id":' + orjson.dumps(id) + b',"object":"' + object.encode() + b'","created":'
            + str(int(created)).encode() + b',"model":' + orjson.dumps(model))
    return head.replace(b"%", b"%%") + b',"choices":['


class ChatChunkEncoder:
    """Renders the SSE events of one chat stream. Every method returns one whole `data: ...\n\n` event.

    The output is byte-identical to `b"data: " + ChatCompletionChunk(...).model_dump_json() + b"\n\n"`
    (a chunk without usage leaves the key out). The constant part is rendered once per stream into
    bytes %-format templates, so a content chunk costs one orjson call and one format (about 1 us
    against about 15 us for a pydantic chunk).
    """

    def __init__(self, id: str, model: str, created: int):
        head = _stream_head(id, "chat.completion.chunk", model, created)
        choice = b'{"index":%d,"delta":%b,"logprobs":%b,"finish_reason":%b}]%b}\n\n'
        self._fmt = head + choice
        self._content_fmt = head + choice.replace(b'"delta":%b', b'"delta":{"content":%b}')
        self._usage_fmt = head + b'],"usage":%b}\n\n'

    def content(self, text: str, index: int = 0, logprobs: Optional[dict] = None,
                finish_reason: Optional[str] = None, usage: Optional[dict] = None) -> bytes:
        """`logprobs` is `{"content": [token_logprob(...), ...]}` or None."""
        return self._content_fmt % (index, orjson.dumps(text), _json(logprobs), _FINISH[finish_reason],
                                    _usage(usage))

    def delta(self, delta: dict, index: int = 0, logprobs: Optional[dict] = None,
              finish_reason: Optional[str] = None, usage: Optional[dict] = None) -> bytes:
        """Any delta (reasoning_content, tool_calls, ...), given in its wire shape."""
        return self._fmt % (index, orjson.dumps(delta), _json(logprobs), _FINISH[finish_reason], _usage(usage))

    def finish(self, finish_reason: str, index: int = 0, usage: Optional[dict] = None) -> bytes:
        """The closing chunk of a choice: empty delta + finish_reason."""
        return self._fmt % (index, b"{}", b"null", _FINISH[finish_reason], _usage(usage))

    def usage(self, usage: dict) -> bytes:
        """The include_usage chunk: `choices: []` + usage, sent right before `[DONE]`."""
        return self._usage_fmt % orjson.dumps(usage)


class CompletionChunkEncoder:
    """Same as ChatChunkEncoder for /v1/completions (`object: text_completion`, choices carry `text`)."""

    def __init__(self, id: str, model: str, created: int):
        head = _stream_head(id, "text_completion", model, created)
        self._fmt = head + b'{"index":%d,"text":%b,"logprobs":%b,"finish_reason":%b}]%b}\n\n'
        self._usage_fmt = head + b'],"usage":%b}\n\n'

    def text(self, text: str, index: int = 0, logprobs: Optional[dict] = None,
             finish_reason: Optional[str] = None, usage: Optional[dict] = None) -> bytes:
        """`logprobs` is the legacy `{tokens, token_logprobs, top_logprobs, text_offset}` object or None."""
        return self._fmt % (index, orjson.dumps(text), _json(logprobs), _FINISH[finish_reason],
                            _usage(usage))

    def finish(self, finish_reason: str, index: int = 0, usage: Optional[dict] = None) -> bytes:
        return self.text("", index, None, finish_reason, usage)

    def usage(self, usage: dict) -> bytes:
        return self._usage_fmt % orjson.dumps(usage)


def completion_logprobs(tokens: Sequence[str], token_logprobs: Sequence[Optional[float]],
                        top_logprobs: Sequence[Optional[dict[str, float]]], text_offset: Sequence[int]) -> dict:
    """The legacy completions logprobs object; logprobs below the floor (or -inf) are clamped."""
    return {"tokens": list(tokens),
            "token_logprobs": [None if lp is None else floor_logprob(lp) for lp in token_logprobs],
            "top_logprobs": [None if t is None else {k: floor_logprob(v) for k, v in t.items()} for t in top_logprobs],
            "text_offset": list(text_offset)}
