"""The tokenizer's word cache is bounded (issue 24, finding 17: the soak's frontend RSS growth).

A SentencePiece vocabulary converted to BPE has no pre-tokenizer, so the library's word cache keyed
whole prompts: 10,000 of them, about 5 KB each for short ones, ~47 MiB per process. Measured as
glibc's bytes in use (mallinfo2: the cache lives in native memory, out of tracemalloc's sight)."""
from __future__ import annotations

import ctypes
import gc
import random

from llama_triton.text.tokenization import WORD_CACHE_ENTRIES

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


def native_in_use() -> int:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    gc.collect()
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def test_distinct_prompts_do_not_grow_the_tokenizer(default_tokenizer):
    rng = random.Random(11)
    texts = [" ".join(rng.choice(WORDS) for _ in range(20)) for _ in range(6 * WORD_CACHE_ENTRIES)]
    for text in texts[:WORD_CACHE_ENTRIES]:          # the cache full
        default_tokenizer.encode(text)
        default_tokenizer.encode_marked(text)
    before = native_in_use()
    for text in texts[WORD_CACHE_ENTRIES:]:
        default_tokenizer.encode(text)
        default_tokenizer.encode_marked(text)
    grown = native_in_use() - before
    # Unbounded, 5 x 1024 more distinct prompts kept about 25 MiB more; bounded, nothing more.
    assert grown < 4 * 2 ** 20, f"{grown / 2 ** 20:.1f} MiB"
