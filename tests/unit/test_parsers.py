"""Each parser family on real token streams, and the registry that picks it.

A reply is encoded with the served model's own tokenizer and released by the project's incremental
detokenizer one token at a time, as frontend/openai/generation.py releases a decoder's tokens; the parser
fed those pieces (and any grouping of them, as a merged decoder response brings several, and any
split of the text) must give exactly its whole-text parse, and that must be the expected calls or
reasoning.
"""
from __future__ import annotations

import itertools
import json
import random

import pytest

from frontend.openai.chat_prompt import template_renders_tools
from frontend.openai.parsers import (REASONING_PARSERS, TOOL_PARSERS, DeepSeekR1ReasoningParser, JsonToolsParser,
                                     Llama3JsonParser, ParserRegistry, ReasoningParser, ToolParser, UnknownParser,
                                     reasoning_parser_for, tool_parser_for)
from frontend.openai.request_base import parse_request
from frontend.openai.request_models import ChatCompletionRequest
from frontend.openai.tools import ToolPlan
from llama_triton.text.detokenize import IncrementalDetokenizer
from tests.tool_deltas import reassemble


@pytest.fixture(params=["default_tokenizer", "llama3_tokenizer", "reasoning_tokenizer"])
def tokenizer(request):
    """Llama-2's SentencePiece vocabulary, Llama-3's byte-level BPE, DeepSeek-R1-Distill's (which
    has `<think>` and `</think>` as tokens of their own)."""
    return request.getfixturevalue(request.param)


def token_pieces(tokenizer, text: str) -> list[str]:
    """The text as the detokenizer releases it, one token at a time (a piece may be "" while a
    character's UTF-8 bytes are incomplete), then its final flush."""
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add([i]) for i in tokenizer.encode(text)] + [detok.finish()]
    assert "".join(pieces) == text          # the stream spells the reply exactly
    return pieces


def groupings(pieces: list[str], seed: str) -> list[list[str]]:
    """The token pieces one by one, and grouped at random as merged decoder responses bring them."""
    rng = random.Random(seed)
    out = [pieces]
    for _ in range(10):
        cuts = sorted(rng.sample(range(1, len(pieces)), min(3, len(pieces) - 1))) if len(pieces) > 1 else []
        out.append(["".join(pieces[a:b]) for a, b in itertools.pairwise([0, *cuts, len(pieces)])])
    return out


def text_splits(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


# ---- tool-call families ----------------------------------------------------------------------

def run_tools(family: type[ToolParser], chunks: list[str], arguments_of=None):
    counter = itertools.count()
    parser = family(arguments_of=arguments_of, id_factory=lambda: f"call_{next(counter)}")
    items = [item for chunk in chunks for item in parser.feed(chunk)] + parser.finish()
    return calls_of(items, parser)


def calls_of(items, parser) -> tuple[str, list[tuple[str, str]]]:
    """(content, [(name, arguments)]) as a client reassembles the deltas (tests/tool_deltas.py)."""
    content, message = reassemble(items, parser)
    assert parser.produced_calls == bool(message)
    return content, [(c["name"], c["arguments"]) for c in message]


def call_text(key: str, *calls: tuple[str, str]) -> str:
    objects = [f'{{"name": {json.dumps(name)}, "{key}": {args}}}' for name, args in calls]
    return objects[0] if len(objects) == 1 else "[" + ", ".join(objects) + "]"


WEATHER = ("get_weather", '{"city": "Paris", "unit": "c"}')
TIME = ("get_time", '{"tz": -3}')
UNICODE = ("say", '{"text": "é 😀 你好 \\"quoted\\" } ]"}')
NESTED = ("plan", '{"steps": [1, {"x": [2, 3]}], "e": {}, "ok": true, "n": null}')

# (calls, expected (content, calls)); the text is written in each family's own key
CALL_CASES = [
    ([WEATHER], ("", [WEATHER])),
    ([WEATHER, TIME], ("", [WEATHER, TIME])),
    ([UNICODE], ("", [UNICODE])),
    ([NESTED, TIME], ("", [NESTED, TIME])),
]


@pytest.mark.parametrize("family", [JsonToolsParser, Llama3JsonParser])
@pytest.mark.parametrize("calls,want", CALL_CASES)
def test_calls_on_token_streams(tokenizer, family, calls, want):
    text = call_text(family.key, *calls)
    whole = run_tools(family, [text])
    assert whole == want
    for chunks in groupings(token_pieces(tokenizer, text), text):
        assert run_tools(family, chunks) == whole, chunks
    for chunks in text_splits(text):
        assert run_tools(family, chunks) == whole, chunks


@pytest.mark.parametrize("family", [JsonToolsParser, Llama3JsonParser])
def test_the_other_familys_key_is_not_the_arguments(family):
    other = Llama3JsonParser if family is JsonToolsParser else JsonToolsParser
    text = call_text(other.key, WEATHER)
    assert run_tools(family, [text]) == ("", [("get_weather", "")])


@pytest.mark.parametrize("family", [JsonToolsParser, Llama3JsonParser])
@pytest.mark.parametrize("text", ["The weather is {sunny} today.", "Plain [text] with \"quotes\" and é 😀",
                                  "  leading spaces, then words"])
def test_text_that_is_not_a_call_is_content(tokenizer, family, text):
    for chunks in [[text], *groupings(token_pieces(tokenizer, text), text), *text_splits(text)]:
        assert run_tools(family, chunks) == (text, []), chunks


@pytest.mark.parametrize("family", [JsonToolsParser, Llama3JsonParser])
def test_a_call_cut_by_length(tokenizer, family):
    """The decoder stopped at max_tokens: a call with its name keeps its partial arguments; one
    cut before its name was complete is no call, and its text comes back as content."""
    whole = call_text(family.key, WEATHER)
    cut_args = whole[:whole.index("Par") + 3]
    for chunks in [[cut_args], *groupings(token_pieces(tokenizer, cut_args), cut_args)]:
        assert run_tools(family, chunks) == ("", [("get_weather", '{"city": "Par')]), chunks
    cut_name = whole[:whole.index("get_wea") + 7]
    for chunks in [[cut_name], *groupings(token_pieces(tokenizer, cut_name), cut_name)]:
        assert run_tools(family, chunks) == (cut_name, []), chunks


def test_named_function_reads_the_arguments_object(tokenizer):
    text = '{"city": "Rome", "unit": "f"}'
    for chunks in [[text], *groupings(token_pieces(tokenizer, text), text), *text_splits(text)]:
        assert run_tools(JsonToolsParser, chunks, arguments_of="get_weather") == ("", [("get_weather", text)])
    # the call is there even when nothing was generated
    assert run_tools(JsonToolsParser, [], arguments_of="get_weather") == ("", [("get_weather", "")])


def test_llama3_json_has_no_arguments_only_mode():
    with pytest.raises(ValueError, match="llama3_json"):
        Llama3JsonParser(arguments_of="get_weather")


# ---- reasoning families ----------------------------------------------------------------------

def run_reasoning(chunks: list[str], inside: bool) -> tuple[list[str], list[str], ReasoningParser]:
    parser = DeepSeekR1ReasoningParser(inside)
    reasoning, answer = [], []
    for part in [parser.feed(c) for c in chunks] + [parser.finish()]:
        reasoning.append(part[0])
        answer.append(part[1])
    return reasoning, answer, parser


# (text, the prompt opened the block, reasoning, answer, saw reasoning)
REASONING_CASES = [
    ("I think so.</think>\n\nThe answer is 4.", True, "I think so.", "The answer is 4.", True),
    ("<think>\nhmm, 2+2</think>\n\nIt is 4.", False, "\nhmm, 2+2", "It is 4.", True),
    ("a </thi and </ more</think>ok", True, "a </thi and </ more", "ok", True),
    ("still thinking </thi", True, "still thinking </thi", "", True),          # cut by length
    ("你好 😀</think>世界", True, "你好 😀", "世界", True),
    ("Just an answer, <think> inside.", False, "", "Just an answer, <think> inside.", False),
    ("<thin", False, "", "<thin", False),
]


@pytest.mark.parametrize("text,inside,want_reasoning,want_answer,saw", REASONING_CASES)
def test_reasoning_on_token_streams(tokenizer, text, inside, want_reasoning, want_answer, saw):
    """On DeepSeek's vocabulary `</think>` is one token; on the others it is spelled by several, and
    a piece may end inside it: it is held back, never released as reasoning."""
    for chunks in [[text], *groupings(token_pieces(tokenizer, text), text), *text_splits(text)]:
        reasoning, answer, parser = run_reasoning(chunks, inside)
        assert ("".join(reasoning), "".join(answer), parser.saw_reasoning) == (want_reasoning, want_answer, saw)
        assert "</think>" not in "".join(reasoning)


def test_deepseek_spells_the_markers_as_single_tokens(reasoning_tokenizer, llama3_tokenizer):
    """The streams above cover both ways a marker reaches the parser."""
    assert len(reasoning_tokenizer.encode("</think>")) == 1 and len(reasoning_tokenizer.encode("<think>")) == 1
    assert len(llama3_tokenizer.encode("</think>")) > 1


# ---- the registries and the choice per model -------------------------------------------------

def test_registered_families():
    assert TOOL_PARSERS.names() == ["json_tools", "llama3_json"]
    assert REASONING_PARSERS.names() == ["deepseek_r1"]
    assert TOOL_PARSERS.lookup("llama3_json") is Llama3JsonParser
    assert REASONING_PARSERS.lookup("deepseek_r1") is DeepSeekR1ReasoningParser


def test_unknown_name_is_a_clear_error():
    with pytest.raises(UnknownParser, match=r"unknown tool-call parser 'hermes'; registered: json_tools, llama3_json"):
        TOOL_PARSERS.lookup("hermes")
    with pytest.raises(UnknownParser, match=r"unknown reasoning parser 'qwen3'; registered: deepseek_r1"):
        REASONING_PARSERS.lookup("qwen3")


def test_registering():
    registry: ParserRegistry[ToolParser] = ParserRegistry("tool-call parser", ToolParser)
    assert registry.register(JsonToolsParser) is JsonToolsParser and registry.names() == ["json_tools"]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(JsonToolsParser)
    with pytest.raises(TypeError, match="must subclass ToolParser"):
        registry.register(DeepSeekR1ReasoningParser)


def chat_request(**kw) -> ChatCompletionRequest:
    return parse_request(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize("fixture,tool_family,reasoning_family", [
    ("default_tokenizer", "json_tools", None),
    ("llama3_tokenizer", "llama3_json", None),
    ("reasoning_tokenizer", "json_tools", "deepseek_r1"),
])
def test_the_family_follows_the_model(request, fixture, tool_family, reasoning_family):
    tok = request.getfixturevalue(fixture)
    renders = template_renders_tools(tok.chat_template)
    assert tool_parser_for(renders) == tool_family
    assert reasoning_parser_for(tok.chat_template, tok.hf.get_vocab()) == reasoning_family
    plan = ToolPlan.from_request(chat_request(tools=[TOOL]), renders)
    assert type(plan.new_parser()) is TOOL_PARSERS.lookup(tool_family)
    assert plan.key == TOOL_PARSERS.lookup(tool_family).key
    named = ToolPlan.from_request(chat_request(tools=[TOOL], tool_choice={"type": "function",
                                                                          "function": {"name": "get_weather"}}),
                                  renders)
    assert named.new_parser().arguments_of == ("get_weather" if tool_family == "json_tools" else None)
