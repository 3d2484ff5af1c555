"""Guided decoding (xgrammar 0.1.32) through the sampler, with the real Llama-2 vocabulary."""
from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest
import torch

from llama_triton.text.grammar import GuideCompiler
from llama_triton.engine.logit_processors import process_logits
from llama_triton.engine.sampler import Sampler
from llama_triton.contract import RequestError
from llama_triton.engine.types import SamplingParams

V = 32000
EOS = 2

BOUNDED_SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "name": {"type": "string", "minLength": 1, "maxLength": 6},
    },
    "required": ["color", "n", "name"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def hf_tokenizer(default_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def sampler(hf_tokenizer):
    return Sampler(V, hf_tokenizer)


def guided(guide_type, guide=None, **kw) -> SamplingParams:
    kw.setdefault("max_new_tokens", 64)
    kw.setdefault("end_id", EOS)
    return SamplingParams(guide_type=guide_type, guide=guide, **kw)


def run_random(sampler, params, seed, max_steps=200, batch_noise_rows=0):
    """Drives one guided sequence with random logits until the grammar terminates."""
    seq = sampler.new_sequence(params, 0, [1])
    others = [sampler.new_sequence(SamplingParams(max_new_tokens=8, seed=i), 0, [1])
              for i in range(batch_noise_rows)]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(max_steps):
        logits = torch.randn(1 + len(others), V, generator=gen) * 2
        results = sampler.sample(logits, [seq, *others])
        assert results[0].error is None
        if seq.is_grammar_terminated:
            return seq
    raise AssertionError(f"grammar did not terminate within {max_steps} steps")


def text_of(hf_tokenizer, seq) -> str:
    assert seq.generated[-1] == seq.guide.stop_token_ids[0]
    return hf_tokenizer.decode(seq.generated[:-1])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_json_schema_random_logits_terminate_and_validate(sampler, hf_tokenizer, seed):
    params = guided("json_schema", json.dumps(BOUNDED_SCHEMA), temperature=1.0, seed=seed)
    seq = run_random(sampler, params, seed, max_steps=120, batch_noise_rows=seed % 3)
    text = text_of(hf_tokenizer, seq)
    obj = json.loads(text)
    jsonschema.validate(obj, BOUNDED_SCHEMA)
    # no free whitespace: the layout is exactly json.dumps's
    assert text == json.dumps(obj, ensure_ascii=False)
    assert seq.generated[-1] == EOS


def test_json_schema_with_bounded_whitespace_option(hf_tokenizer):
    s = Sampler(V, hf_tokenizer, json_max_whitespace=2)
    for seed in range(3):
        seq = run_random(s, guided("json_schema", json.dumps(BOUNDED_SCHEMA), seed=seed), seed,
                         max_steps=150)
        text = text_of(hf_tokenizer, seq)
        jsonschema.validate(json.loads(text), BOUNDED_SCHEMA)
        outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)   # whitespace outside strings
        assert not re.search(r"\s{3,}", outside)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regex_guide_output_matches(sampler, hf_tokenizer, seed):
    pattern = r"(cat|dog|bird)-[0-9]{2,3}"
    seq = run_random(sampler, guided("regex", pattern, seed=seed), seed, max_steps=40)
    assert re.fullmatch(pattern, text_of(hf_tokenizer, seq))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ebnf_guide_output_is_in_the_language(sampler, hf_tokenizer, seed):
    grammar = 'root ::= answer " " digit\nanswer ::= "yes" | "no" | "maybe"\ndigit ::= [0-9]'
    seq = run_random(sampler, guided("ebnf_grammar", grammar, seed=seed), seed, max_steps=40)
    assert re.fullmatch(r"(yes|no|maybe) [0-9]", text_of(hf_tokenizer, seq))


@pytest.fixture(scope="module")
def token_of_bytes(sampler):
    """bytes -> a token id with exactly that text (ordinary tokens before byte-fallback ones),
    from xgrammar's decoded vocabulary (so no tokenizer prefix-space rules get in the way)."""
    sampler.guides.default_stop_token_ids            # builds the TokenizerInfo
    vocab = sampler.guides._tokenizer_info.decoded_vocab
    table: dict = {}
    for i in [*range(259, len(vocab)), *range(3, 259)]:
        table.setdefault(bytes(vocab[i]), i)
    return table


def tokens_for(token_of_bytes, text: str) -> list[int]:
    data, ids = text.encode(), []
    while data:
        n = next(n for n in range(min(len(data), 24), 0, -1) if data[:n] in token_of_bytes)
        ids.append(token_of_bytes[data[:n]])
        data = data[n:]
    return ids


@pytest.fixture(scope="module")
def force_text(sampler, token_of_bytes):
    def force(sampler, hf_tokenizer, params, text):
        """Teacher-forces `text` through sample(): each step boosts the wanted token; the
        mask must allow it. Returns the sequence (not yet given the stop token)."""
        return _force(sampler, params, tokens_for(token_of_bytes, text))
    return force


def _force(sampler, params, ids):
    seq = sampler.new_sequence(params, 0, [1])
    for t in ids:
        logits = torch.zeros(1, V)
        logits[0, t] = 50.0
        assert sampler.sample(logits, [seq])[0].token_id == t
    return seq


def test_json_object_mode_allows_objects_only(sampler, hf_tokenizer, force_text):
    params = guided("json", temperature=0.0)
    seq = force_text(sampler, hf_tokenizer, params, '{"a": [1, 2.5, {"b": null}], "c": "x"}')
    assert not seq.is_grammar_terminated
    # complete: only the stop token is left, whatever the logits say
    logits = torch.zeros(1, V)
    logits[0, 29871] = 100.0
    assert sampler.sample(logits, [seq])[0].token_id == EOS
    assert seq.is_grammar_terminated
    # a top-level array is not a JSON object
    fresh = sampler.new_sequence(params, 0, [1])
    bracket = hf_tokenizer.convert_tokens_to_ids("[")
    x = process_logits(torch.zeros(1, V), [fresh], sampler.vocab_size).logits[0]
    assert x[bracket] == float("-inf")
    assert x[hf_tokenizer.convert_tokens_to_ids("{")] == 0.0


def test_terminated_grammar_allows_only_end_id(sampler, hf_tokenizer, force_text):
    seq = force_text(sampler, hf_tokenizer, guided("regex", "ok", temperature=1.0, seed=1), "ok")
    assert sampler.sample(torch.zeros(1, V), [seq])[0].token_id == EOS
    assert seq.is_grammar_terminated
    x = process_logits(torch.randn(1, V), [seq], sampler.vocab_size).logits[0]
    assert torch.isfinite(x).nonzero()[:, 0].tolist() == [EOS]


def test_stop_token_is_end_id_or_tokenizer_eos(sampler, hf_tokenizer, force_text):
    custom = force_text(sampler, hf_tokenizer, guided("regex", "ok", end_id=13), "ok")
    assert sampler.sample(torch.zeros(1, V), [custom])[0].token_id == 13
    assert custom.is_grammar_terminated
    no_end = force_text(sampler, hf_tokenizer, guided("regex", "ok", end_id=None), "ok")
    assert sampler.sample(torch.zeros(1, V), [no_end])[0].token_id == EOS
    assert no_end.is_grammar_terminated


def test_grammar_wins_over_min_tokens(sampler, hf_tokenizer, force_text):
    params = guided("regex", "ok", min_tokens=10, temperature=0.0)
    seq = force_text(sampler, hf_tokenizer, params, "ok")
    assert sampler.sample(torch.zeros(1, V), [seq])[0].token_id == EOS
    assert seq.is_grammar_terminated


def test_guided_and_plain_rows_share_a_batch(sampler, hf_tokenizer):
    plain = sampler.new_sequence(SamplingParams(max_new_tokens=4, temperature=0.0), 0, [1])
    g = sampler.new_sequence(guided("regex", "[0-9]+", temperature=0.0), 0, [1])
    logits = torch.zeros(2, V)
    logits[:, 100] = 10.0                       # not a digit
    r = sampler.sample(logits, [plain, g])
    assert r[0].token_id == 100
    assert re.fullmatch("[0-9]+", hf_tokenizer.decode([r[1].token_id]).strip())


def test_n_sequences_share_the_compiled_grammar(sampler):
    schema = json.dumps({"type": "object", "properties": {"k": {"type": "string",
                                                               "maxLength": 300}}})
    params = guided("json_schema", schema, num_return_sequences=3)
    sampler.compile_guide(params)                  # compiles once, into the cache
    size = sampler.guides._compiler.get_cache_size_bytes()
    seqs = [sampler.new_sequence(params, i, [1]) for i in range(3)]
    assert sampler.guides._compiler.get_cache_size_bytes() == size
    assert len({id(s.guide) for s in seqs}) == 3  # but each sequence has its own matcher


@pytest.mark.parametrize("guide_type,guide,match", [
    ("yaml", "a: 1", "unknown guided decoding guide type"),
    ("json_schema", "{not json", "invalid JSON schema"),
    ("json_schema", "[1, 2]", "invalid JSON schema"),
    ("json_schema", '{"type": "foo"}', "invalid JSON schema"),
    ("json_schema", '{"$ref": "#/nowhere"}', "invalid JSON schema"),
    ("regex", "(unclosed", "invalid regex"),
    ("ebnf_grammar", "root ::= undefined_rule", "invalid EBNF grammar"),
    ("ebnf_grammar", 'root ::= "a" |', "invalid EBNF grammar"),
    ("regex", "", "needs a guide"),
    ("json_schema", None, "needs a guide"),
])
def test_invalid_guides_raise_request_error(sampler, guide_type, guide, match):
    with pytest.raises(RequestError, match=match) as info:
        sampler.new_sequence(guided(guide_type, guide), 0, [1])
    assert ".cc:" not in str(info.value)
    with pytest.raises(RequestError):              # as the engine meets it: checked at submit, compiled after
        params = guided(guide_type, guide)
        sampler.check(params)
        sampler.compile_guide(params)


def test_compile_time_limit(hf_tokenizer, monkeypatch):
    s = Sampler(V, hf_tokenizer, guide_compile_timeout_s=0.2)
    release = threading.Event()
    real = GuideCompiler._compile_now

    compiled = threading.Event()

    def slow(self, guide_type, guide):
        release.wait(600)           # held until the test releases it
        compiled.set()
        return real(self, guide_type, guide)

    monkeypatch.setattr(GuideCompiler, "_compile_now", slow)
    with pytest.raises(RequestError, match="grammar compilation took longer than 0.2 s"):
        s.new_sequence(guided("regex", "abc"), 0, [1])
    # Refused at the deadline while the compile was still held, not after waiting for it.
    assert not compiled.is_set()
    release.set()


def test_running_compilations_are_bounded(hf_tokenizer, monkeypatch):
    compiler = GuideCompiler(hf_tokenizer, V, compile_timeout_s=0.1, max_running_compiles=1)
    release = threading.Event()
    real = GuideCompiler._compile_now

    def slow(self, guide_type, guide):
        release.wait(5)
        return real(self, guide_type, guide)

    monkeypatch.setattr(GuideCompiler, "_compile_now", slow)
    with pytest.raises(RequestError, match="took longer"):
        compiler.compile("regex", "a+")
    with pytest.raises(RequestError, match="too many grammar compilations"):
        compiler.compile("regex", "b+")               # the abandoned one still runs
    release.set()
    # Once it ends (its thread, which gives its place back before it exits), compiling works again.
    for thread in threading.enumerate():
        if thread.name == "xgrammar-compile":
            thread.join()
    compiler.compile("regex", "c+")


def test_compile_time_limit_with_a_real_slow_grammar(hf_tokenizer):
    s = Sampler(V, hf_tokenizer, guide_compile_timeout_s=0.01)
    slow = json.dumps({"type": "string", "minLength": 3000, "maxLength": 3000})
    with pytest.raises(RequestError, match="took longer than"):
        s.new_sequence(guided("json_schema", slow), 0, [1])

