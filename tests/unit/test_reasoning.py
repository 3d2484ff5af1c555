"""The deepseek_r1 reasoning parser at every split point, which models reason, and where reasoning starts."""
from __future__ import annotations

import itertools
import random

import pytest

from frontend.openai.parsers import DeepSeekR1ReasoningParser as ReasoningSplitter
from frontend.openai.parsers import reasoning_parser_for
from frontend.openai.reasoning import close_reasoning, prompt_opens_reasoning, thinking_disabled

# (text, starts inside, expected reasoning, expected answer)
CASES = [
    ("I think so.</think>\n\nThe answer is 4.", True, "I think so.", "The answer is 4."),
    ("a < b and c </ d </thin k</think>x</think>y", True, "a < b and c </ d </thin k", "x</think>y"),
    ("no end in sight <", True, "no end in sight <", ""),
    ("trailing partial </thi", True, "trailing partial </thi", ""),
    ("</think>", True, "", ""),
    ("</think>  \n ", True, "", ""),
    ("", True, "", ""),
    ("<think>\nhmm</think>\n\nok", False, "\nhmm", "ok"),
    ("  \n<think>x</think>y", False, "x", "y"),
    ("plain answer <think> not a block", False, "", "plain answer <think> not a block"),
    ("  plain with leading space", False, "", "  plain with leading space"),
    ("<thin", False, "", "<thin"),
    ("<b>bold</b>", False, "", "<b>bold</b>"),
    ("你好</think>世界 😀", True, "你好", "世界 😀"),
]


def run(chunks, inside):
    splitter = ReasoningSplitter(inside)
    reasoning, answer = [], []
    for chunk in chunks:
        r, a = splitter.feed(chunk)
        reasoning.append(r)
        answer.append(a)
    r, a = splitter.finish()
    reasoning.append(r)
    answer.append(a)
    return reasoning, answer, splitter


@pytest.mark.parametrize("text,inside,want_reasoning,want_answer", CASES)
def test_every_split_point_gives_the_same_parts(text, inside, want_reasoning, want_answer):
    splits = [[text]] + [[text[:i], text[i:]] for i in range(len(text) + 1)] + [list(text)]
    rng = random.Random(len(text))
    for _ in range(20):   # random three-way splits
        i, j = sorted(rng.randint(0, len(text)) for _ in range(2))
        splits.append([text[:i], text[i:j], text[j:]])
    for chunks in splits:
        reasoning, answer, _ = run(chunks, inside)
        assert "".join(reasoning) == want_reasoning, chunks
        assert "".join(answer) == want_answer, chunks


@pytest.mark.parametrize("text,inside", [(c[0], c[1]) for c in CASES])
def test_no_end_marker_leaks_into_reasoning_deltas(text, inside):
    """Not in one delta, and not spread over consecutive deltas either."""
    for i in range(len(text) + 1):
        for chunks in ([text[:i], text[i:]], list(text)):
            reasoning, _, _ = run(chunks, inside)
            assert all("</think>" not in piece for piece in reasoning)
            assert "</think>" not in "".join(reasoning)


def test_end_marker_split_over_chunks_is_held_back():
    splitter = ReasoningSplitter(True)
    assert splitter.feed("thinking </") == ("thinking ", "")
    assert splitter.feed("thi") == ("", "")
    assert splitter.feed("nk>\n") == ("", "")
    assert splitter.feed("\nanswer") == ("", "answer")
    assert splitter.finish() == ("", "")


def test_false_alarm_is_released():
    splitter = ReasoningSplitter(True)
    assert splitter.feed("a </th") == ("a ", "")
    assert splitter.feed("ing") == ("</thing", "")


def test_saw_reasoning():
    assert run(["plain"], False)[2].saw_reasoning is False
    assert run(["<think>x</think>y"], False)[2].saw_reasoning is True
    assert run(["x"], True)[2].saw_reasoning is True


def test_models(default_tokenizer, llama3_tokenizer, reasoning_tokenizer):
    assert reasoning_parser_for(reasoning_tokenizer.chat_template, reasoning_tokenizer.hf.get_vocab()) == "deepseek_r1"
    assert reasoning_parser_for(default_tokenizer.chat_template, default_tokenizer.hf.get_vocab()) is None
    assert reasoning_parser_for(llama3_tokenizer.chat_template, llama3_tokenizer.hf.get_vocab()) is None
    assert reasoning_parser_for(None, {"<think>": 1, "</think>": 2}) == "deepseek_r1"
    assert reasoning_parser_for("{{ '<think>' }}", {}) is None      # one marker is not enough


def test_where_reasoning_starts(reasoning_tokenizer):
    prompt = reasoning_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt.endswith("<think>\n")              # DeepSeek-R1-Distill opens the block itself
    assert prompt_opens_reasoning(prompt)
    closed = close_reasoning(prompt)
    assert not prompt_opens_reasoning(closed) and closed.endswith("</think>\n\n")
    assert not prompt_opens_reasoning("<think>old</think> user: hi")
    assert not prompt_opens_reasoning("no markers")
    assert not prompt_opens_reasoning("user: what does <think> mean?\nassistant:")
    assert thinking_disabled({"enable_thinking": False})
    assert not thinking_disabled({"enable_thinking": True}) and not thinking_disabled({})


@pytest.mark.parametrize("n", [1, 2, 3])
def test_random_chunkings(n):
    rng = random.Random(n)
    alphabet = ["<", "/", "t", "h", "i", "n", "k", ">", " ", "\n", "a", "</think>", "<think>"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        inside = rng.random() < 0.5
        whole = run([text], inside)
        cuts = sorted(rng.randint(0, len(text)) for _ in range(n))
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        parts = run(chunks, inside)
        assert "".join(parts[0]) == "".join(whole[0])
        assert "".join(parts[1]) == "".join(whole[1])
        assert "</think>" not in "".join(whole[0])
