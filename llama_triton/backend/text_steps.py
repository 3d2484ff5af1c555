"""The ensemble's text steps: prompt/word-list tokenization and stateful stream detokenization."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Optional

import numpy as np

from llama_triton.defaults import STREAM_STATE_IDLE_S
from llama_triton.text.detokenize import IncrementalDetokenizer, decode
from llama_triton.text.tokenization import Tokenizer
from llama_triton.trtllm.word_lists import to_word_list


def _strings(arr: Optional[np.ndarray]) -> list[str]:
    if arr is None:
        return []
    out = []
    for v in np.asarray(arr, dtype=object).reshape(-1):
        s = v.decode("utf-8") if isinstance(v, (bytes, bytearray)) else str(v)
        if s:
            out.append(s)
    return out


class Preprocessor:
    def __init__(self, tokenizer: Tokenizer, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.add_special_tokens = add_special_tokens

    def words(self, arr: Optional[np.ndarray]) -> np.ndarray:
        # Each word is encoded on its own, without BOS (TensorRT-LLM v0.5 prepended BOS to stop
        # words, so they never matched).
        return to_word_list([self.tokenizer.encode(w, add_special_tokens=False) for w in _strings(arr)])

    def bias(self, words: Optional[np.ndarray], weights: Optional[np.ndarray]) -> np.ndarray:
        names = _strings(words)
        if not names:
            return np.zeros((0,), dtype=np.float32)
        w = np.asarray(weights, dtype=np.float32).reshape(-1) if weights is not None else np.zeros(0)
        if len(w) != len(names):
            raise ValueError(f"embedding_bias_weights has {len(w)} values for {len(names)} words")
        bias = np.zeros((self.tokenizer.vocab_size,), dtype=np.float32)
        for name, weight in zip(names, w):
            for tid in self.tokenizer.encode(name, add_special_tokens=False):
                bias[tid] += weight
        return bias

    def prompt(self, query: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(query, add_special_tokens=self.add_special_tokens), dtype=np.int32)


class StreamDetokenizers:
    """One incremental detokenizer per (request id, sequence index) of streamed ensemble requests.

    State is dropped on a sequence's final response (`is_final`) or after `idle_seconds`
    without a response (decoders that cannot say which response is the last). Triton refuses an
    ensemble whose post-decoupled step also reads an ensemble input, so postprocessing cannot see
    the request's `stream` flag; a non-streamed response is simply a sequence's only response.
    """

    def __init__(self, tokenizer: Tokenizer, idle_seconds: float = STREAM_STATE_IDLE_S, max_streams: int = 65536):
        self.tokenizer = tokenizer
        self.idle_seconds = idle_seconds
        self.max_streams = max_streams
        self._streams: OrderedDict[tuple[str, int], tuple[IncrementalDetokenizer, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._streams)

    def text(self, request_id: str, sequence_index: int, ids: list[int], *, is_final: Optional[bool]) -> str:
        """Text for one decoder response.

        `is_final` is the CPU decoder's flag for a sequence's last response; None where the
        decoder has no such output (TensorRT-LLM). Then a response of several tokens is a whole
        non-streamed sequence (decoded and flushed at once), and a stream's state lives until idle
        eviction: a streamed request that reuses the id of an earlier stream within
        `idle_seconds`, or a one-token non-streamed response, is the documented gap.
        """
        if not request_id:
            # No key to keep state under: each response is decoded alone (documented limitation).
            return decode(self.tokenizer, ids)
        key = (request_id, sequence_index)
        now = time.monotonic()
        with self._lock:
            entry = self._streams.pop(key, None)
            self._evict(now)
        if is_final is None and len(ids) > 1:
            # TensorRT-LLM streams one new token per response (llmRequest.cpp createResult, no
            # speculative decoding here): more is a whole non-streamed sequence. Decode it with its
            # tail flushed, and drop what an earlier request with the same id left behind.
            return decode(self.tokenizer, ids)
        if entry is None and is_final:
            return decode(self.tokenizer, ids)     # the whole sequence in one response
        detok = entry[0] if entry else IncrementalDetokenizer(self.tokenizer)
        text = detok.add(ids)
        if is_final:
            return text + detok.finish()
        with self._lock:
            self._streams[key] = (detok, now)
        return text

    def _evict(self, now: float) -> None:
        while self._streams:
            key, (_, last) = next(iter(self._streams.items()))
            if now - last < self.idle_seconds and len(self._streams) < self.max_streams:
                break
            del self._streams[key]
