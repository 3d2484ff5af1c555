"""One chat choice's output: its text split into reasoning, content and tool calls, the same for a
stream and a whole answer (the chat service and the Responses API both feed it)."""
from __future__ import annotations

from typing import Optional

from frontend.openai.parsers import ReasoningParser, ToolParser
from frontend.openai.tools import ToolPlan


class ChatOutput:
    """One chat choice's text -> reasoning, content and tool calls (the same for stream and non-stream).

    `feed`/`finish` return items `("reasoning_content", str)`, `("content", str)` and
    `("tool_calls", [delta])`; `deltas` turns them into SSE deltas, `collect` + `message` into the
    non-streamed message. Without tools and reasoning (`plain`) text passes straight through.
    """

    def __init__(self, plan: ToolPlan, splitter: Optional[ReasoningParser]):
        self.plan = plan
        self.splitter = splitter
        self.parser: Optional[ToolParser] = plan.new_parser() if plan.active else None
        self.plain = self.splitter is None and self.parser is None
        self._reasoning: list[str] = []
        self._content: list[str] = []

    def _answer(self, text: str) -> list:
        if not text:
            return []
        return self.parser.feed(text) if self.parser is not None else [("content", text)]

    def feed(self, text: str) -> list:
        if self.splitter is None:
            return self._answer(text)
        reasoning, answer = self.splitter.feed(text)
        items = [("reasoning_content", reasoning)] if reasoning else []
        return items + self._answer(answer)

    def finish(self) -> list:
        items = []
        if self.splitter is not None:
            reasoning, answer = self.splitter.finish()
            if reasoning:
                items.append(("reasoning_content", reasoning))
            items += self._answer(answer)
        if self.parser is not None:
            items += self.parser.finish()
        return items

    @staticmethod
    def deltas(items: list) -> list[dict]:
        out: list[dict] = []
        for kind, value in items:
            if kind != "tool_calls" and out and list(out[-1]) == [kind]:
                out[-1][kind] += value
            else:
                out.append({kind: value})
        return out

    def collect(self, items: list) -> None:
        for kind, value in items:
            if kind == "reasoning_content":
                self._reasoning.append(value)
            elif kind == "content":
                self._content.append(value)

    def message(self) -> dict:
        calls = self.parser.message_calls() if self.parser is not None else []
        content: Optional[str] = "".join(self._content)
        saw_reasoning = self.splitter is not None and self.splitter.saw_reasoning
        if not content and (calls or saw_reasoning):
            content = None
        msg: dict = {"role": "assistant", "content": content}
        if saw_reasoning:
            msg["reasoning_content"] = "".join(self._reasoning)
        if calls:
            msg["tool_calls"] = calls
        return msg

    def finish_reason(self, reason: Optional[str]) -> Optional[str]:
        produced = self.parser is not None and self.parser.produced_calls
        return self.plan.finish_reason(reason, produced)
