"""A registry of parser families: classes registered under their `name`, looked up by name.

The shape of vLLM's ToolParserManager / ReasoningParserManager (a name -> class map, a clear error
naming the known parsers for an unknown name, vllm/reasoning/abs_reasoning_parsers.py@0359f27),
without their class-level global dicts: each registry is an object with one owner
(frontend/openai/parsers/__init__.py builds the two at import), and a name is registered once.
"""
from __future__ import annotations

from typing import Generic, Iterator, TypeVar

P = TypeVar("P")


class UnknownParser(LookupError):
    """No family is registered under this name."""


class ParserRegistry(Generic[P]):
    def __init__(self, kind: str, base: type[P]):
        self.kind = kind              # "tool-call parser", "reasoning parser": for messages
        self._base = base
        self._families: dict[str, type[P]] = {}

    def register(self, family: type[P]) -> type[P]:
        """Adds a family under its `name` (usable as a class decorator)."""
        if not (isinstance(family, type) and issubclass(family, self._base)):
            raise TypeError(f"a {self.kind} must subclass {self._base.__name__}, not {family!r}")
        name = getattr(family, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{family.__name__} has no name to register it under")
        if name in self._families:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._families[name].__qualname__})")
        self._families[name] = family
        return family

    def lookup(self, name: str) -> type[P]:
        try:
            return self._families[name]
        except KeyError:
            raise UnknownParser(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._families)

    def __iter__(self) -> Iterator[type[P]]:
        return iter(self._families.values())
