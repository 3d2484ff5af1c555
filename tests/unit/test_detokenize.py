"""Incremental detokenization equals whole-sequence decoding, for every way of chunking a stream.

Both real vocabularies: Llama-2's SentencePiece (byte fallback, dummy-prefix space) and Llama-3's
byte-level BPE. On valid UTF-8 the text also equals HF's `decode(ids, skip_special_tokens=True)`;
on invalid UTF-8 it follows Python's `bytes.decode("utf-8", "replace")` (see detokenize.py).
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_triton.text.detokenize import IncrementalDetokenizer, decode
from llama_triton.text.tokenization import Tokenizer

SPM_BYTE = 3  # Llama-2: <0x00> is id 3, so byte b is id 3 + b


def python_reference(tok: Tokenizer, ids: list[int]) -> str:
    text = b"".join(tok.token_bytes[i] for i in ids).decode("utf-8", errors="replace")
    return text[1:] if tok.is_sentencepiece and text.startswith(" ") else text


def is_utf8(tok: Tokenizer, ids: list[int]) -> bool:
    try:
        b"".join(tok.token_bytes[i] for i in ids).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def stream(tok: Tokenizer, chunks: list[list[int]]) -> str:
    detok = IncrementalDetokenizer(tok)
    return "".join(detok.add(chunk) for chunk in chunks) + detok.finish()


def assert_every_split_matches(tok: Tokenizer, ids: list[int]) -> str:
    whole = decode(tok, ids)
    assert whole == python_reference(tok, ids)
    assert stream(tok, [[i] for i in ids]) == whole
    for cut in range(len(ids) + 1):
        assert stream(tok, [ids[:cut], ids[cut:]]) == whole, f"split at {cut}"
    if len(ids) <= 16:
        for a in range(len(ids) + 1):
            for b in range(a, len(ids) + 1):
                assert stream(tok, [ids[:a], ids[a:b], ids[b:]]) == whole, f"split at {a}, {b}"
    return whole


# ----------------------------------------------------------------------------- Llama-2 (SentencePiece)

SPM_TEXTS = [
    "Hello world, this is a test.",
    "  two leading spaces",
    "\n\nnewlines first",
    "你好，世界 naïve café 日本語",
    "🦙 emoji 😶‍🌫️ ✅",  # emoji are byte-fallback runs of 4 tokens
    "Äpfel ½ tab\there",
]


@pytest.mark.parametrize("text", SPM_TEXTS)
def test_spm_round_trip_of_encoded_text(default_tokenizer: Tokenizer, text: str) -> None:
    ids = default_tokenizer.encode(text)
    assert assert_every_split_matches(default_tokenizer, ids) == text
    assert decode(default_tokenizer, ids) == default_tokenizer.hf.decode(ids, skip_special_tokens=True)


SPM_VALID_IDS = {
    "lone space piece then word": [29871, 15043],  # "▁" "▁Hello" -> " Hello"
    "byte-fallback space first": [SPM_BYTE + 0x20, 15043],  # <0x20> is stripped like "▁"
    "bos then space piece": [1, 29871, 15043],
    "specials inside": [1, 15043, 2, 1, 3186, 2],
    "only specials": [1, 2, 0],
    "empty": [],
    "raw bytes of 你 then a word": [SPM_BYTE + 0xE4, SPM_BYTE + 0xBD, SPM_BYTE + 0xA0, 3186],
    "double space piece": [259, 29871],
}


@pytest.mark.parametrize("ids", SPM_VALID_IDS.values(), ids=SPM_VALID_IDS.keys())
def test_spm_chosen_ids_match_hf(default_tokenizer: Tokenizer, ids: list[int]) -> None:
    whole = assert_every_split_matches(default_tokenizer, ids)
    assert whole == default_tokenizer.hf.decode(ids, skip_special_tokens=True)


SPM_INVALID_IDS = {
    "truncated 3-byte char at the end": ([SPM_BYTE + 0xE4, SPM_BYTE + 0xBD], "\ufffd"),
    "truncated char before a word": ([SPM_BYTE + 0xE4, SPM_BYTE + 0xBD, 15043], "\ufffd Hello"),
    "invalid start bytes": ([SPM_BYTE + 0xFF, SPM_BYTE + 0x80], "\ufffd\ufffd"),
    "emoji then a dangling lead byte": (
        [SPM_BYTE + 0xF0, SPM_BYTE + 0x9F, SPM_BYTE + 0xA6, SPM_BYTE + 0x99, SPM_BYTE + 0xF0], "🦙\ufffd"),
    "encoded surrogate": ([SPM_BYTE + 0xED, SPM_BYTE + 0xA0, SPM_BYTE + 0x80], "\ufffd\ufffd\ufffd"),
    "overlong slash": ([SPM_BYTE + 0xC0, SPM_BYTE + 0xAF], "\ufffd\ufffd"),
    # the first character is U+FFFD, so there is no leading space to drop
    "invalid byte then space piece": ([SPM_BYTE + 0xFF, 29871, 15043], "\ufffd  Hello"),
}


@pytest.mark.parametrize("ids,expected", SPM_INVALID_IDS.values(), ids=SPM_INVALID_IDS.keys())
def test_spm_invalid_utf8_follows_python_replace(default_tokenizer: Tokenizer, ids: list[int], expected: str) -> None:
    assert assert_every_split_matches(default_tokenizer, ids) == expected


def test_the_one_deliberate_difference_from_hf(default_tokenizer: Tokenizer) -> None:
    # HF's ByteFallback decoder turns every byte of a failing byte-token run into U+FFFD, even a
    # valid character inside it; a stream cannot know a run has failed until it ends. We follow
    # Python's errors="replace" instead (one U+FFFD per maximal invalid subsequence).
    ids = [SPM_BYTE + 0xE4, SPM_BYTE + 0xBD, SPM_BYTE + 0xA0, SPM_BYTE + 0xFF]  # "你" + 0xFF
    assert decode(default_tokenizer, ids) == "你\ufffd"
    assert default_tokenizer.hf.decode(ids) == "\ufffd" * 4


def test_held_back_bytes_and_leading_space(default_tokenizer: Tokenizer) -> None:
    detok = IncrementalDetokenizer(default_tokenizer)
    assert detok.add([15043]) == "Hello"  # "▁Hello": the sequence's first space is dropped
    assert detok.add([3186]) == " world"  # later spaces are kept
    assert detok.add([SPM_BYTE + 0xF0, SPM_BYTE + 0x9F]) == ""  # half an emoji is held back
    assert detok.add([SPM_BYTE + 0xA6, SPM_BYTE + 0x99]) == "🦙"
    assert detok.add([SPM_BYTE + 0xE4]) == ""
    assert detok.finish() == "\ufffd"  # an incomplete character at the end


def test_plain_byte_table_and_explicit_strip() -> None:
    table = [b"", b" a", b"\xc3", b"\xa9"]
    assert decode(table, [1, 2, 3]) == " a\u00e9"  # no strip by default for a bare table
    assert decode(table, [1, 2, 3], strip_leading_space=True) == "a\u00e9"
    detok = IncrementalDetokenizer(table, strip_leading_space=True)
    assert [detok.add([i]) for i in (0, 1, 2, 3, 99)] == ["", "a", "", "\u00e9", ""]  # 99: unknown id


# ----------------------------------------------------------------------------- Llama-3 (byte-level BPE)

BPE_TEXTS = [
    "Hello world, this is a test.",
    " leading space is kept",
    "你好，世界 naïve café 日本語",
    "🦙 emoji 😶‍🌫️ ✅",  # byte-level tokens split these characters between tokens
    "    indented\n\tcode()",
]


@pytest.mark.parametrize("text", BPE_TEXTS)
def test_bpe_round_trip_of_encoded_text(llama3_tokenizer: Tokenizer, text: str) -> None:
    ids = llama3_tokenizer.encode(text)
    assert assert_every_split_matches(llama3_tokenizer, ids) == text
    assert decode(llama3_tokenizer, ids) == llama3_tokenizer.hf.decode(ids, skip_special_tokens=True)


def test_bpe_specials_and_invalid_bytes(llama3_tokenizer: Tokenizer) -> None:
    tok = llama3_tokenizer
    assert not tok.is_sentencepiece
    byte = {b: tok.hf.convert_tokens_to_ids(c) for c, b in (("ä", 0xE4), ("ÿ", 0xFF), ("½", 0xBD))}
    bos, eot = tok.hf.convert_tokens_to_ids(["<|begin_of_text|>", "<|eot_id|>"])
    hi = tok.encode(" Hi")
    assert assert_every_split_matches(tok, [bos, *hi, eot]) == " Hi"
    assert assert_every_split_matches(tok, [byte[0xE4], byte[0xBD], *hi]) == "\ufffd Hi"
    assert assert_every_split_matches(tok, [byte[0xFF], eot, byte[0xE4]]) == "\ufffd\ufffd"


# ----------------------------------------------------------------------------- the whole table


@pytest.fixture(scope="module", params=["default", "llama3", "reasoning"])
def any_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    return request.getfixturevalue(f"{request.param}_tokenizer")


def test_every_token_alone_matches_hf(any_tokenizer: Tokenizer) -> None:
    tok = any_tokenizer
    ids = [i for i in range(tok.vocab_size) if is_utf8(tok, [i])]
    assert len(ids) > tok.vocab_size * 0.9
    ours = [decode(tok, [i]) for i in ids]
    theirs = tok.hf.batch_decode([[i] for i in ids], skip_special_tokens=True)
    mismatches = [(i, o, t) for i, o, t in zip(ids, ours, theirs) if o != t]
    assert mismatches == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_streams_from_the_whole_vocab(any_tokenizer: Tokenizer, data: st.DataObject) -> None:
    tok = any_tokenizer
    single_bytes = [i for i, b in enumerate(tok.token_bytes) if len(b) == 1]
    some_id = st.one_of(
        st.integers(min_value=0, max_value=tok.vocab_size - 1),
        st.sampled_from(single_bytes),  # raw bytes make split and invalid UTF-8 likely
        st.sampled_from(sorted(tok.special_ids)),
    )
    ids = data.draw(st.lists(some_id, max_size=24), label="ids")
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(ids)), max_size=6), label="cuts")
    bounds = sorted({0, len(ids), *cuts})
    chunks = [ids[a:b] for a, b in zip(bounds, bounds[1:])]

    whole = decode(tok, ids)
    assert stream(tok, chunks) == whole
    assert whole == python_reference(tok, ids)
    if is_utf8(tok, ids):
        assert whole == tok.hf.decode(ids, skip_special_tokens=True)
