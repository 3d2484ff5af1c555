"""The engine's stop-word check (llama_triton/engine/stop_words.py): the same answers as a scan of
every word, at a cost that does not grow with the number of words (issue 24, finding 7)."""
from __future__ import annotations

import random

from llama_triton.engine.stop_words import StopWords


def scan(words: list[list[int]], generated: list[int]) -> bool:
    """What the engine did before: every word compared after every token."""
    return any(0 < len(w) <= len(generated) and generated[-len(w):] == w for w in words)


def test_same_answers_as_a_scan_of_every_word():
    rng = random.Random(5)
    for _ in range(300):
        words = [[rng.randrange(8) for _ in range(rng.randint(0, 3))] for _ in range(rng.randint(0, 6))]
        prompt = [rng.randrange(8) for _ in range(rng.randint(0, 4))]
        generated = [rng.randrange(8) for _ in range(rng.randint(0, 5))]
        assert StopWords(words).hit(prompt + generated, len(prompt)) == scan(words, generated), (words, prompt, generated)


def test_a_check_looks_only_at_the_words_ending_in_the_new_token():
    flood = [[t] for t in range(32_000)] + [[9, 7], [8, 7]]
    index = StopWords(flood)
    assert sorted(index.candidates(7)) == [(7,), (8, 7), (9, 7)]
    assert index.candidates(40_000) == []
    assert index.hit([1, 2, 9, 7], 2) and not StopWords([[9, 7]]).hit([9, 7], 1)   # the prompt is not generated
