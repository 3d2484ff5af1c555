"""Guided (grammar-constrained) decoding on top of xgrammar 0.1.32: compilation and per-sequence matchers.

xgrammar 0.1.32 is the version TensorRT-LLM 1.2.1 pins (its `requirements.txt` at the v1.2.1 tag)
and the one project-wide: the frontend builds guides with it, the CPU decoder constrains with it,
and `compile_like_engine` compiles a guide exactly as the engine does (docs/GPU.md, "Guides").

Shared by the CPU decoder's sampler and the frontend's request checks (frontend/openai/structured.py), so it
lives outside the engine package and imports no torch (its errors are llama_triton/contract.py's): a
frontend worker that checks a grammar must not load torch.

Guide types are exactly TensorRT-LLM's (`guided_decoding_guide_type`):

* ``json``          any JSON object (OpenAI ``response_format: json_object``); ``guide`` is ignored.
* ``json_schema``   a JSON document that satisfies the JSON schema in ``guide``.
* ``regex``         text that matches the regular expression in ``guide`` (whole match).
* ``ebnf_grammar``  text derived from the GBNF/EBNF grammar in ``guide`` (root rule ``root``).

Whitespace. xgrammar's ``compile_json_schema`` offers two ways to bound the whitespace of
JSON output: ``any_whitespace=False`` (no free whitespace at all: the output is laid out like
``json.dumps`` with the separators ``", "`` and ``": "``, or ``indent``/``separators``), and
``any_whitespace=True`` with ``max_whitespace_cnt=N`` (at most N whitespace characters at each
place JSON allows whitespace). Its built-in JSON grammar (what TensorRT-LLM uses for ``json``)
allows unbounded whitespace, and a model with random weights then never stops. So both ``json``
and ``json_schema`` are compiled through ``compile_json_schema``: ``json`` as the schema
``{"type": "object"}`` with ``strict_mode=False`` (any object, any keys), and by default with
``any_whitespace=False``; ``GuideCompiler(json_max_whitespace=N)`` selects the second form.
Regexes and EBNF grammars are compiled as given: their whitespace is the author's business.
(That is this CPU decoder's reading of `json` / `json_schema`, for direct Triton clients; the
engine reads them loosely, `compile_like_engine` below, so the frontend sends neither: it sends
JSON guides as `ebnf_grammar`, llama_triton/text/guide_forms.py.)

Compile time limit. Each compilation runs in its own daemon thread; the caller waits at most
``compile_timeout_s`` (default 10 s, ``llama_triton.defaults.DECODER_GRAMMAR_COMPILE_TIMEOUT_S``)
and then raises ``RequestError("grammar compilation took longer than ...")``. xgrammar cannot be interrupted, so the abandoned thread keeps running until
the compilation ends (it releases the GIL while it works, so it costs one core, not the process);
if it succeeds its result lands in the compiler's cache, so a retry of the same guide is then fast.
At most ``max_running_compiles`` (default 4) compilations run at once, abandoned ones included;
a request that finds them all busy gets a RequestError at once. (A process that exits while an
abandoned compilation runs just drops that daemon thread.)

Stop tokens and termination. A matcher is built with the sequence's ``end_id`` as its only stop
token (the tokenizer's EOS when the request has no ``end_id``). When the grammar is complete the
bitmask allows only that stop token (plus any continuation the grammar still allows); after the
stop token is accepted the matcher is *terminated*; from then on the sampler allows only the
stop token and the engine should finish the sequence.
"""
from __future__ import annotations

import json
import re
import threading
from typing import TYPE_CHECKING, Any, Optional

from llama_triton.contract import GUIDE_TYPES, RequestError
from llama_triton.defaults import DECODER_GRAMMAR_COMPILE_TIMEOUT_S

if TYPE_CHECKING:   # the bitmask helpers take the sampler's tensors; only the engine imports torch
    import torch

DEFAULT_COMPILE_TIMEOUT_S = DECODER_GRAMMAR_COMPILE_TIMEOUT_S
DEFAULT_CACHE_LIMIT_BYTES = 512 * 1024 * 1024

# "[20:35:02] /project/cpp/grammar_parser.cc:820: " prefixes of xgrammar's C++ errors
_XGR_ERROR_PREFIX = re.compile(r"^\s*(\[[0-9:]+\]\s*)?\S+\.(cc|h|cpp):\d+:\s*")


def clean_error(exc: BaseException) -> str:
    """xgrammar's error text without its C++ source prefix, first line only (the compile worker's
    answers word errors the same way)."""
    text = str(exc).strip()
    text = _XGR_ERROR_PREFIX.sub("", text)
    return text.splitlines()[0] if text else type(exc).__name__


def _import_xgrammar():
    import xgrammar  # imported lazily: only guided requests pay for it

    return xgrammar


class GuideMatcher:
    """The grammar state of one sequence (wraps an ``xgrammar.GrammarMatcher``)."""

    __slots__ = ("_matcher", "stop_token_ids")

    def __init__(self, matcher: Any, stop_token_ids: list[int]):
        self._matcher = matcher
        self.stop_token_ids = list(stop_token_ids)

    @property
    def is_terminated(self) -> bool:
        return bool(self._matcher.is_terminated())

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Writes the allowed-token bitmask into ``bitmask[row]`` (not for a terminated matcher)."""
        self._matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token_id: int) -> bool:
        """Advances the grammar; False if the grammar does not allow ``token_id`` here."""
        return bool(self._matcher.accept_token(int(token_id)))


class GuideCompiler:
    """Compiles guides for one model vocabulary; thread-safe; one per ``Sampler``.

    ``hf_tokenizer`` is a Hugging Face tokenizer of the model; its ``xgrammar.TokenizerInfo`` and
    the ``xgrammar.GrammarCompiler`` (with its cache, bounded by ``cache_limit_bytes``) are built
    on first use.
    """

    def __init__(
        self,
        hf_tokenizer: Any,
        vocab_size: int,
        *,
        compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
        json_max_whitespace: Optional[int] = None,
        cache_limit_bytes: int = DEFAULT_CACHE_LIMIT_BYTES,
        max_compile_threads: int = 2,
        max_running_compiles: int = 4,
    ):
        if json_max_whitespace is not None and json_max_whitespace < 1:
            raise ValueError("json_max_whitespace must be None (no free whitespace) or >= 1")
        self.hf_tokenizer = hf_tokenizer
        self.vocab_size = int(vocab_size)
        self.compile_timeout_s = float(compile_timeout_s)
        self.json_max_whitespace = json_max_whitespace
        self.cache_limit_bytes = int(cache_limit_bytes)
        self.max_compile_threads = int(max_compile_threads)
        self._lock = threading.Lock()
        # compilations still running, abandoned ones included: a bound on the CPU that
        # pathological guides can hold
        self._running = threading.BoundedSemaphore(max(1, int(max_running_compiles)))
        self._tokenizer_info = None
        self._compiler = None

    # -- lazily built xgrammar objects -------------------------------------------------------
    def _get_compiler(self):
        if self._compiler is None:
            with self._lock:
                if self._compiler is None:
                    if self.hf_tokenizer is None:
                        raise RequestError(
                            "guided decoding is not available: the decoder has no tokenizer")
                    xgr = _import_xgrammar()
                    info = xgr.TokenizerInfo.from_huggingface(
                        self.hf_tokenizer, vocab_size=self.vocab_size)
                    self._tokenizer_info = info
                    self._compiler = xgr.GrammarCompiler(
                        info, max_threads=self.max_compile_threads, cache_enabled=True,
                        cache_limit_bytes=self.cache_limit_bytes)
        return self._compiler

    @property
    def default_stop_token_ids(self) -> list[int]:
        self._get_compiler()
        return list(self._tokenizer_info.stop_token_ids)

    # -- compilation --------------------------------------------------------------------------
    def _json_kwargs(self) -> dict:
        if self.json_max_whitespace is None:
            return {"any_whitespace": False}
        return {"any_whitespace": True, "max_whitespace_cnt": int(self.json_max_whitespace)}

    def _compile_now(self, guide_type: str, guide: Optional[str]):
        compiler = self._get_compiler()
        if guide_type == "json":
            return compiler.compile_json_schema(
                '{"type": "object"}', strict_mode=False, **self._json_kwargs())
        if guide_type == "json_schema":
            return compiler.compile_json_schema(guide, **self._json_kwargs())
        if guide_type == "regex":
            return compiler.compile_regex(guide)
        if guide_type == "ebnf_grammar":
            return compiler.compile_grammar(guide)
        raise AssertionError(guide_type)

    @staticmethod
    def check_guide(guide_type: Optional[str], guide: Optional[str]) -> None:
        """Validates the guide's type and presence (not its content); raises RequestError."""
        if guide_type is None or guide_type == "":
            if guide:
                raise RequestError("guided_decoding_guide given without guided_decoding_guide_type")
            return
        if guide_type not in GUIDE_TYPES:
            raise RequestError(
                f"unknown guided decoding guide type {guide_type!r}; expected one of "
                f"{', '.join(GUIDE_TYPES)}")
        if guide_type != "json" and (guide is None or not str(guide).strip()):
            raise RequestError(f"guided decoding guide type {guide_type!r} needs a guide")
        if guide_type == "json_schema":
            try:
                schema = json.loads(guide)
            except (TypeError, ValueError) as e:
                raise RequestError(f"invalid JSON schema: not valid JSON ({e})") from None
            if not isinstance(schema, (dict, bool)):
                raise RequestError("invalid JSON schema: must be a JSON object")

    def compile(self, guide_type: str, guide: Optional[str]):
        """Returns an ``xgrammar.CompiledGrammar``; raises RequestError for a bad guide or a
        compilation that takes longer than ``compile_timeout_s``. Blocks the caller for up to that
        long: the CPU decoder calls it from its compile threads, never from Triton's execute
        thread or the engine thread (llama_triton/engine/engine.py)."""
        self.check_guide(guide_type, guide)
        self._get_compiler()  # build TokenizerInfo outside the time limit
        if not self._running.acquire(blocking=False):
            raise RequestError("too many grammar compilations are running; retry later")
        box: dict = {}
        done = threading.Event()

        def work():
            try:
                box["result"] = self._compile_now(guide_type, guide)
            except BaseException as e:  # noqa: BLE001 - reported to the waiting caller
                box["error"] = e
            finally:
                self._running.release()
                done.set()

        thread = threading.Thread(target=work, name="xgrammar-compile", daemon=True)
        thread.start()
        if not done.wait(self.compile_timeout_s):
            raise RequestError(
                f"grammar compilation took longer than {self.compile_timeout_s:g} s "
                f"(guide type {guide_type!r})")
        if "error" in box:
            err = box["error"]
            if isinstance(err, RequestError):
                raise err
            what = {"json": "JSON grammar", "json_schema": "JSON schema", "regex": "regex",
                    "ebnf_grammar": "EBNF grammar"}[guide_type]
            raise RequestError(f"invalid {what}: {clean_error(err)}") from None
        return box["result"]

    def new_matcher(self, compiled: Any,
                    stop_token_ids: Optional[list[int]] = None) -> GuideMatcher:
        xgr = _import_xgrammar()
        stops = list(stop_token_ids) if stop_token_ids else self.default_stop_token_ids
        matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stops)
        return GuideMatcher(matcher, stops)

    @staticmethod
    def allocate_bitmask(batch_size: int, vocab_size: int) -> torch.Tensor:
        return _import_xgrammar().allocate_token_bitmask(batch_size, vocab_size)

    @staticmethod
    def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int],
                      vocab_size: int) -> None:
        _import_xgrammar().apply_token_bitmask_inplace(
            logits, bitmask, vocab_size=vocab_size, indices=rows)


# ---- the engine's way (TensorRT-LLM 1.2.1) --------------------------------------------------------

def tokenizer_info_payload(hf_tokenizer: Any, vocab_size: int) -> dict:
    """What TensorRT-LLM builds xgrammar's TokenizerInfo from (the fields of the backend's
    `xgrammar_tokenizer_info_path` file, llama_triton/gpu/build.py), from a loaded Hugging Face
    tokenizer: the vocabulary by id, the serialised fast tokenizer, the stop token ids. JSON-able,
    and needs no xgrammar, so a process without it (the frontend) can hand it to one with it."""
    vocab = hf_tokenizer.get_vocab()
    encoded = [""] * int(vocab_size)
    for token, i in vocab.items():
        if 0 <= i < vocab_size:
            encoded[i] = token
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    eos = getattr(hf_tokenizer, "eos_token_id", None)
    return {"encoded_vocab": encoded, "tokenizer_str": backend.to_str() if backend is not None else None,
            "stop_token_ids": [int(eos)] if eos is not None else [], "vocab_size": int(vocab_size)}


def tokenizer_info_from_payload(payload: dict):
    """xgrammar's TokenizerInfo as TensorRT-LLM 1.2.1 builds it: vocabulary type and prefix-space
    rule detected from the serialised tokenizer (tensorrt_llm/_torch/pyexecutor/grammar_matcher.py,
    XGrammarMatcherFactory, read at 0fccc5b; the C++ GuidedDecoder's TokenizerInfo::FromHuggingFace
    does the same from the same three fields, cpp/tensorrt_llm/batch_manager/guidedDecoder.cpp:45-55
    read at 000a01d; neither read at the v1.2.1 tag itself, which the index does not hold)."""
    xgr = _import_xgrammar()
    kwargs: dict = {}
    if payload.get("tokenizer_str"):
        meta = xgr.TokenizerInfo._detect_metadata_from_hf(payload["tokenizer_str"])
        kwargs = {"vocab_type": meta["vocab_type"], "add_prefix_space": meta["add_prefix_space"]}
    return xgr.TokenizerInfo(payload["encoded_vocab"], vocab_size=payload["vocab_size"],
                             stop_token_ids=payload["stop_token_ids"] or None, **kwargs)


def compile_like_engine(compiler: Any, guide_type: str, guide: Optional[str]):
    """Compiles (guide_type, guide) as TensorRT-LLM 1.2.1's C++ GuidedDecoder does
    (cpp/tensorrt_llm/batch_manager/guidedDecoder.cpp:85-110, read at 000a01d), with the same
    xgrammar version: ``json`` is the builtin JSON grammar (any value, free whitespace),
    ``json_schema`` compile_json_schema with its defaults (free whitespace), ``regex`` via
    Grammar.from_regex, ``ebnf_grammar`` via Grammar.from_ebnf (root rule ``root``). Raises
    whatever xgrammar raises: on the engine that exception fails every active request."""
    xgr = _import_xgrammar()
    if guide_type == "json":
        return compiler.compile_builtin_json_grammar()
    if guide_type == "json_schema":
        return compiler.compile_json_schema(guide)
    if guide_type == "regex":
        return compiler.compile_grammar(xgr.Grammar.from_regex(guide))
    if guide_type == "ebnf_grammar":
        return compiler.compile_grammar(xgr.Grammar.from_ebnf(guide))
    raise ValueError(f"the engine has no guide type {guide_type!r}")
