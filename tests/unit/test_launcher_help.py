"""`llama-triton serve --help` shows every option's default, and says what zero_cost is."""
from __future__ import annotations

import argparse

from llama_triton.serve.launcher import build_parser


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_every_serve_option_shows_its_default():
    serve = _serve_parser()
    text = serve.format_help()
    fmt = serve._get_formatter()
    for action in serve._actions:
        if not action.option_strings or action.dest == "help":
            continue
        shown = fmt._get_help_string(action) % {"default": action.default}
        assert "default" in shown, f"{action.option_strings[0]} does not show its default"
    assert "(default: 64)" in text          # --max-batch-size, from llama_triton.defaults


def test_decoder_kind_zero_cost_is_explained():
    kind = next(a for a in _serve_parser()._actions if "--decoder-kind" in a.option_strings)
    assert "NO model" in kind.help
