"""Reasoning output: the `<think>...</think>` part of a reasoning model's reply, kept apart from the answer.

Which models. A model is a *reasoning model* when its chat template or its vocabulary has both
`<think>` and `</think>` (DeepSeek-R1 distills, QwQ, Qwen3). For every other model the request
fields `reasoning_effort`, `reasoning` and `chat_template_kwargs.enable_thinking` are accepted
no-ops: they reach the chat template as the `reasoning_effort` / `enable_thinking` kwargs (a
template that does not read them ignores them), the reply has no `reasoning_content`, and the
text is split no further.

Where the reasoning starts. Some templates open the reasoning block in the generation prompt
(DeepSeek-R1-Distill ends it with `<｜Assistant｜><think>\\n`): the output then starts *inside*
the reasoning part (`prompt_opens_reasoning`: the prompt ends with `<think>` and whitespace).
Otherwise a reply that starts with `<think>` (after optional whitespace) opens it; a reply that
does not is all answer.

The reply has `message.reasoning_content` (streamed: `delta.reasoning_content`) whenever a
reasoning part was opened, "" when it was empty; `content` is null when the reply ended inside
the reasoning (finish_reason "length"). `usage.completion_tokens_details.reasoning_tokens` is not
reported.

Thinking turned off. When the request turns thinking off (`reasoning_effort: "none"`,
`reasoning.enabled: false`, or `chat_template_kwargs.enable_thinking: false`) and the template
still opens a reasoning block (it ignores `enable_thinking`, as DeepSeek-R1-Distill's does), the
frontend closes the block in the prompt (`</think>\\n\\n`, the empty reasoning these models are
trained on), so the reply is all answer. Templates that honour `enable_thinking` (Qwen3) close it
themselves and the frontend then has nothing to do.

Splitting. `ReasoningSplitter` turns the detokenized text, chunk by chunk, into reasoning and
answer text: everything before the first `</think>` is reasoning, everything after it is the
answer (`content`) with its leading whitespace dropped (the `\\n\\n` these models put after
`</think>`). The markers never appear in either field. A `</think>` spelled across chunks (or
across several tokens) is held back while it could still be one, so it never leaks into
`reasoning_content`; the same holds for the opening `<think>`. For any split of a text into
chunks the concatenated outputs are the same (tested at every split point), so the streamed
`delta.reasoning_content` / `delta.content` concatenate to the non-streamed
`message.reasoning_content` / `message.content`.

Structured outputs on reasoning models. A response_format or tool grammar constrains the
answer, not the reasoning: the guide is prefixed with "any text without `</think>`, then
`</think>`" (plus at most two whitespace characters; llama_triton/text/guide_forms.py), so the
model reasons freely and the constrained part starts after the reasoning.
"""
from __future__ import annotations

from typing import Optional

THINK_START = "<think>"
THINK_END = "</think>"
CLOSED_REASONING = THINK_END + "\n\n"


def is_reasoning_model(chat_template: Optional[str], vocab: Optional[dict] = None) -> bool:
    """Does the template or the vocabulary know both reasoning markers?"""
    if chat_template and THINK_START in chat_template and THINK_END in chat_template:
        return True
    return bool(vocab) and THINK_START in vocab and THINK_END in vocab


def prompt_opens_reasoning(prompt: str) -> bool:
    """Does the generation prompt open a `<think>` block (it ends with `<think>` and whitespace), so
    that the model's reply starts inside it? A `<think>` earlier in the prompt (quoted by a user,
    say) does not count."""
    return prompt.rstrip().endswith(THINK_START)


def thinking_disabled(template_kwargs: dict) -> bool:
    return template_kwargs.get("enable_thinking") is False


def close_reasoning(prompt: str) -> str:
    """The prompt with its open reasoning block closed (the model answers directly)."""
    return prompt + CLOSED_REASONING


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest proper suffix of `text` that is a prefix of `marker`."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Splits one choice's output text into (reasoning, answer) incrementally.

    `inside`: the prompt opened the reasoning block. Otherwise a leading `<think>` opens it.
    `feed(text)` returns the (reasoning, answer) text that is certain so far; `finish()` the rest.
    """

    # states
    _START = 0      # not inside yet; the reply may still open with <think> (after whitespace)
    _REASON = 1     # inside the reasoning part
    _LSTRIP = 2     # just after </think>: dropping the answer's leading whitespace
    _ANSWER = 3     # the answer: passed through

    def __init__(self, inside: bool):
        self._state = self._REASON if inside else self._START
        self._held = ""
        self.saw_reasoning = inside

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
