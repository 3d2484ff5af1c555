"""Workload description shared by every benchmark: prompt and output lengths, prompt text.

Prompts are made of ordinary words from the model's own vocabulary and cut to an exact token
count with the model's tokenizer, so "256 prompt tokens" means 256 tokens of user content (the
chat template adds its own few tokens on the OpenAI path).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from benchmarks.common import ROOT


@dataclass(frozen=True)
class Length:
    """A fixed length ("64") or a uniform integer range ("32:128", both ends included)."""
    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str | int) -> "Length":
        if isinstance(text, int):
            return cls(text, text)
        if ":" in text:
            lo, hi = (int(x) for x in text.split(":", 1))
        else:
            lo = hi = int(text)
        if lo < 1 or hi < lo:
            raise ValueError(f"bad length {text!r}: want N or LO:HI with 1 <= LO <= HI")
        return cls(lo, hi)

    def sample(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


@lru_cache(maxsize=4)
def _tokenizer(model_dir: str):
    from transformers import AutoTokenizer
    path = Path(model_dir)
    if not path.is_absolute():
        path = ROOT / path
    return AutoTokenizer.from_pretrained(str(path))


@lru_cache(maxsize=4)
def _words(model_dir: str) -> list[str]:
    tok = _tokenizer(model_dir)
    words = []
    for piece in tok.get_vocab():
        if piece.startswith("\u2581") and piece[1:].isascii() and piece[1:].isalpha() and len(piece) >= 4:
            words.append(piece[1:].lower())
    words.sort()
    return words


def make_prompt(model_dir: str, num_tokens: int, rng: random.Random) -> str:
    """Text of exactly `num_tokens` tokens (without BOS) when encoded alone."""
    tok = _tokenizer(model_dir)
    words = _words(model_dir)
    text_words: list[str] = []
    ids: list[int] = []
    while len(ids) < num_tokens:
        text_words.extend(rng.choice(words) for _ in range(max(8, num_tokens - len(ids))))
        ids = tok.encode(" ".join(text_words), add_special_tokens=False)
    return tok.decode(ids[:num_tokens]).strip()


def encode(model_dir: str, text: str, bos: bool = True) -> list[int]:
    return _tokenizer(model_dir).encode(text, add_special_tokens=bos)


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    prompt_tokens: int
    max_tokens: int


def make_requests(model_dir: str, n: int, prompt_len: Length, output_len: Length, seed: int = 0,
                  distinct: int = 64) -> list[RequestSpec]:
    """`n` requests; prompt texts are drawn from `distinct` variants per length (tokenizing is not free)."""
    rng = random.Random(seed)
    cache: dict[int, list[str]] = {}
    out = []
    for _ in range(n):
        plen = prompt_len.sample(rng)
        variants = cache.setdefault(plen, [])
        if len(variants) < distinct:
            variants.append(make_prompt(model_dir, plen, rng))
            text = variants[-1]
        else:
            text = rng.choice(variants)
        out.append(RequestSpec(text, plen, output_len.sample(rng)))
    return out


def warmup_like(model_dir: str, specs: list[RequestSpec], n: int, seed: int = 0) -> list[RequestSpec]:
    """`n` requests of the same lengths as `specs`' first ones but other prompt texts: a warm-up
    must not put the measured prompts in the server's prefix cache."""
    rng = random.Random(f"warmup-{seed}")
    return [RequestSpec(make_prompt(model_dir, s.prompt_tokens, rng), s.prompt_tokens, s.max_tokens)
            for s in (specs[i % len(specs)] for i in range(n))]
