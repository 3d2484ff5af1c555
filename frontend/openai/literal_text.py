"""What a request supplies is text: a control token's spelling in it never becomes the token.

Turn markers, BOS/EOS and tool or reasoning delimiters come only from the chat template's own
text. Every string the request supplied (message content and text parts, names, tool results,
tool calls echoed back, tool definitions, chat_template_kwargs values; dict keys too) reaches the
template *marked*: each spelling of a control token (`Tokenizer.control_texts`) in it is wrapped
as OPEN + spelling + CLOSE, two Unicode noncharacters (`LITERAL_MARKS`). The template renders as
usual; the marks leave its string tests alone (`trim`, `split('</think>')`, role comparisons).
`encode_prompt` then writes each wrapped spelling with a mark between every two characters, which
the tokenizer's added-token match cannot see through, and encodes the whole prompt in one call
with `Tokenizer.encode_marked`, which drops the marks after that match. So:

* a request without control-token spellings renders without marks and is encoded exactly as
  before: `Tokenizer.encode`, special-token parsing on, which finds only the template's tokens;
* a spelling in a request string is the text it spells, tokenized in its context exactly as if
  the vocabulary had no such token (`hi</s></s>` is `▁hi </ s ></ s >` in Llama-2, not `▁hi` 2 2);
* a mark a template's string operation separated from its spelling (`split` cuts the wrap in two)
  is dropped too, after matching, so the text on either side of it cannot join into a token.

U+FDD0 and U+FDD1 typed in a request are dropped: they are noncharacters, which Unicode reserves
for a program's internal use, and here they would be taken for marks.

Limits. The marks follow request strings that the template copies as they are or through
`tojson` (HF's keeps non-ASCII as it is): that is all the templates we ship do. A template that
rewrites request strings (`upper`, `replace`) or builds a token from pieces
(`'<|' + message.role + '|>'`) is beyond them; roles are validated by the protocol anyway.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from llama_triton.text.tokenization import LITERAL_MARKS, Tokenizer

OPEN, CLOSE = LITERAL_MARKS


@lru_cache(maxsize=8)
def _patterns(control_texts: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    """A spelling (longest first, so a token wins over the tokens it contains), and a wrapped one."""
    alternatives = "|".join(map(re.escape, control_texts)) or "(?!)"   # (?!) matches nothing
    return re.compile(alternatives), re.compile(f"{OPEN}({alternatives}){CLOSE}")


def mark_request_values(value: Any, tokenizer: Tokenizer) -> Any:
    """A copy of `value` (strings, lists, dicts, other leaves) with control-token spellings wrapped
    in marks; strings without spellings come back as they are."""
    spelling, _ = _patterns(tokenizer.control_texts)

    def mark(v: Any) -> Any:
        if isinstance(v, str):
            if OPEN in v or CLOSE in v:
                v = v.replace(OPEN, "").replace(CLOSE, "")
            return spelling.sub(lambda m: OPEN + m.group() + CLOSE, v)
        if isinstance(v, dict):
            return {mark(k): mark(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [mark(x) for x in v]
        return v

    return mark(value)


def encode_prompt(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """Ids of a prompt rendered from marked request values: the template's control tokens are
    tokens, every spelling that came from the request is text."""
    if OPEN not in prompt and CLOSE not in prompt:
        return tokenizer.encode(prompt, add_special_tokens=False)
    _, wrapped = _patterns(tokenizer.control_texts)
    return tokenizer.encode_marked(wrapped.sub(lambda m: OPEN.join(m.group()), prompt))


def plain_text(prompt: str) -> str:
    """The rendered prompt as text, marks removed (what the model reads, with every spelling as text)."""
    return prompt.replace(OPEN, "").replace(CLOSE, "")
