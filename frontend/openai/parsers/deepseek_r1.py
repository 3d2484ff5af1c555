"""DeepSeek-R1-style reasoning: the `<think>...</think>` part of a reply, kept apart from the answer.

Which models. A model writes this family's reasoning when its chat template or its vocabulary has
both `<think>` and `</think>` (DeepSeek-R1 distills, QwQ, Qwen3).

Splitting. Everything before the first `</think>` is reasoning, everything after it is the answer
(`content`) with its leading whitespace dropped (the `\\n\\n` these models put after `</think>`).
When the prompt did not open the block (`inside` false), a reply that starts with `<think>` (after
optional whitespace) opens it; a reply that does not is all answer. The markers never appear in
either part. A `</think>` spelled across chunks (or across several tokens, as in a vocabulary
without a `</think>` token) is held back while it could still be one, so it never leaks into
`reasoning_content`; the same holds for the opening `<think>`. At the end an unfinished marker is
plain text of the part it is in.

vLLM's `deepseek_r1` parser (vllm/reasoning/deepseek_r1_reasoning_parser.py@0172203, the version
read) splits on the same markers but finds them by their token ids in each delta; this one reads
the detokenized text, which also covers vocabularies that spell a marker with several tokens and a
marker split over two deltas.
"""
from __future__ import annotations

from typing import Optional

from frontend.openai.parsers.base import ReasoningParser
from llama_triton.text.guide_forms import THINK_END, THINK_START   # the markers the guides also wrap


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest proper suffix of `text` that is a prefix of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class DeepSeekR1ReasoningParser(ReasoningParser):
    name = "deepseek_r1"

    # states
    _START = 0      # not inside yet; the reply may still open with <think> (after whitespace)
    _REASON = 1     # inside the reasoning part
    _LSTRIP = 2     # just after </think>: dropping the answer's leading whitespace
    _ANSWER = 3     # the answer: passed through

    def __init__(self, inside: bool):
        super().__init__(inside)
        self._state = self._REASON if inside else self._START
        self._held = ""

    @classmethod
    def fits(cls, chat_template: Optional[str], vocab: Optional[dict]) -> bool:
        if chat_template and THINK_START in chat_template and THINK_END in chat_template:
            return True
        return bool(vocab) and THINK_START in vocab and THINK_END in vocab

    def feed(self, text: str) -> tuple[str, str]:
        reasoning: list[str] = []
        answer: list[str] = []
        text = self._held + text
        self._held = ""
        while text:
            if self._state == self._ANSWER:
                answer.append(text)
                break
            if self._state == self._LSTRIP:
                stripped = text.lstrip()
                if stripped:
                    self._state = self._ANSWER
                text = stripped
                continue
            if self._state == self._START:
                stripped = text.lstrip()
                if stripped.startswith(THINK_START):
                    self._state = self._REASON
                    self.saw_reasoning = True
                    text = stripped[len(THINK_START):]
                    continue
                if not stripped or THINK_START.startswith(stripped):
                    self._held = text   # whitespace, or a possible start of <think>
                    break
                self._state = self._ANSWER
                continue
            # _REASON
            end = text.find(THINK_END)
            if end >= 0:
                reasoning.append(text[:end])
                text = text[end + len(THINK_END):]
                self._state = self._LSTRIP
                continue
            keep = _partial_suffix(text, THINK_END)
            if keep:
                self._held = text[-keep:]
                text = text[:-keep]
            reasoning.append(text)
            break
        return "".join(reasoning), "".join(answer)

    def finish(self) -> tuple[str, str]:
        """Flushes held-back text: an unfinished marker is plain text of the part it is in."""
        held, self._held = self._held, ""
        if not held:
            return "", ""
        if self._state == self._REASON:
            return held, ""
        if self._state == self._START:
            return "", held
        return "", ""   # _LSTRIP holds nothing; _ANSWER holds nothing
