"""TensorRT-LLM's `[2, L]` word-list format for `stop_words_list` / `bad_words_list`.

Row 0 holds the token ids of all words back to back; row 1 the cumulative end offset of each
word, padded with -1. `[[0], [-1]]` means "no words" (what preprocessing sends when none).
"""
from __future__ import annotations

import numpy as np


class WordListError(ValueError):
    pass


def to_word_list(words: list[list[int]]) -> np.ndarray:
    ids: list[int] = []
    offsets: list[int] = []
    for w in words:
        if not w:
            continue
        ids.extend(w)
        offsets.append(len(ids))
    width = max(1, len(ids))
    out = np.full((2, width), -1, dtype=np.int32)
    out[0, :] = 0
    out[0, :len(ids)] = ids
    out[1, :len(offsets)] = offsets
    return out


def from_word_list(arr: np.ndarray) -> list[list[int]]:
    arr = np.asarray(arr)
    while arr.ndim > 2 and arr.shape[0] == 1:   # drop batch / beam dims of size 1
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise WordListError(f"word list must have shape [2, L], got {list(arr.shape)}")
    ids, offsets = arr[0].tolist(), arr[1].tolist()
    words, start = [], 0
    for i, end in enumerate(offsets):
        if end < 0:
            if any(o >= 0 for o in offsets[i:]):
                raise WordListError("word list offsets: -1 padding followed by an offset")
            break
        if end <= start or end > len(ids):
            raise WordListError(f"word list offsets must increase within [1, {len(ids)}], got {offsets}")
        words.append(ids[start:end])
        start = end
    return words
