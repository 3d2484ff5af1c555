"""llama.cpp's own tokenizer test vectors, reproduced by our Tokenizer.

`ggml-vocab-<name>.gguf.inp` holds the texts, separated by lines `__ggml_vocab_test__`;
`.out` holds one line of space-separated ids per text, without BOS (llama.cpp's test-tokenizer-0
encodes with add_special=false; SentencePiece still adds its dummy-prefix space). The vectors come
from the same sdist as the vocabularies (see build/make_default_model.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from llama_triton.text.detokenize import decode
from llama_triton.text.tokenization import Tokenizer

SEPARATOR = "\n__ggml_vocab_test__\n"

# Vectors we do not reproduce, text -> reason. Empty: all 46 of each vocabulary match exactly.
# (With transformers' stock GGUF conversion, 15 Llama-2 vectors with leading spaces and one
# Llama-3 vector, "Cửa Việt", would fail; the build script fixes both, see its *_hub_layout.)
NOT_REPRODUCED: dict[str, dict[str, str]] = {"llama-spm": {}, "llama-bpe": {}}


def read_vectors(vocab_dir: Path, vocab: str) -> list[tuple[str, list[int]]]:
    """Parse the pair of files exactly as llama.cpp's tests/test-tokenizer-0.cpp does."""
    base = vocab_dir / f"ggml-vocab-{vocab}.gguf"
    raw = base.with_name(base.name + ".inp").read_bytes().decode("utf-8")  # no newline translation
    texts: list[str] = []
    pos = 0
    while pos < len(raw):
        end = raw.find(SEPARATOR, pos)
        if end == -1:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:end])
        pos = end + len(SEPARATOR)
    lines = base.with_name(base.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines), "input and output files have different numbers of tests"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines)]


@pytest.fixture(scope="module", params=["llama-spm", "llama-bpe"])
def vocab_case(request: pytest.FixtureRequest, llama_cpp_vocab_dir: Path) -> tuple[str, Tokenizer, list]:
    fixture = "default_tokenizer" if request.param == "llama-spm" else "llama3_tokenizer"
    return request.param, request.getfixturevalue(fixture), read_vectors(llama_cpp_vocab_dir, request.param)


def test_vector_files_parse(vocab_case: tuple[str, Tokenizer, list]) -> None:
    _, _, vectors = vocab_case
    assert len(vectors) == 46
    texts = [text for text, _ in vectors]
    assert "" in texts and "Hello world" in texts and " this is 🦙.cpp" in texts


def test_vectors_tokenize_exactly(vocab_case: tuple[str, Tokenizer, list]) -> None:
    vocab, tok, vectors = vocab_case
    failures = {text: (tok.encode(text), ids) for text, ids in vectors if tok.encode(text) != ids}
    assert set(failures) == set(NOT_REPRODUCED[vocab]), failures


def test_vectors_decode_back_to_their_text(vocab_case: tuple[str, Tokenizer, list]) -> None:
    # Both vocabularies are lossless on these texts: decoding llama.cpp's ids gives the text back
    # (for SentencePiece, dropping the dummy-prefix space is what makes this exact).
    _, tok, vectors = vocab_case
    assert [decode(tok, ids) for _, ids in vectors] == [text for text, _ in vectors]


def test_hello_world_with_bos(default_tokenizer: Tokenizer, llama3_tokenizer: Tokenizer) -> None:
    assert default_tokenizer.encode("Hello world", add_special_tokens=True) == [1, 15043, 3186]
    assert llama3_tokenizer.encode("Hello world", add_special_tokens=True) == [128000, 9906, 1917]
