"""Byte-exact incremental detokenization.

Decoding each streamed token on its own loses SentencePiece spaces and splits multi-byte UTF-8
characters; re-decoding the whole sequence every step is quadratic. Here each token id maps to its
bytes (`Tokenizer.token_bytes`) and one incremental UTF-8 decoder turns the byte stream into text,
holding back an incomplete character until its last byte arrives. O(1) amortized per token.

The contract: for any split of `ids` into chunks,
``"".join(d.add(chunk) for chunk in chunks) + d.finish() == decode(tokenizer, ids)``.

What `decode` returns, precisely:
* the concatenated bytes of the ids (special tokens contribute nothing), decoded as
  ``bytes.decode("utf-8", errors="replace")``: each maximal invalid byte run becomes U+FFFD the
  way Python does it (Python's incremental decoder is consistent with the one-shot decoder);
* for SentencePiece tokenizers (`Tokenizer.is_sentencepiece`), minus one leading space of the
  whole text, as HF's `Strip` decoder drops the dummy-prefix space.
That equals ``tokenizer.hf.decode(ids, skip_special_tokens=True)`` whenever the bytes are valid
UTF-8 (the tokenizers are saved with clean_up_tokenization_spaces=False). The one deliberate
difference is invalid UTF-8: HF's ByteFallback decoder replaces *every byte* of a failing run of
byte tokens with U+FFFD (and can even replace a valid character that shares the run), while this
module follows Python's errors="replace", which a stream can reproduce exactly.
"""
from __future__ import annotations

import codecs
from typing import Iterable, Protocol, Sequence, Union


class _HasTokenBytes(Protocol):
    token_bytes: list[bytes]
    is_sentencepiece: bool


TokenizerOrBytes = Union[_HasTokenBytes, Sequence[bytes]]


def _table_and_strip(source: TokenizerOrBytes,
                     strip_leading_space: bool | None) -> tuple[Sequence[bytes], bool]:
    if hasattr(source, "token_bytes"):
        table = source.token_bytes  # type: ignore[union-attr]
        default_strip = bool(getattr(source, "is_sentencepiece", False))
    else:
        table, default_strip = source, False  # type: ignore[assignment]
    return table, default_strip if strip_leading_space is None else strip_leading_space


def _join(table: Sequence[bytes], ids: Iterable[int]) -> bytes:
    size = len(table)
    # Ids past the tokenizer (a model's padded embedding rows) decode to nothing, as in HF.
    return b"".join(table[i] if 0 <= i < size else b"" for i in ids)


class IncrementalDetokenizer:
    """Turns a stream of token ids into text, chunk by chunk.

    Args:
        source: a `Tokenizer` (or anything with `token_bytes` and `is_sentencepiece`), or a plain
            per-id bytes table.
        strip_leading_space: drop one leading space from the very start of the output. Defaults to
            the tokenizer's `is_sentencepiece` (False for a plain table). Use one detokenizer per
            generated sequence: the strip applies to its first text only.
    """

    __slots__ = ("_table", "_strip_pending", "_utf8")

    def __init__(self, source: TokenizerOrBytes, strip_leading_space: bool | None = None) -> None:
        self._table, self._strip_pending = _table_and_strip(source, strip_leading_space)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, ids: Iterable[int]) -> str:
        """Feed new token ids; return the text they complete (possibly "")."""
        return self._emit(self._utf8.decode(_join(self._table, ids)))

    def finish(self) -> str:
        """End of sequence: flush held-back bytes (an incomplete character becomes U+FFFD)."""
        return self._emit(self._utf8.decode(b"", final=True))

    def _emit(self, text: str) -> str:
        if self._strip_pending and text:
            # The first non-empty text is the start of the whole output: HF strips there only.
            self._strip_pending = False
            if text[0] == " ":
                return text[1:]
        return text


def decode(source: TokenizerOrBytes, ids: Iterable[int], strip_leading_space: bool | None = None) -> str:
    """The whole-sequence text of `ids`, exactly what an IncrementalDetokenizer streams."""
    table, strip = _table_and_strip(source, strip_leading_space)
    text = _join(table, ids).decode("utf-8", errors="replace")
    if strip and text[:1] == " ":
        return text[1:]
    return text
