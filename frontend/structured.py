"""Structured outputs: `response_format` and tool grammars -> the decoder's guide, checked in the frontend.

Guide types are TensorRT-LLM's (`guided_decoding_guide_type`), see `llama_triton.text.grammar`:

| request                                    | guide type      | guide                                 |
|--------------------------------------------|-----------------|---------------------------------------|
| `response_format: {type: "text"}` / absent | none            |                                       |
| `{type: "json_object"}`                    | `json`          | (any JSON object)                     |
| `{type: "json_schema", json_schema: {schema, strict}}` | `json_schema` | the schema                  |
| `{type: "regex", regex}` (extension)       | `regex`         | the regex (whole output)              |
| tools (see `tools.py`)                     | `json_schema` or `ebnf_grammar` | built from the tools  |
| any of the above on a reasoning model      | `ebnf_grammar`  | "reasoning, `</think>`, then the above" |

`strict` is accepted either way: the output is always constrained to the schema (OpenAI's strict
behaviour). JSON is compiled without free whitespace (xgrammar `any_whitespace=False`: the output
is laid out like `json.dumps`, separators `", "` and `": "`), so a model cannot stall in an
endless run of spaces or newlines; JSON object keys come in the schema's property order.

Checked before Triton sees it. Every guide is built (schema/regex -> grammar) and compiled here
with xgrammar (the same `GuideCompiler` the CPU decoder uses, over the frontend's tokenizer and
vocabulary size) off the event loop (`loop.run_in_executor` on a small pool of its own), under a
time limit (`compile_timeout_s`, default 5 s from `llama_triton.defaults`, for building and
compiling together). A guide that
is invalid or takes longer is a 400 naming the request field (`response_format`, or
`tools[i].function.parameters` for the one tool whose schema is at fault: each tool's schema is
compiled on its own first), so a pathological schema or regex never reaches the decoder. The
xgrammar error text is in the message; a timeout has code `grammar_too_complex`. Outcomes are
cached by the request's guide (LRU, successes and failures alike, so a guide that timed out once
is refused at once next time rather than burning another core); concurrent requests with the
same new guide share one build. xgrammar cannot be interrupted: an abandoned build runs to its end
in a daemon thread; while `workers + 2` builds are in flight (abandoned ones included), a request
that needs a new guide gets a 429 at once. The first guided request also builds xgrammar's
tokenizer info (about a second for a 128k vocabulary), outside the time limit.

Reasoning models (see `reasoning.py`). A guide constrains the answer, not the reasoning: when
the prompt leaves the model inside `<think>`, the guide becomes the EBNF grammar
`any text without "</think>", "</think>", at most 2 of [ \\n], <the guide>`; when the model may
open a reasoning block itself, that prefix (starting with `<think>`) is optional. The "any text"
part is xgrammar's structural-tag `any_text` (a TagDispatch rule), whose token masks cost
microseconds, unlike a hand-written "no `</think>`" rule.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from frontend import errors
from frontend.request_models import (JsonObjectResponseFormat, JsonSchemaResponseFormat, RegexResponseFormat,
                                     TextResponseFormat)
from frontend.reasoning import THINK_END, THINK_START
from llama_triton.defaults import GRAMMAR_COMPILE_TIMEOUT_S
from llama_triton.text.grammar import GuideCompiler, _clean_error
from llama_triton.engine.types import RequestError

log = logging.getLogger("frontend.structured")

DEFAULT_COMPILE_TIMEOUT_S = GRAMMAR_COMPILE_TIMEOUT_S
DEFAULT_CACHE_ENTRIES = 512
DEFAULT_WORKERS = 2
ANSWER_WHITESPACE = 2        # whitespace allowed between </think> and a guided answer
ANY_JSON_OBJECT = '{"type": "object"}'


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
    """What to constrain the output to, before it is built and compiled.

    Plain guides go to the decoder as (`guide_type`, `guide`). `compose` builds an
    `xgrammar.Grammar` instead (sent as `ebnf_grammar`); `compose_key` identifies what it builds.
    `checks` are (param, guide_type, guide) compiled one by one first, so that an error names the
    part at fault (one tool's parameters). `reasoning` is None, "inside" or "optional" (see the
    module docstring).
    """

    guide_type: str
    guide: Optional[str]
    param: str
    checks: tuple[tuple[str, str, Optional[str]], ...] = ()
    compose: Optional[Callable[[], Any]] = None
    compose_key: str = ""
    reasoning: Optional[str] = None

    @property
    def key(self) -> str:
        return json.dumps([self.guide_type, self.guide, self.param, self.checks, self.compose_key, self.reasoning])

    def after_reasoning(self, mode: Optional[str]) -> "GuideSpec":
        return GuideSpec(self.guide_type, self.guide, self.param, self.checks, self.compose, self.compose_key, mode)


def response_format_guide(response_format: Any) -> Optional[GuideSpec]:
    """The guide for a request's `response_format` (None for text / absent)."""
    if response_format is None or isinstance(response_format, TextResponseFormat):
        return None
    if isinstance(response_format, JsonObjectResponseFormat):
        return GuideSpec("json", None, "response_format")
    if isinstance(response_format, JsonSchemaResponseFormat):
        schema = json.dumps(response_format.json_schema.schema_, ensure_ascii=False)
        return GuideSpec("json_schema", schema, "response_format")
    if isinstance(response_format, RegexResponseFormat):
        return GuideSpec("regex", response_format.regex, "response_format")
    raise AssertionError(type(response_format))


# ---- grammar building (runs in worker threads) ---------------------------------------------------

def _xgr():
    import xgrammar  # lazily: only guided requests pay for the import

    return xgrammar


def json_schema_grammar(schema: str, *, strict: bool = True):
    return _xgr().Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=strict)


def grammar_of(guide_type: str, guide: Optional[str]):
    """The `xgrammar.Grammar` of a plain guide, laid out as the decoder compiles it."""
    xgr = _xgr()
    if guide_type == "json":
        return json_schema_grammar(ANY_JSON_OBJECT, strict=False)
    if guide_type == "json_schema":
        return json_schema_grammar(guide or "")
    if guide_type == "regex":
        return xgr.Grammar.from_regex(guide or "")
    if guide_type == "ebnf_grammar":
        return xgr.Grammar.from_ebnf(guide or "")
    raise AssertionError(guide_type)


def reasoning_prefix(mode: str):
    """Grammar of the reasoning part before a guided answer: `[<think>] any text "</think>" ws{0,2}`."""
    xgr = _xgr()
    think = {"type": "tag", "begin": "", "content": {"type": "any_text"}, "end": THINK_END}
    ws = {"type": "regex", "pattern": f"[ \\n]{{0,{ANSWER_WHITESPACE}}}"}
    part: dict = {"type": "sequence", "elements": [think, ws]}
    if mode == "optional":
        part = {"type": "optional", "content": {"type": "sequence", "elements": [
            {"type": "const_string", "value": THINK_START}, think, ws]}}
    elif mode != "inside":
        raise AssertionError(mode)
    return xgr.Grammar.from_structural_tag(json.dumps({"type": "structural_tag", "format": part}))


# ---- the service ------------------------------------------------------------------------------------

class StructuredOutputs:
    """Builds, compiles (with a time limit) and caches guides for one tokenizer; see the module docstring."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, *, compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 cache_entries: int = DEFAULT_CACHE_ENTRIES, workers: int = DEFAULT_WORKERS):
        self.compile_timeout_s = float(compile_timeout_s)
        self.compiler = GuideCompiler(hf_tokenizer, vocab_size, compile_timeout_s=compile_timeout_s,
                                      max_running_compiles=workers + 4)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="guide-compile")
        self._max_running = workers + 2   # builds in flight, abandoned ones included
        self._running = 0
        self._running_lock = threading.Lock()
        self._cache: OrderedDict[str, tuple] = OrderedDict()
        self._cache_entries = cache_entries
        self._inflight: dict[str, asyncio.Future] = {}
        self._ready: Optional[asyncio.Future] = None

    # -- work done in the pool ------------------------------------------------------------------
    def _compile(self, param: str, guide_type: str, guide: Optional[str]) -> None:
        try:
            self.compiler.compile(guide_type, guide)
        except RequestError as e:
            text = str(e)
            code = "grammar_too_complex" if "took longer" in text else "invalid_value"
            if code == "grammar_too_complex":
                text = f"the grammar took longer than {self.compile_timeout_s:g} s to compile; simplify it."
            raise GuideError(param, text, code) from None

    def build(self, spec: GuideSpec, progress: Optional[dict] = None) -> tuple[str, Optional[str]]:
        """(guide_type, guide) to send to the decoder; raises GuideError. Blocking: call it off the loop.

        `progress["param"]` names the part being worked on (what a timeout blames)."""
        progress = {} if progress is None else progress
        for param, guide_type, guide in spec.checks:
            progress["param"] = param
            self._compile(param, guide_type, guide)
        progress["param"] = spec.param
        if spec.compose is None and spec.reasoning is None:
            self._compile(spec.param, spec.guide_type, spec.guide)
            return spec.guide_type, spec.guide
        try:
            grammar = spec.compose() if spec.compose is not None else grammar_of(spec.guide_type, spec.guide)
            if spec.reasoning is not None:
                grammar = _xgr().Grammar.concat(reasoning_prefix(spec.reasoning), grammar)
        except GuideError:
            raise
        except Exception as e:  # noqa: BLE001 - xgrammar's conversion errors
            raise GuideError(spec.param, f"cannot build the grammar: {_clean_error(e)}") from None
        text = str(grammar)
        self._compile(spec.param, "ebnf_grammar", text)
        return "ebnf_grammar", text

    def _job(self, spec: GuideSpec) -> tuple:
        """Runs `build` in its own daemon thread and waits for it at most `compile_timeout_s`.

        xgrammar cannot be interrupted: an abandoned build runs on to its end (it still counts in
        `_running`), but it holds no pool worker and does not keep the process from exiting.
        """
        box: dict = {}
        progress = {"param": spec.param}
        done = threading.Event()

        def work():
            try:
                box["hit"] = ("ok", self.build(spec, progress))
            except GuideError as e:
                box["hit"] = ("error", e.param, e.message, e.code)
            except Exception as e:  # noqa: BLE001 - reported as the request's error
                box["hit"] = ("error", spec.param, f"cannot build the grammar: {_clean_error(e)}", "invalid_value")
            finally:
                with self._running_lock:
                    self._running -= 1
                done.set()

        threading.Thread(target=work, name="guide-build", daemon=True).start()
        if not done.wait(self.compile_timeout_s):
            log.warning("guide for %s abandoned after %.1f s", progress["param"], self.compile_timeout_s)
            return ("error", progress["param"],
                    f"the grammar took longer than {self.compile_timeout_s:g} s to compile; simplify it.",
                    "grammar_too_complex")
        return box["hit"]

    # -- the async face ---------------------------------------------------------------------------
    async def _warm(self) -> None:
        """Builds xgrammar's tokenizer info once (seconds for a 128k vocabulary), outside the time limit."""
        if self._ready is None:
            loop = asyncio.get_running_loop()
            self._ready = loop.run_in_executor(self._pool, lambda: self.compiler.default_stop_token_ids)
        await asyncio.shield(self._ready)

    async def resolve(self, spec: Optional[GuideSpec]) -> tuple[Optional[str], Optional[str]]:
        """(guide_type, guide) for the decoder, or (None, None); raises errors.APIError (400 / 429)."""
        if spec is None:
            return None, None
        key = spec.key
        hit = self._cache.get(key)
        if hit is None:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                try:
                    hit = await self._run(spec)
                    pending.set_result(hit)
                except BaseException as e:
                    pending.set_exception(e)
                    pending.exception()   # retrieved: no "never retrieved" warning without waiters
                    raise
                finally:
                    del self._inflight[key]
            else:
                hit = await asyncio.shield(pending)
        else:
            self._cache.move_to_end(key)
        if hit[0] == "ok":
            return hit[1]
        raise GuideError(hit[1], hit[2], hit[3]).api_error()

    async def _run(self, spec: GuideSpec) -> tuple:
        await self._warm()
        with self._running_lock:
            busy = self._running >= self._max_running
            if not busy:
                self._running += 1
        if busy:
            raise errors.APIError(429, "Too many grammars are being compiled right now; retry later.",
                                  errors.RATE_LIMIT, spec.param, "grammar_compiler_busy", {"Retry-After": "1"})
        hit = await asyncio.get_running_loop().run_in_executor(self._pool, self._job, spec)
        self._cache[spec.key] = hit
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return hit

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
