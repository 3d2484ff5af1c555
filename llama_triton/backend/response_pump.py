"""Sends the decoder's responses from a thread of their own, merging a stream's tokens when sending falls behind.

Each Python-backend `send` is a round trip to the Triton process, and every response then costs
Triton, the gRPC hop and the frontend once more. On the engine thread those sends sat between
two forward passes: 64 streams cost 64 round trips per step. Here the engine thread only queues
its outputs; this thread sends them. When it keeps up, every response carries one token, as
before. When it does not (a large batch, a busy machine), the outputs a stream accumulated since
its last response go out as one response with all of their tokens: the same tokens, log-probs and
final flag, in fewer responses. vLLM's API server does the same with its per-request output
collector when a consumer falls behind.

Merging is per request: `put(..., merge=False)` keeps one response per engine output, which is
what a direct Triton client of TensorRT-LLM's backend gets (one response per step); the frontend
asks for merging with a request parameter (llama_triton/backend/decoder_model.py).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from llama_triton.engine.types import SequenceOutput

logger = logging.getLogger(__name__)

Handler = Callable[[SequenceOutput], None]


def merge_outputs(outs: list[SequenceOutput]) -> list[SequenceOutput]:
    """Consecutive outputs of one sequence folded into as few as keep their meaning: runs of token
    outputs become one; an error output stays on its own (it ends the request)."""
    merged: list[SequenceOutput] = []
    for out in outs:
        prev = merged[-1] if merged else None
        if prev is None or prev.error is not None or out.error is not None or prev.finished:
            merged.append(out)
            continue
        merged[-1] = SequenceOutput(
            prev.request_id, prev.sequence_index, prev.token_ids + out.token_ids,
            None if prev.log_probs is None and out.log_probs is None
            else (prev.log_probs or []) + (out.log_probs or []),
            None if prev.top_logprobs is None and out.top_logprobs is None
            else (prev.top_logprobs or []) + (out.top_logprobs or []),
            out.finished, out.finish_reason, prev.num_reused_tokens or out.num_reused_tokens, None)
    return merged


class ResponsePump:
    """One sender thread per decoder model instance; `put` is called on the engine thread."""

    def __init__(self, name: str = "llama-triton-responses"):
        self._cond = threading.Condition()
        # (handler, sequence index) -> that stream's queued outputs; a handler is one request's,
        # so a request id reused after the first request ended is another stream.
        self._pending: dict[tuple[Handler, int], tuple[bool, list[SequenceOutput]]] = {}
        self._closed = False
        self._stopped = False       # the thread has sent everything and exited
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, handler: Handler, out: SequenceOutput, merge: bool = True) -> None:
        """Queues `out` for `handler`; the outputs of one sequence reach it in order, merged into
        fewer responses when they queued up and `merge`."""
        key = (handler, out.sequence_index)
        with self._cond:
            if not self._stopped:
                queued = self._pending.get(key)
                if queued is None:
                    self._pending[key] = (merge, [out])
                else:
                    queued[1].append(out)
                self._cond.notify_all()
                return
        # After close(): the thread is gone, and the engine's last outputs (a shutdown fails what it
        # still held) must still reach their requests.
        self._send(handler, out)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    self._stopped = True
                    self._cond.notify_all()
                    return
                batch, self._pending = self._pending, {}
            for (handler, _), (merge, outs) in batch.items():
                for out in merge_outputs(outs) if merge and len(outs) > 1 else outs:
                    self._send(handler, out)

    @staticmethod
    def _send(handler: Handler, out: SequenceOutput) -> None:
        try:
            handler(out)
        except Exception:
            logger.exception("sending a response of request %s failed", out.request_id)

    def close(self, timeout: float = 5.0) -> None:
        """Sends what is queued, then stops the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
