"""Server-sent events: what the service hands the HTTP layer for a streamed response.

An `EventStream` is the completion id plus the SSE chunks (pre-rendered bytes) and, once, the
`DECODER_ANSWERED` marker: chunks before it (a chat stream's role-only chunks) were written before
the decoder said anything, so app.py holds them and the status line back until the marker arrives;
errors found until then (queue full, decoder down, a refused request) keep their own status code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Union

SSE_DONE = b"data: [DONE]\n\n"


class DecoderAnswered:
    """The marker type; use the `DECODER_ANSWERED` instance."""

    def __repr__(self) -> str:
        return "DECODER_ANSWERED"


DECODER_ANSWERED = DecoderAnswered()


@dataclass
class EventStream:
    id: str                                                     # the completion id (chatcmpl-/cmpl-...)
    chunks: AsyncIterator[Union[bytes, DecoderAnswered]]
