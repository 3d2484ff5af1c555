"""The tokenizer of a checkpoint, plus the per-token byte table that exact detokenization needs.

A Hugging Face tokenizer decodes whole sequences; a stream needs to know what each token adds to
the output *bytes*, because one character may be spread over several tokens (byte fallback in
SentencePiece, byte-level BPE in Llama-3). `Tokenizer.token_bytes` is that table, built once at
load; `llama_triton.detokenize` turns it into text incrementally.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

# SentencePiece byte-fallback pieces stand for one raw byte each.
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ", the space byte in GPT-2's byte-to-unicode table

# Decoded by the sanity check at load: ASCII, Latin-1, CJK, an emoji (byte fallback in Llama-2),
# newlines and runs of spaces.
_PROBE_TEXT = "Hello wörld,  你好 🦙\n\tend"


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's unicode-to-byte table: byte-level BPE spells every byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _sentencepiece_bytes(piece: str) -> bytes:
    match = _BYTE_PIECE.fullmatch(piece)
    if match:
        return bytes([int(match.group(1), 16)])
    return piece.replace(_SPM_SPACE, " ").encode("utf-8")


def _byte_level_bytes(piece: str) -> bytes:
    table = _byte_level_table()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        # Not a byte-level spelling: tokenizers' ByteLevel decoder then emits the raw UTF-8 too.
        return piece.encode("utf-8")


class Tokenizer:
    """A checkpoint's HF tokenizer with what serving needs precomputed.

    Attributes:
        hf: the underlying `transformers` tokenizer.
        vocab_size: `len(hf)`, the number of ids the tokenizer knows (base vocab + added tokens).
        token_bytes: for every id, the exact bytes it contributes to output text; b"" for
            special tokens (which `decode(..., skip_special_tokens=True)` drops).
        special_ids: the ids decoded as nothing.
        is_sentencepiece: whether decoding drops one leading space of the output, as HF's
            SentencePiece (Llama-2) decoder does; measured on the tokenizer itself at load.
        eos_ids: every id that ends generation: `eos_id` plus generation_config.json's
            `eos_token_id` entries (Llama-3.1 stops on <|eot_id|>, <|eom_id|> and <|end_of_text|>).
    """

    def __init__(self, hf: Any, generation_config: Mapping[str, Any] | None = None) -> None:
        self.hf = hf
        self.vocab_size: int = len(hf)
        added = hf.added_tokens_decoder  # id -> AddedToken
        self.special_ids: frozenset[int] = frozenset(
            {i for i, tok in added.items() if tok.special} | set(hf.all_special_ids)
        )
        self.token_bytes: list[bytes] = self._build_token_bytes(added)
        self.is_sentencepiece: bool = self._measure_leading_space_strip()
        self._check_round_trip()
        self.eos_ids: tuple[int, ...] = self._eos_ids(generation_config or {})

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load the tokenizer saved in a checkpoint directory (no network access)."""
        from transformers import AutoTokenizer

        from llama_triton.sentencepiece_compat import align_converted_sentencepiece, ensure_sentencepiece_proto
        ensure_sentencepiece_proto()  # a checkpoint with only tokenizer.model
        path = Path(path)
        if not path.is_dir():  # else transformers takes it for a hub repo id
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf = align_converted_sentencepiece(hf, path)
        generation_path = path / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.is_file() else None
        return cls(hf, generation)

    # ------------------------------------------------------------------ encoding and templates

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in it (e.g. from a chat template) parse as
        the special tokens; `add_special_tokens` adds the tokenizer's BOS."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    @property
    def chat_template(self) -> str | None:
        return self.hf.chat_template

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]],
                            tools: Sequence[Mapping[str, Any]] | None = None,
                            add_generation_prompt: bool = True, **template_kwargs: Any) -> str:
        """Render the conversation as prompt text (not tokenized; it starts with BOS text when the
        template writes `bos_token`, so encode it with add_special_tokens=False).

        Raises ValueError when there is no template and jinja2.TemplateError when the template
        rejects the conversation (its `raise_exception`).
        """
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        return self.hf.apply_chat_template(
            list(messages), tools=list(tools) if tools is not None else None,
            add_generation_prompt=add_generation_prompt, tokenize=False, **template_kwargs,
        )

    # ------------------------------------------------------------------ special ids

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        return self.hf.eos_token_id

    @property
    def pad_id(self) -> int:
        """The pad id, or the eos id when the tokenizer has none (Llama-2 and -3 have none)."""
        pad = self.hf.pad_token_id
        return self.eos_id if pad is None else pad

    def _eos_ids(self, generation_config: Mapping[str, Any]) -> tuple[int, ...]:
        configured = generation_config.get("eos_token_id")
        if configured is None:
            configured = []
        elif isinstance(configured, int):
            configured = [configured]
        ids = [self.eos_id, *configured]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    # ------------------------------------------------------------------ the byte table

    def _build_token_bytes(self, added: Mapping[int, Any]) -> list[bytes]:
        pieces = self.hf.convert_ids_to_tokens(list(range(self.vocab_size)))
        # SentencePiece vocabularies spell a word-initial space "▁", byte-level BPE ones "Ġ".
        spm = sum(1 for p in pieces if p and p.startswith(_SPM_SPACE))
        byte_level = sum(1 for p in pieces if p and p.startswith(_BYTE_LEVEL_SPACE))
        if max(spm, byte_level) == 0:
            raise ValueError("unsupported vocabulary: neither SentencePiece nor byte-level BPE")
        piece_bytes = _sentencepiece_bytes if spm > byte_level else _byte_level_bytes
        table: list[bytes] = []
        for token_id, piece in enumerate(pieces):
            if token_id in self.special_ids or piece is None:
                table.append(b"")
            elif token_id in added:
                # Added (non-special) tokens decode to their literal content, e.g. DeepSeek's <think>.
                table.append(added[token_id].content.encode("utf-8"))
            else:
                table.append(piece_bytes(piece))
        return table

    def _measure_leading_space_strip(self) -> bool:
        """Does HF's decode drop the first space of a sequence (SentencePiece's dummy prefix)?"""
        for token_id, raw in enumerate(self.token_bytes):
            if len(raw) >= 2 and raw[:1] == b" " and raw[1:].isalpha() and raw.isascii():
                decoded = self.hf.decode([token_id], skip_special_tokens=True)
                if decoded == raw[1:].decode():
                    return True
                if decoded == raw.decode():
                    return False
                raise ValueError(f"token {token_id} {raw!r} decodes to {decoded!r}: unsupported decoder")
        raise ValueError("no word-initial token found to probe the decoder with")

    def _check_round_trip(self) -> None:
        """Fail at load, not mid-stream, when the byte table disagrees with HF's decoder."""
        ids = self.encode(_PROBE_TEXT)
        if self.bos_id is not None:
            ids.insert(0, self.bos_id)  # special tokens must decode to nothing
        text = b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
        if self.is_sentencepiece and text.startswith(" "):
            text = text[1:]
        expected = self.hf.decode(ids, skip_special_tokens=True)
        if text != expected:
            raise ValueError(f"byte table decodes {_PROBE_TEXT!r} as {text!r}, HF as {expected!r}")
