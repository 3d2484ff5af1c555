"""Structured outputs: `response_format` and tool grammars -> the decoder's guide, checked in the frontend.

| request                                    | built from                    | sent to the decoder as        |
|--------------------------------------------|-------------------------------|-------------------------------|
| `response_format: {type: "text"}` / absent | none                          |                               |
| `{type: "json_object"}`                    | any JSON object               | `ebnf_grammar`                |
| `{type: "json_schema", json_schema: {schema, strict}}` | the schema        | `ebnf_grammar`                |
| `{type: "regex", regex}` (extension)       | the regex (whole output)      | `regex`                       |
| tools (see `tools.py`)                     | a schema of the calls         | `ebnf_grammar`                |
| any of the above on a reasoning model      | "reasoning, `</think>`, then the above" | `ebnf_grammar`      |

One xgrammar, the engine's. TensorRT-LLM 1.2.1 compiles guides with xgrammar 0.1.32, and so does
everything here (the pin in pyproject.toml). JSON guides are never sent as `json` / `json_schema`,
which the engine compiles with unbounded whitespace (and `json` as "any value"): they go as the
EBNF of exactly what we mean, without free whitespace (laid out like `json.dumps`, separators
", " and ": "), so a model cannot stall in an endless run of spaces on either decoder
(llama_triton/text/guide_forms.py). `strict` is accepted either way: the output is always
constrained to the schema. A schema keyword the engine would ignore or enforce wrongly is a 400
naming it (frontend/openai/schema_subset.py).

Checked before Triton sees it. Every guide is built and then compiled exactly as the engine will
compile it (`grammar.compile_like_engine`), in a small pool of compile processes
(frontend/openai/compile_pool.py), never in this process: xgrammar cannot be interrupted, but a process
can be killed. Each request has one deadline (`compile_timeout_s`, default 5 s from
`llama_triton.defaults`) for waiting for a worker, building and compiling together; past it the
worker is killed and the answer is a 400 `grammar_too_complex` naming the part at fault
(`response_format`, or `tools[i].function.parameters`: each tool's schema is compiled on its own
first). An invalid guide is a 400 naming the field, with xgrammar's error. All workers busy and
too many compiles waiting: 429 `grammar_compiler_busy` with `Retry-After`.

Sharing and caching. Concurrent requests with the same new guide share one compile: it runs in its
own task, which every request awaits through `asyncio.shield`, so a client that hangs up never
cancels it for the others, and its bookkeeping (the in-flight table, the cache) always runs.
Outcomes that depend only on the guide (built, or invalid) are cached by a digest of the guide,
LRU, bounded in bytes (`cache_bytes`); a timeout, a busy pool or a lost worker never is, so the
next request tries again. Sizes are capped before any work: a schema (or a tool's parameters) of
more than MAX_SCHEMA_BYTES, or more than MAX_TOOLS tools, is a 400 naming the field.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from frontend import errors
from frontend.openai.compile_pool import CompilePool, CompileTimeout, PoolBusy, WorkerLost
from frontend.openai.message_models import (JsonObjectResponseFormat, JsonSchemaResponseFormat, RegexResponseFormat,
                                            TextResponseFormat)
from frontend.openai.schema_subset import UnsupportedSchema, check_schema
from llama_triton.defaults import GRAMMAR_COMPILE_TIMEOUT_S
from llama_triton.text.grammar import tokenizer_info_payload

log = logging.getLogger("frontend.structured")

DEFAULT_COMPILE_TIMEOUT_S = GRAMMAR_COMPILE_TIMEOUT_S
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_WORKERS = 2
MAX_SCHEMA_BYTES = 64 * 1024      # one schema, or one tool's parameters, as compact JSON (UTF-8)
MAX_TOOLS = 128
MAX_REGEX_BYTES = 16 * 1024


class GuideError(Exception):
    """A guide that cannot be used; `param` is the request field to blame."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code

    def api_error(self) -> errors.APIError:
        return errors.bad_request(f"Invalid '{self.param}': {self.message}", self.param, self.code)


@dataclass(frozen=True)
class GuideSpec:
    """What to constrain the output to, before it is built and compiled: plain data, built in a
    compile worker (llama_triton/text/guide_forms.py describes `kind`, `checks`, `text_rule` and
    `reasoning`: None, "inside" or "optional")."""

    guide_type: str
    guide: Optional[str]
    param: str
    checks: tuple[tuple[str, str, Optional[str]], ...] = ()
    kind: str = "plain"
    text_rule: Optional[str] = None
    reasoning: Optional[str] = None

    def job(self) -> dict:
        return {"kind": self.kind, "guide_type": self.guide_type, "guide": self.guide, "param": self.param,
                "checks": [list(c) for c in self.checks], "text_rule": self.text_rule, "reasoning": self.reasoning}

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.job(), sort_keys=True).encode()).hexdigest()

    def after_reasoning(self, mode: Optional[str]) -> "GuideSpec":
        return GuideSpec(self.guide_type, self.guide, self.param, self.checks, self.kind, self.text_rule, mode)


def checked_schema(schema: Any, param: str) -> str:
    """The schema as the compact JSON we compile: size-capped, keywords checked (400s name `param`)."""
    try:
        text = json.dumps(schema, ensure_ascii=False, separators=(", ", ": "))
    except (RecursionError, ValueError):
        raise errors.bad_request(f"Invalid '{param}': the schema nests too deeply.", param,
                                 "unsupported_schema") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise errors.bad_request(f"Invalid '{param}': the schema is {len(text.encode())} bytes as JSON; at most "
                                 f"{MAX_SCHEMA_BYTES} are allowed.", param, "schema_too_large")
    try:
        return json.dumps(check_schema(schema), ensure_ascii=False)
    except UnsupportedSchema as e:
        raise errors.bad_request(f"Invalid '{param}': {e}", param, "unsupported_schema") from None


def response_format_guide(response_format: Any) -> Optional[GuideSpec]:
    """The guide for a request's `response_format` (None for text / absent); raises errors.APIError."""
    if response_format is None or isinstance(response_format, TextResponseFormat):
        return None
    if isinstance(response_format, JsonObjectResponseFormat):
        return GuideSpec("json", None, "response_format")
    if isinstance(response_format, JsonSchemaResponseFormat):
        return GuideSpec("json_schema", checked_schema(response_format.json_schema.schema_, "response_format"),
                         "response_format")
    if isinstance(response_format, RegexResponseFormat):
        if len(response_format.regex.encode()) > MAX_REGEX_BYTES:
            raise errors.bad_request(f"Invalid 'response_format': the regex is longer than {MAX_REGEX_BYTES} "
                                     f"bytes.", "response_format", "schema_too_large")
        return GuideSpec("regex", response_format.regex, "response_format")
    raise AssertionError(type(response_format))


# ---- outcomes ---------------------------------------------------------------------------------------

class GuideCache:
    """Outcomes by guide digest, LRU, bounded in bytes (each entry's text plus a fixed overhead)."""

    OVERHEAD = 256

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[tuple, int]] = OrderedDict()

    @staticmethod
    def size_of(key: str, outcome: tuple) -> int:
        return GuideCache.OVERHEAD + len(key) + sum(len(x.encode()) for x in outcome if isinstance(x, str))

    def get(self, key: str) -> Optional[tuple]:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, outcome: tuple) -> None:
        size = self.size_of(key, outcome)
        if size > self.max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._entries[key] = (outcome, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)


CACHEABLE = ("ok", "invalid")      # depend on the guide alone; "timeout", "busy", "lost" never cached


class StructuredOutputs:
    """Builds, compiles (in killable worker processes, under one deadline) and caches guides for one
    tokenizer; see the module docstring."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, *, compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, workers: int = DEFAULT_WORKERS,
                 max_waiting: Optional[int] = None):
        self.compile_timeout_s = float(compile_timeout_s)
        self._hf = hf_tokenizer
        self._vocab_size = int(vocab_size)
        self._workers = workers
        self._max_waiting = max_waiting
        self.pool: Optional[CompilePool] = None        # made on first use, on the serving loop
        self.cache = GuideCache(cache_bytes)
        self._inflight: dict[str, asyncio.Task] = {}

    def _payload(self) -> dict:
        if self._hf is None:
            raise RuntimeError("guided decoding needs the model's tokenizer")
        return tokenizer_info_payload(self._hf, self._vocab_size)

    def _get_pool(self) -> CompilePool:
        if self.pool is None:
            self.pool = CompilePool(self._payload, size=self._workers, max_waiting=self._max_waiting)
        return self.pool

    async def resolve(self, spec: Optional[GuideSpec]) -> tuple[Optional[str], Optional[str]]:
        """(guide_type, guide) for the decoder, or (None, None); raises errors.APIError (400 / 429)."""
        if spec is None:
            return None, None
        key = spec.key
        outcome = self.cache.get(key)
        if outcome is None:
            task = self._inflight.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._compile_shared(spec, key))
                self._inflight[key] = task
            # The compile belongs to no single request: a waiter's cancellation stops its own wait only.
            outcome = await asyncio.shield(task)
        return self._answer(spec, outcome)

    async def _compile_shared(self, spec: GuideSpec, key: str) -> tuple:
        try:
            outcome = await self._compile(spec)
        except Exception as e:  # noqa: BLE001 - every waiter gets an answer, never a stray exception
            log.exception("guide compile failed")
            outcome = ("lost", spec.param, f"the grammar could not be compiled ({type(e).__name__})")
        finally:
            self._inflight.pop(key, None)
        if outcome[0] in CACHEABLE:
            self.cache.put(key, outcome)
        return outcome

    async def _compile(self, spec: GuideSpec) -> tuple:
        pool = self._get_pool()
        try:
            answer = await pool.run(spec.job(), self.compile_timeout_s)
        except PoolBusy:
            return ("busy", spec.param)
        except CompileTimeout as e:
            return ("timeout", e.param or spec.param)
        except WorkerLost as e:
            return ("lost", spec.param, f"the grammar compiler stopped while compiling it ({e})")
        if "ok" in answer:
            return ("ok", answer["ok"][0], answer["ok"][1])
        return ("invalid", answer.get("param") or spec.param, answer.get("error", "invalid guide"))

    def _answer(self, spec: GuideSpec, outcome: tuple) -> tuple[Optional[str], Optional[str]]:
        kind = outcome[0]
        if kind == "ok":
            return outcome[1], outcome[2]
        if kind == "busy":
            raise errors.APIError(429, "Too many grammars are being compiled right now; retry later.",
                                  errors.RATE_LIMIT, outcome[1], "grammar_compiler_busy", {"Retry-After": "1"})
        if kind == "timeout":
            raise GuideError(outcome[1], f"the grammar took longer than {self.compile_timeout_s:g} s to compile; "
                                         f"simplify it.", "grammar_too_complex").api_error()
        raise GuideError(outcome[1], outcome[2]).api_error()

    async def aclose(self) -> None:
        if self.pool is not None:
            await self.pool.close()
