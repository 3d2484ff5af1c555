"""What the frontend needs from a decoder: the `DecoderClient` protocol, its values and its failures.

`TritonDecoder` (triton_client.py) implements it over Triton's gRPC stream; the handler tests
(tests/handlers/) implement it with a scripted fake, so the service, generation and HTTP logic run
without Triton. Decoder failures become HTTP statuses in exactly one place: `http_error` below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Protocol

import numpy as np

from frontend import errors


class DecoderFailure(RuntimeError):
    """Base of the decoder's failures; `http_error` maps each kind to one HTTP status."""


class DecoderUnavailable(DecoderFailure):
    """Triton is down or the decoder is not ready (HTTP 503)."""


class DecoderBusy(DecoderFailure):
    """The decoder's queue is full (HTTP 429)."""


class DecoderError(DecoderFailure):
    """The decoder failed this request: HTTP 400 when it refused the input, 500 when it broke
    (`internal`: the decoder's own failures, never the client's fault). `certain`: the decoder said
    itself that the input was at fault (a typed code, llama_triton/trtllm/decoder_errors.py), so no
    probe has to tell a refused request from a broken decoder."""

    def __init__(self, message: str, internal: bool = False, certain: bool = False):
        super().__init__(message)
        self.internal = internal
        self.certain = certain


@dataclass(frozen=True)
class DecoderCapabilities:
    inputs: frozenset[str]
    outputs: frozenset[str]
    parameters: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class DecoderResponse:
    sequence_index: int
    token_ids: list[int]
    log_probs: Optional[list[float]]
    top_ids: Optional[np.ndarray]        # [tokens, N]
    top_log_probs: Optional[np.ndarray]  # [tokens, N]
    num_reused_tokens: Optional[int]
    is_final: bool                       # the last response of the whole request


class DecoderClient(Protocol):
    """One decoder as the service sees it. `generate` yields until the final response; closing the
    generator early cancels the request. Failures are `DecoderFailure`s. An implementation may also
    carry `health` (frontend/decoder/health.py's DecoderHealth, or None: no tracking)."""

    async def capabilities(self) -> DecoderCapabilities: ...

    def generate(self, request_id: str, arrays: dict[str, np.ndarray]) -> AsyncIterator[DecoderResponse]: ...

    async def is_ready(self) -> bool: ...

    async def close(self) -> None: ...


def http_error(err: DecoderFailure) -> errors.APIError:
    """The one mapping of decoder failures to HTTP statuses and envelopes."""
    if isinstance(err, DecoderBusy):
        return errors.APIError(429, f"The server is busy: {err}", errors.RATE_LIMIT, None, "queue_full",
                               {"Retry-After": "1"})
    if isinstance(err, DecoderUnavailable):
        return errors.APIError(503, f"The model is not available right now: {err}", errors.SERVER, None,
                               "model_not_ready", {"Retry-After": "2"})
    if isinstance(err, DecoderError) and not err.internal:
        return errors.bad_request(f"The decoder refused the request: {err}", None, "decoder_error")
    return errors.APIError(500, f"The decoder failed: {err}", errors.SERVER, None, "decoder_error")
