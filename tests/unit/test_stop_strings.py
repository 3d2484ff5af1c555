"""StopStringMatcher: text-level stop strings that never leak into a stream."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_triton.text.stop_strings import StopStringMatcher


def run(stops: list[str], chunks: list[str]) -> tuple[list[str], bool, str | None]:
    """Feed chunks until a match; return what was emitted per feed (+ the flush) and the result."""
    matcher = StopStringMatcher(stops)
    emitted: list[str] = []
    for chunk in chunks:
        text, matched = matcher.feed(chunk)
        emitted.append(text)
        if matched:
            return emitted, True, matcher.stop
    emitted.append(matcher.flush())
    return emitted, False, None


def reference(stops: list[str], text: str) -> str:
    """Character-by-character: stop at the first stop string to complete (longest on a tie)."""
    for end in range(1, len(text) + 1):
        for stop in sorted(stops, key=len, reverse=True):
            if text[:end].endswith(stop):
                return text[: end - len(stop)]
    return text


def test_no_stops_is_pass_through() -> None:
    matcher = StopStringMatcher([])
    assert matcher.feed("anything, even </s>") == ("anything, even </s>", False)
    assert matcher.flush() == ""
    assert not matcher.matched


def test_match_inside_one_chunk() -> None:
    assert run(["STOP"], ["abc STOP def"]) == (["abc "], True, "STOP")


def test_match_across_chunks_never_leaks_a_partial_stop() -> None:
    emitted, matched, stop = run(["</answer>"], ["The answer is 4.<", "/ans", "wer> ignored"])
    assert emitted == ["The answer is 4.", "", ""]
    assert (matched, stop) == (True, "</answer>")


def test_held_back_prefix_is_released_when_it_does_not_complete() -> None:
    matcher = StopStringMatcher(["###"])
    assert matcher.feed("a #") == ("a ", False)
    assert matcher.feed("#") == ("", False)
    assert matcher.feed("x") == ("##x", False)
    assert matcher.feed("##") == ("", False)
    assert matcher.flush() == "##"
    assert not matcher.matched


def test_stop_at_the_very_start() -> None:
    assert run(["Human:"], ["Hum", "an: hi"]) == (["", ""], True, "Human:")


def test_feeding_after_a_match_returns_nothing() -> None:
    matcher = StopStringMatcher(["x"])
    assert matcher.feed("ax") == ("a", True)
    assert matcher.feed("more") == ("", True)
    assert matcher.flush() == ""


def test_overlapping_self_prefix() -> None:
    # "aab" inside "aaab": the held tail must be the *longest* candidate suffix.
    emitted, matched, _ = run(["aab"], ["a", "a", "a", "b", "c"])
    assert "".join(emitted) == "a" and matched


def test_first_completed_stop_wins_regardless_of_chunking() -> None:
    stops = ["abcd", "c"]
    # "c" completes before "abcd" could, whether "abcd" arrives in one piece or not.
    assert run(stops, ["abcd"])[0] == ["ab"]
    assert "".join(run(stops, list("abcd"))[0]) == "ab"


def test_longest_stop_wins_on_a_tie_of_completion() -> None:
    assert run(["b", "ab"], ["xab"]) == (["x"], True, "ab")


def test_unicode_stop_strings() -> None:
    assert "".join(run(["。\n"], ["你好", "。", "\n再见"])[0]) == "你好"


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError):
        StopStringMatcher(["ok", ""])


@settings(max_examples=300, deadline=None)
@given(
    stops=st.lists(st.text(alphabet="ab</", min_size=1, max_size=4), min_size=1, max_size=3),
    text=st.text(alphabet="ab</x", max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=30), max_size=8),
)
def test_any_chunking_matches_the_character_by_character_reference(
    stops: list[str], text: str, cuts: list[int]
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    chunks = [text[a:b] for a, b in zip(bounds, bounds[1:])]
    emitted, matched, stop = run(stops, chunks)
    expected = reference(stops, text)
    assert "".join(emitted) == expected
    assert matched == any(s in text for s in stops)
    if matched:
        assert stop is not None and text.startswith(expected + stop)
