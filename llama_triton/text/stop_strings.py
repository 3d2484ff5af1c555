"""Stop strings matched on streamed text.

Token-level stop lists miss matches (the same text tokenizes differently in context) and a naive
text check leaks the first half of a stop string into the stream before the second half arrives.
`StopStringMatcher` sees the text as it is produced, holds back any tail that could still become
a stop string, and never emits a stop string or anything after it.
"""
from __future__ import annotations

from typing import Iterable


class StopStringMatcher:
    """Incremental matcher for a fixed set of stop strings.

    `feed(text)` returns `(safe_text, matched)`: `safe_text` can be sent to the client now. The
    match is the stop string that *completes* first in the text (the longest one when several
    complete at the same character), i.e. what a character-by-character check would find, so the
    result never depends on how the text was split into feeds. When it completes, `matched` is
    True, `safe_text` ends right before it, and `stop` names it; later feeds return ("", True).
    `flush()` returns the held-back tail when generation ends without a match.

    An empty stop list is a pass-through.
    """

    __slots__ = ("_stops", "_first_chars", "_max_prefix", "_held", "stop")

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops: tuple[str, ...] = tuple(dict.fromkeys(stops))
        if any(not s for s in self._stops):
            raise ValueError("stop strings must be non-empty")
        self._first_chars = frozenset(s[0] for s in self._stops)
        self._max_prefix = max((len(s) - 1 for s in self._stops), default=0)
        self._held = ""
        self.stop: str | None = None  # the stop string that matched

    @property
    def matched(self) -> bool:
        return self.stop is not None

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        if self.stop is not None:
            return "", True
        window = self._held + text
        # Any match lies inside `window`: the held tail is the longest suffix that could still
        # start one, so nothing emitted earlier can be part of a match. A stop string's first
        # occurrence is also its first to complete; pick the one completing first overall.
        best: tuple[int, int] | None = None  # (end, start)
        for stop in self._stops:
            at = window.find(stop)
            if at != -1 and (best is None or (at + len(stop), at) < best):
                best, self.stop = (at + len(stop), at), stop
        if best is not None:
            self._held = ""
            return window[: best[1]], True
        keep = self._partial_tail(window)
        self._held = window[len(window) - keep:] if keep else ""
        return window[: len(window) - keep], False

    def flush(self) -> str:
        """Generation ended without a match: release the held-back tail."""
        held, self._held = self._held, ""
        return held

    def _partial_tail(self, window: str) -> int:
        """Length of the longest suffix of `window` that is a proper prefix of a stop string."""
        # Scan candidate starts from the earliest (longest suffix) on; only a stop string's first
        # character can start one, which keeps this O(longest stop) per feed and no extra memory.
        for start in range(max(0, len(window) - self._max_prefix), len(window)):
            if window[start] in self._first_chars:
                tail = window[start:]
                if any(stop.startswith(tail) for stop in self._stops):
                    return len(window) - start
        return 0
