"""The LLM-API stand-in's `SamplingParams` and `GuidedDecodingParams`, as TensorRT-LLM 1.2.1's
tensorrt_llm/sampling_params.py has them: the fields the stand-in implements, their defaults and
their validation (the stand-in's `LLM` is llmapi_standin.py, where the citations are explained).

  SP = tensorrt_llm/sampling_params.py@b35ac1b (version.py there: 1.2.0rc2)
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Union

import numpy as np


@dataclass(slots=True, kw_only=True)
class GuidedDecodingParams:
    """SP:14-37. Only one guide may be set."""
    json: Optional[Union[str, dict]] = None
    regex: Optional[str] = None
    grammar: Optional[str] = None
    json_object: bool = False
    structural_tag: Optional[str] = None

    def _validate(self) -> None:
        num_guides = sum(bool(getattr(self, f.name)) for f in fields(self))
        if num_guides > 1:
            raise ValueError(f"Only one guide can be used for a request, but got {num_guides}.")   # SP:37


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    """The fields of SP:204-274 that the stand-in implements; any other keyword is a TypeError, so
    the adapter cannot pass something the stand-in would silently ignore. Defaults are SP's."""
    end_id: Optional[int] = None
    pad_id: Optional[int] = None
    max_tokens: int = 32
    bad: Optional[Union[str, list[str]]] = None
    bad_token_ids: Optional[list[int]] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    include_stop_str_in_output: bool = False
    embedding_bias: Optional[Any] = None
    n: int = 1
    best_of: Optional[int] = None
    use_beam_search: bool = False
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None
    temperature: Optional[float] = None
    min_tokens: Optional[int] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    min_p: Optional[float] = None
    logprobs: Optional[int] = None
    exclude_input_from_output: bool = True
    return_perf_metrics: bool = False
    guided_decoding: Optional[GuidedDecodingParams] = None
    ignore_eos: bool = False
    detokenize: bool = True
    truncate_prompt_tokens: Optional[int] = None
    _bad_word_ids: Optional[list[list[int]]] = field(default=None, init=False, repr=False)
    _stop_word_ids: Optional[list[list[int]]] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.pad_id is None:                         # SP:279-280
            self.pad_id = self.end_id
        self.best_of = self.best_of or self.n           # SP:282
        if self.embedding_bias is not None:             # SP:284-288 (a tensor there; float32 either way)
            self.embedding_bias = np.asarray(self.embedding_bias, dtype=np.float32).reshape(-1)
        self._validate()

    def _validate(self) -> None:
        """SP:292-333, with the same texts."""
        if self.top_p is not None and (self.top_p < 0 or self.top_p > 1):
            raise ValueError(f"require 0 <= top_p <= 1, got top_p={self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"require top_k >= 0, got top_k={self.top_k}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"require temperature >= 0, got temperature={self.temperature}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) cannot be less than n ({self.n})")
        if (self.best_of is not None and self.best_of > 1 and self._greedy_decoding
                and not os.environ.get("TLLM_ALLOW_N_GREEDY_DECODING", None)):
            raise ValueError(
                f"Greedy decoding in the LLM API does not allow multiple "
                f"returns. Please set to best_of=1, got best_of={self.best_of}. "
                f"Please set to best_of=1 or set an environment variable "
                f"TLLM_ALLOW_N_GREEDY_DECODING=1 to allow best_of > 1 "
                f"under the greedy decoding.")
        if self.truncate_prompt_tokens is not None and self.truncate_prompt_tokens < 1:
            raise ValueError(f"truncate_prompt_tokens must be >= 1, got {self.truncate_prompt_tokens}")
        if self.guided_decoding is not None:
            self.guided_decoding._validate()
        self.logprobs = self.logprobs and int(self.logprobs)          # SP:333: True means 1
        if self.use_beam_search:
            # Not an upstream refusal: the CPU engine samples (beam width 1) only.
            raise ValueError("the CPU stand-in of the LLM API has no beam search (use_beam_search=False)")

    @staticmethod
    def params_imply_greedy_decoding(*, temperature: Optional[float], top_p: Optional[float],
                                     top_k: Optional[int]) -> bool:
        """SP:339-346."""
        return ((temperature is None and top_p is None and top_k is None)
                or top_k == 1 or top_p == 0.0 or temperature == 0)

    @property
    def _greedy_decoding(self) -> bool:
        return not self.use_beam_search and self.params_imply_greedy_decoding(
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)

    def _setup(self, tokenizer: Any) -> "SamplingParams":
        """SP:365-398: the tokenizer's EOS when no end_id; stop and bad strings tokenized alone."""
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
            self.pad_id = tokenizer.pad_token_id
            if self.pad_id is None:
                self.pad_id = self.end_id
        if self.bad is not None:
            strs = [self.bad] if isinstance(self.bad, str) else self.bad
            self._bad_word_ids = [tokenizer.encode(s, add_special_tokens=False) for s in strs]
        if self.stop is not None:
            strs = [self.stop] if isinstance(self.stop, str) else self.stop
            self._stop_word_ids = [tokenizer.encode(s, add_special_tokens=False) for s in strs]
        return self

    def _get_bad_words(self) -> list[list[int]]:
        """SP:400-413."""
        return [[i] for i in self.bad_token_ids or []] + list(self._bad_word_ids or [])

    def _get_stop_words(self) -> list[list[int]]:
        """SP:415-428."""
        return [[i] for i in self.stop_token_ids or []] + list(self._stop_word_ids or [])

    def _get_stop_reasons_and_words(self) -> list[tuple[Union[str, int], list[int]]]:
        """SP:430-440: each stop token id or string with its token ids."""
        reasons: list[Union[str, int]] = list(self.stop_token_ids or [])
        if self.stop is not None:
            reasons += [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return list(zip(reasons, self._get_stop_words()))
