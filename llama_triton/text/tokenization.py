"""The tokenizer of a checkpoint, plus the per-token byte table that exact detokenization needs.

A Hugging Face tokenizer decodes whole sequences; a stream needs to know what each token adds to
the output *bytes*, because one character may be spread over several tokens (byte fallback in
SentencePiece, byte-level BPE in Llama-3). `Tokenizer.token_bytes` is that table, built once at
load; `llama_triton.text.detokenize` turns it into text incrementally.

Control tokens as text. `encode` turns every spelling of an added token (`</s>`, `<|eot_id|>`)
into that token. `encode_marked` encodes the same way, except that it first matches added tokens
and only then drops the LITERAL_MARKS characters: a spelling with a mark between its characters
is not matched, and is encoded as the text it spells, in context, exactly as the same text would
be if the vocabulary had no such token. `frontend.literal_text` marks what a request supplied.
"""
from __future__ import annotations

import json
import re
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

# SentencePiece byte-fallback pieces stand for one raw byte each.
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space
_BYTE_LEVEL_SPACE = "\u0120"  # "Ġ", the space byte in GPT-2's byte-to-unicode table

# Decoded by the sanity check at load: ASCII, Latin-1, CJK, an emoji (byte fallback in Llama-2),
# newlines and runs of spaces.
_PROBE_TEXT = "Hello wörld,  你好 🦙\n\tend"

# Two Unicode noncharacters, which the standard reserves for a program's internal use: request text
# never needs them, so `encode_marked` can drop them (text without them encodes as with `encode`).
LITERAL_MARKS = "\ufdd0\ufdd1"


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


# Entries of a BPE model's word cache. The library keeps 10,000 words by default, and a
# SentencePiece vocabulary converted to BPE has no pre-tokenizer, so its "word" is a whole prompt
# (each under the library's cached-length limit): a serving process filled the cache with distinct
# prompts, about 5 KB each, and grew by ~47 MiB (the soak's frontend RSS growth, issue 24).
WORD_CACHE_ENTRIES = 1024


def bound_word_cache(backend: Any) -> None:
    """Caps a `tokenizers.Tokenizer`'s BPE word cache (no-op for other models, or libraries without it)."""
    model = getattr(backend, "model", None)
    resize = getattr(model, "_resize_cache", None)
    if resize is not None:
        resize(WORD_CACHE_ENTRIES)


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
        self._marked_backend = self._build_marked_backend()
        for backend in (getattr(hf, "backend_tokenizer", None), self._marked_backend):
            bound_word_cache(backend)

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load the tokenizer saved in a checkpoint directory (no network access)."""
        import transformers

        from llama_triton.text.sentencepiece_compat import align_converted_sentencepiece, ensure_sentencepiece_proto
        ensure_sentencepiece_proto()  # a checkpoint with only tokenizer.model
        path = Path(path)
        if not path.is_dir():  # else transformers takes it for a hub repo id
            raise FileNotFoundError(f"no checkpoint directory at {path}")
        # The class the checkpoint names, not AutoTokenizer: AutoTokenizer imports transformers'
        # model configuration code and with it torch, which a frontend worker must not load.
        config_path = path / "tokenizer_config.json"
        # utf-8 spelled out: Triton's Python stub runs under an ASCII locale.
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        name = config.get("tokenizer_class")
        loader = getattr(transformers, name, None) if isinstance(name, str) else None
        if loader is None or not hasattr(loader, "from_pretrained"):
            loader = transformers.AutoTokenizer
        hf = loader.from_pretrained(str(path), local_files_only=True)
        hf = align_converted_sentencepiece(hf, path)
        generation_path = path / "generation_config.json"
        generation = json.loads(generation_path.read_text()) if generation_path.is_file() else None
        return cls(hf, generation)

    # ------------------------------------------------------------------ encoding and templates

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special-token strings in it (e.g. from a chat template) parse as
        the special tokens; `add_special_tokens` adds the tokenizer's BOS."""
        return self.hf.encode(text, add_special_tokens=add_special_tokens)

    def encode_marked(self, text: str) -> list[int]:
        """`encode(text)`, except that LITERAL_MARKS characters are dropped after added tokens are
        matched: `<\ufdd0/\ufdd0s\ufdd0>` is the text `</s>`, not the token. Text without marks gets
        the ids `encode` gives (checked at load on a probe, in tests on many prompts)."""
        return self._marked_backend.encode(text, add_special_tokens=False).ids

    @cached_property
    def control_texts(self) -> tuple[str, ...]:
        """Spellings of the control tokens, longest first: every special token, plus the added tokens
        the chat template writes (DeepSeek's non-special `<think>`, `<｜User｜>`), or the tokenizer
        config's `chat_control_tokens` where it lists them. Other added tokens (a whitespace run, a
        domain word) are vocabulary and stay tokens in request text."""
        listed = getattr(self.hf, "chat_control_tokens", None)
        template = self.chat_template or ""
        texts = set()
        for token in self.hf.added_tokens_decoder.values():
            content = token.content
            in_template = content in listed if listed is not None else (content in template and not content.isspace())
            if content and (token.special or in_template):
                texts.add(content)
        return tuple(sorted(texts, key=lambda t: (-len(t), t)))

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

    def _build_marked_backend(self) -> Any:
        """The HF backend's pipeline with a normalizer in front that drops LITERAL_MARKS.

        Added tokens are matched on the raw text (normalized=False), i.e. before the marks are
        dropped; Llama vocabularies declare them so anyway, and the check below proves the ids
        unchanged. Fails at load, not on a request, when the rebuilt pipeline differs.
        """
        from tokenizers import normalizers

        original = self.hf.backend_tokenizer
        added = sorted(self.hf.added_tokens_decoder.items())
        backend = self._backend_over_shared_model(original, added)
        if any(backend.token_to_id(t.content) != i for i, t in added):
            backend = self._backend_copy(original)
        drop = [normalizers.Replace(mark, "") for mark in LITERAL_MARKS]
        backend.normalizer = normalizers.Sequence(drop + ([original.normalizer] if original.normalizer else []))
        probe = _PROBE_TEXT + " ".join(t.content for _, t in added) + " " + _PROBE_TEXT
        if backend.encode(probe, add_special_tokens=False).ids != self.encode(probe):
            raise ValueError("this tokenizer's pipeline cannot be rebuilt for marked text: ids differ")
        for text in self.control_texts:
            spelled = LITERAL_MARKS[0].join(text)
            if self.hf.convert_tokens_to_ids(text) in backend.encode(spelled, add_special_tokens=False).ids:
                raise ValueError(f"{text!r} encodes as its own token even as plain text")
        return backend

    @staticmethod
    def _backend_over_shared_model(original: Any, added: list[tuple[int, Any]]) -> Any:
        """A new pipeline over the same model object (no copy of the vocabulary, ~0.1 s for 128k).
        Added tokens go in one at a time, in id order: one the model does not know gets the next
        free id, which is its own id when the added ids follow the model's vocabulary."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as Backend

        backend = Backend(original.model)
        backend.pre_tokenizer = original.pre_tokenizer
        for _, token in added:
            backend.add_tokens([AddedToken(token.content, single_word=token.single_word, lstrip=token.lstrip,
                                           rstrip=token.rstrip, normalized=False, special=token.special)])
        return backend

    @staticmethod
    def _backend_copy(original: Any) -> Any:
        """A full copy (seconds for a 128k vocabulary), for added ids the shared model cannot give."""
        from tokenizers import Tokenizer as Backend

        spec = json.loads(original.to_str())
        for token in spec.get("added_tokens", []):
            token["normalized"] = False
        spec["truncation"] = spec["padding"] = None
        return Backend.from_str(json.dumps(spec))

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
