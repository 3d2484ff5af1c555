"""response_format plumbing through the real app against FakeDecoder: which guide reaches the decoder
for each type (frontend/openai/structured.py's table: JSON guides as the EBNF of exactly what is meant,
regexes as `regex`, text as nothing), and the 400s that name `response_format`. The guides are built
and compiled for real (the compile workers of one app, shared by the module). Whether the engine
holds the output to them is tests/integration/test_structured_outputs.py's."""
from __future__ import annotations

import pytest

from tests.handlers.conftest import Harness, error_of

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}


def _guide(h: Harness, response_format: dict, text: str = '{"a": 1}') -> tuple:
    h.decoder.says(text)
    status, _, body = h.chat({"response_format": response_format})
    assert status == 200, body
    arrays = h.decoder.requests[-1][1]
    if "guided_decoding_guide_type" not in arrays:
        return None, None, body
    return arrays["guided_decoding_guide_type"].item(), arrays["guided_decoding_guide"].item(), body


def test_text_and_no_format_send_no_guide(shared_harness: Harness):
    assert _guide(shared_harness, {"type": "text"})[:2] == (None, None)
    shared_harness.decoder.says("Hi")
    shared_harness.chat({})
    assert "guided_decoding_guide" not in shared_harness.decoder.requests[-1][1]


def test_json_object_is_sent_as_an_ebnf_grammar(shared_harness: Harness):
    guide_type, guide, body = _guide(shared_harness, {"type": "json_object"})
    assert guide_type == b"ebnf_grammar" and guide.strip()
    assert body["choices"][0]["message"]["content"] == '{"a": 1}'      # the decoder's text, as it is


def test_json_schema_is_sent_as_the_ebnf_of_the_schema(shared_harness: Harness):
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
    guide_type, guide, _ = _guide(shared_harness, fmt, '{"city": "Paris", "population": 2}')
    assert guide_type == b"ebnf_grammar"
    assert b"city" in guide and b"population" in guide
    _, plain_object, _ = _guide(shared_harness, {"type": "json_object"})
    assert guide != plain_object                                           # the schema's, not any object


def test_the_same_schema_is_the_same_guide_and_strict_does_not_change_it(shared_harness: Harness):
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    first = _guide(shared_harness, fmt)[:2]
    again = _guide(shared_harness, {**fmt, "json_schema": {**fmt["json_schema"], "strict": False}})[:2]
    assert first == again


def test_regex_is_sent_as_the_regex_itself(shared_harness: Harness):
    guide_type, guide, _ = _guide(shared_harness, {"type": "regex", "regex": "[ab]{3}"}, "aba")
    assert (guide_type, guide) == (b"regex", b"[ab]{3}")


@pytest.mark.parametrize("response_format,fragment", [
    ({"type": "regex", "regex": "(unclosed"}, "regex"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/missing"}}}}}, "schema"),
])
def test_invalid_guides_are_400(shared_harness: Harness, response_format, fragment):
    """Moved: test_structured_outputs.py::test_invalid_guides_are_400 (the frontend's compile, once per
    decoder mode there); test_bad_input.py keeps invalid regexes end to end."""
    status, _, body = shared_harness.chat({"response_format": response_format})
    assert fragment in error_of(status, body, 400, "response_format")["message"].lower()
    assert shared_harness.decoder.requests == []


def test_schema_problems_are_400s_naming_response_format(shared_harness: Harness):
    unenforced = {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 2}}}
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100}
                                             for i in range(1000)}}
    for fmt, code in (({"type": "json_schema", "json_schema": {"name": "n", "schema": unenforced}}, "unsupported_schema"),
                      ({"type": "json_schema", "json_schema": {"name": "n", "schema": huge}}, "schema_too_large"),
                      ({"type": "regex", "regex": "a" * (16 * 1024 + 1)}, "schema_too_large")):
        status, _, body = shared_harness.chat({"response_format": fmt})
        assert error_of(status, body, 400, "response_format")["code"] == code, fmt
    assert shared_harness.decoder.requests == []


def test_an_unknown_format_type_is_a_400(shared_harness: Harness):
    status, _, body = shared_harness.chat({"response_format": {"type": "xml"}})
    assert status == 400 and body["error"]["param"].startswith("response_format"), body
