"""The two parser interfaces. A parser reads one choice's generated text, chunk by chunk as the
detokenizer releases it, and says what each chunk is for the client: answer text, reasoning text
or tool-call deltas. One instance per choice; `feed` as text arrives, `finish` once at the end.

The contract every family keeps (tests/unit/test_parsers.py checks it on real token streams): for
any split of a text into chunks, the fed and finished outputs concatenate to the same result as
feeding the whole text at once, so streamed deltas add up to the non-streamed message byte for
byte.
"""
from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

# What a tool-call parser emits: ("content", text) or ("tool_calls", [OpenAI tool-call delta]).
Item = tuple[str, Any]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ParsedCall:
    index: int
    id: str
    name: Optional[str] = None
    fragments: list[str] = field(default_factory=list)
    announced: bool = False

    @property
    def arguments(self) -> str:
        return "".join(self.fragments)

    def as_message(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


class ToolParser(ABC):
    """One choice's answer text -> content text and OpenAI tool-call deltas.

    The first delta of each call carries `index`, `id`, `type: "function"` and `function: {name,
    arguments: ""}`; later deltas carry only `{index, function: {arguments: <fragment>}}`.
    `arguments_of`: the whole text is the arguments object of that function (a named
    tool_choice on a family whose prompt asks for the arguments alone, see
    `named_call_is_arguments`).
    """

    name: ClassVar[str]                      # the registry key
    key: ClassVar[str]                       # the call object's member that holds the arguments
    named_call_is_arguments: ClassVar[bool]  # a named tool_choice produces the arguments object only

    def __init__(self, *, arguments_of: Optional[str] = None, id_factory: Callable[[], str] = new_call_id):
        if arguments_of is not None and not self.named_call_is_arguments:
            raise ValueError(f"the {self.name} tool-call parser reads whole calls, not an arguments object")
        self.arguments_of = arguments_of
        self.new_id = id_factory

    @abstractmethod
    def feed(self, text: str) -> list[Item]:
        """The items `text` makes certain."""

    @abstractmethod
    def finish(self) -> list[Item]:
        """The rest, at the end of the choice (also when it was cut by length)."""

    @property
    @abstractmethod
    def produced_calls(self) -> bool:
        """Whether at least one call got as far as its name (finish_reason `tool_calls`)."""

    @abstractmethod
    def message_calls(self) -> list[dict]:
        """The non-streamed message's `tool_calls`, equal to what the deltas add up to."""


class ReasoningParser(ABC):
    """One choice's text -> (reasoning, answer) text.

    `inside`: the prompt opened the reasoning block, so the reply starts in it. `saw_reasoning`:
    a reasoning part was opened (the reply then has `reasoning_content`, "" when it is empty).
    """

    name: ClassVar[str]

    def __init__(self, inside: bool):
        self.saw_reasoning = inside

    @classmethod
    @abstractmethod
    def fits(cls, chat_template: Optional[str], vocab: Optional[dict]) -> bool:
        """Whether a model with this template and vocabulary writes this family's reasoning."""

    @abstractmethod
    def feed(self, text: str) -> tuple[str, str]:
        """The (reasoning, answer) text that is certain so far."""

    @abstractmethod
    def finish(self) -> tuple[str, str]:
        """The held-back rest."""
