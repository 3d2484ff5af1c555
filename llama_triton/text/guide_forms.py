"""The form in which a guide goes to the decoder: what the engine's xgrammar compiles exactly as meant.

TensorRT-LLM 1.2.1 compiles `json` as xgrammar's builtin JSON grammar (any value, arrays too, with
unbounded whitespace) and `json_schema` with free whitespace on (`compile_like_engine` in
grammar.py cites the lines). A model can then stall in an endless run of spaces, and a
`json_object` request could get an array. So JSON guides never go to the decoder as `json` or
`json_schema`: they are built here into xgrammar's own grammar (no free whitespace: laid out like
`json.dumps`, separators ", " and ": "; object keys in the schema's order), printed as EBNF and
sent as `ebnf_grammar`, which the engine parses and compiles as given. Regexes go as `regex`
(the engine's Grammar.from_regex is this module's), unless something is composed around them.

A job is plain data (JSON), because it is built in a compile worker process
(llama_triton/text/compile_worker.py), not where the request is:

    {"kind": "plain" | "tools_auto", "guide_type": ..., "guide": ..., "param": ...,
     "checks": [[param, guide_type, guide], ...], "reasoning": null | "inside" | "optional",
     "text_rule": EBNF of the plain-text alternative (tools_auto)}

`checks` are parts compiled one by one first, so an error names the part at fault (one tool's
parameters). Reasoning models: the guide is prefixed with "any text without `</think>`,
`</think>`, at most 2 of [ \\n]" (xgrammar's structural-tag `any_text`, whose token masks cost
microseconds); "optional" also allows the answer alone, for a reply that opens no reasoning block.
"""
from __future__ import annotations

import json
from typing import Any, Optional

THINK_START = "<think>"
THINK_END = "</think>"
ANSWER_WHITESPACE = 2        # whitespace allowed between </think> and a guided answer
ANY_JSON_OBJECT = '{"type": "object"}'


def _xgr():
    import xgrammar  # only compile workers and the decoder import it (it loads torch)

    return xgrammar


def json_schema_grammar(schema: str, *, strict: bool = True):
    return _xgr().Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict)


def grammar_of(guide_type: str, guide: Optional[str]):
    """The xgrammar Grammar of a plain guide, laid out as we mean it."""
    xgr = _xgr()
    if guide_type == "json":
        return json_schema_grammar(ANY_JSON_OBJECT, strict=False)
    if guide_type == "json_schema":
        return json_schema_grammar(guide or "")
    if guide_type == "regex":
        return xgr.Grammar.from_regex(guide or "")
    if guide_type == "ebnf_grammar":
        return xgr.Grammar.from_ebnf(guide or "")
    raise ValueError(f"unknown guide type {guide_type!r}")


def reasoning_prefix():
    """`any text without </think>` `</think>` `[ \\n]{0,2}` as a grammar."""
    xgr = _xgr()
    think = {"type": "tag", "begin": "", "content": {"type": "any_text"}, "end": THINK_END}
    ws = {"type": "regex", "pattern": f"[ \\n]{{0,{ANSWER_WHITESPACE}}}"}
    part = {"type": "sequence", "elements": [think, ws]}
    return xgr.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": part}))


def after_reasoning(grammar: Any, mode: str):
    xgr = _xgr()
    if mode == "inside":
        return xgr.Grammar.concat(reasoning_prefix(), grammar)
    if mode == "optional":
        opened = xgr.Grammar.concat(xgr.Grammar.from_ebnf(f"root ::= {json.dumps(THINK_START)}"),
                                    reasoning_prefix(), grammar)
        return xgr.Grammar.union(opened, grammar)
    raise ValueError(f"unknown reasoning mode {mode!r}")


def plain_form(guide_type: str, guide: Optional[str]) -> tuple[str, Optional[str]]:
    """(guide_type, guide) of one plain guide, in the form the decoder gets."""
    if guide_type in ("json", "json_schema"):
        return "ebnf_grammar", str(grammar_of(guide_type, guide))
    return guide_type, guide


def engine_form(job: dict) -> tuple[str, Optional[str]]:
    """(guide_type, guide) that the decoder gets for a job; raises xgrammar's errors."""
    kind, reasoning = job.get("kind", "plain"), job.get("reasoning")
    if kind == "plain" and reasoning is None:
        return plain_form(job["guide_type"], job.get("guide"))
    if kind == "tools_auto":
        xgr = _xgr()
        grammar = xgr.Grammar.union(json_schema_grammar(job["guide"]), xgr.Grammar.from_ebnf(job["text_rule"]))
    elif kind == "plain":
        grammar = grammar_of(job["guide_type"], job.get("guide"))
    else:
        raise ValueError(f"unknown guide job kind {kind!r}")
    if reasoning is not None:
        grammar = after_reasoning(grammar, reasoning)
    return "ebnf_grammar", str(grammar)
