"""Compile a guide as the target engine does: the one helper every test uses for that.

`engine_compile(guide_type, guide)` compiles with xgrammar 0.1.32 (TensorRT-LLM 1.2.1's pin; the
test fails loudly on another version), over a TokenizerInfo built from the default model the way
the engine builds it, through `llama_triton.text.grammar.compile_like_engine` (the engine's
guide-type dispatch, cited there). It raises what the engine would raise: on a GPU that
exception fails every active request, so no guide we send may raise it.
`engine_accepts(guide_type, guide, text)` is that compiled guide's matcher on `text`, followed by
the stop token: does the engine allow exactly this output?
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from llama_triton.trtllm.backend_contract import ENGINE_XGRAMMAR

ROOT = Path(__file__).resolve().parents[1]


def _model_dir() -> str:
    return os.environ.get("LLAMA_TRITON_MODEL_DIR") or str(ROOT / "var" / "models" / "llama2-tiny")


def engine_compiler(model_dir: str | None = None):
    """The engine's GrammarCompiler for the model (cached): what `engine_compile` compiles with."""
    return _compiler(model_dir or _model_dir())


@lru_cache(maxsize=2)
def _compiler(model_dir: str):
    from importlib.metadata import version

    import xgrammar as xgr
    from transformers import AutoTokenizer

    from llama_triton.text.grammar import tokenizer_info_from_payload, tokenizer_info_payload

    assert version("xgrammar") == ENGINE_XGRAMMAR, f"xgrammar {version('xgrammar')} is not the engine's"
    hf = AutoTokenizer.from_pretrained(model_dir)
    info = tokenizer_info_from_payload(tokenizer_info_payload(hf, len(hf.get_vocab())))
    return xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)


def engine_compile(guide_type: str, guide, model_dir: str | None = None):
    """The engine's CompiledGrammar for (guide_type, guide); raises as the engine would."""
    from llama_triton.text.grammar import compile_like_engine

    return compile_like_engine(_compiler(model_dir or _model_dir()), guide_type, guide)


def engine_accepts(guide_type: str, guide, text: str, model_dir: str | None = None) -> bool:
    """Does the engine's matcher for this guide take exactly `text`, then the stop token?"""
    import xgrammar as xgr

    compiled = engine_compile(guide_type, guide, model_dir)
    matcher = xgr.GrammarMatcher(compiled)
    return bool(matcher.accept_string(text)) and bool(matcher.accept_token(compiled.tokenizer_info.stop_token_ids[0]))
