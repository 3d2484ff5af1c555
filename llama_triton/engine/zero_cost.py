"""A decoder with no model: the same engine protocol as `Engine` (`types.DecoderEngine`), one token per step.

It measures the serving path (frontend + Triton + the Python backend hop) at its own limit:
every step emits one new token for every running sequence, as TensorRT-LLM streams, without
spending any time on a forward pass. Tokens cycle through ordinary word pieces from the seed, so
detokenization does real work.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from llama_triton.contract import EngineStopped, QueueFull, RequestError
from llama_triton.engine.config import EngineConfig
from llama_triton.engine.types import GenerationRequest, OutputCallback, SequenceOutput

logger = logging.getLogger(__name__)


@dataclass
class _Running:
    request: GenerationRequest
    callback: OutputCallback
    max_new_tokens: int
    generated: list[list[int]] = field(default_factory=list)


class ZeroCostEngine:
    def __init__(self, model_dir: str, config: EngineConfig):
        self.config = config
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.vocab_size = int(cfg["vocab_size"])
        self.max_seq_len = config.max_seq_len or int(cfg.get("max_position_embeddings", 4096))
        self._lock = threading.Condition()
        self._inbox: deque[_Running] = deque()
        self._running: dict[str, _Running] = {}
        self._cancelled: set[str] = set()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._listeners: list[Callable[[], None]] = []
        self._end_listeners: list[Callable[[], None]] = []
        self.num_steps = self.num_forward_passes = self.num_decode_passes = 0
        self.num_generated_tokens = self.num_cancelled = 0
        self.num_running = self.num_waiting = 0

    def add_step_listener(self, listener: Callable[[], None], *, at_end: bool = False) -> None:
        (self._end_listeners if at_end else self._listeners).append(listener)

    def submit(self, request: GenerationRequest, callback: OutputCallback) -> None:
        if not request.prompt_ids or len(request.prompt_ids) >= self.max_seq_len:
            raise RequestError("the prompt is empty or does not fit max_seq_len")
        max_new = min(request.params.max_new_tokens, self.max_seq_len - len(request.prompt_ids))
        if max_new < 1:
            raise RequestError("request_output_len must be >= 1")
        with self._lock:
            if self._stopping:
                raise EngineStopped("the engine has shut down")
            if len(self._inbox) >= self.config.max_queue_size:
                raise QueueFull(f"the engine queue is full ({self.config.max_queue_size} waiting requests)")
            self._inbox.append(_Running(request, callback, max_new))
            self._lock.notify()

    def cancel(self, request_id: str) -> None:
        with self._lock:
            self._cancelled.add(request_id)
            self._lock.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="zero-cost-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
        # Whatever was still queued or running gets its final output (the protocol's promise).
        with self._lock:
            left = list(self._inbox) + list(self._running.values())
            self._inbox.clear()
            self._running.clear()
        for r in left:
            for i in range(r.request.params.num_return_sequences):
                r.callback(SequenceOutput(r.request.request_id, i, [], finished=True, finish_reason="error",
                                          error="the engine shut down", error_code="shutting_down"))

    def _token(self, request: GenerationRequest, index: int, position: int) -> int:
        # Pieces 1000..30999 of the Llama-2 vocabulary are ordinary word pieces.
        span = max(1, min(self.vocab_size, 31000) - 1000)
        return 1000 + (request.params.seed * 7919 + index * 104729 + position * 15485863) % span

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._inbox and not self._running:
                    self._lock.wait()
                if self._stopping:
                    return
                while self._inbox and len(self._running) < self.config.max_batch_size:
                    r = self._inbox.popleft()
                    r.generated = [[] for _ in range(r.request.params.num_return_sequences)]
                    self._running[r.request.request_id] = r
                cancelled, self._cancelled = self._cancelled, set()
            self.num_steps += 1
            for listener in self._listeners:
                listener()
            for rid in cancelled:
                r = self._running.pop(rid, None)
                if r is not None:
                    self.num_cancelled += 1
                    for i in range(len(r.generated)):
                        r.callback(SequenceOutput(rid, i, [], finished=True, finish_reason="cancelled"))
            self.num_forward_passes += 1
            self.num_decode_passes += 1
            for rid, r in list(self._running.items()):
                for i, seq in enumerate(r.generated):
                    token = self._token(r.request, i, len(seq))
                    seq.append(token)
                    self.num_generated_tokens += 1
                    done = len(seq) >= r.max_new_tokens
                    if r.request.streaming:
                        r.callback(SequenceOutput(rid, i, [token], finished=done,
                                                  finish_reason="length" if done else None))
                    elif done:
                        r.callback(SequenceOutput(rid, i, list(seq), finished=True, finish_reason="length"))
                if len(r.generated[0]) >= r.max_new_tokens:
                    del self._running[rid]
            self.num_running = sum(len(r.generated) for r in self._running.values())
            self.num_waiting = len(self._inbox)
            for listener in self._end_listeners:
                listener()
