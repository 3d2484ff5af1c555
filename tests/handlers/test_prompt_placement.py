"""Where a chat prompt is templated and tokenized (frontend --inline-prompt-chars, off by default):
with the option, a short prompt without tools on the event loop, a long one or one with tools in a
worker thread; without it every prompt in a thread; and the same prompt ids either way."""
from __future__ import annotations

import threading

import pytest

from frontend.http import SERVICE
from tests.handlers.conftest import Harness

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
def make_harness(default_model_dir, default_tokenizer):
    made = []

    def make(*args: str) -> Harness:
        h = Harness(default_model_dir, default_tokenizer, *args)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def _placements(h: Harness, monkeypatch) -> list[bool]:
    """Records, per templating, whether it ran on the event loop's thread."""
    service = h.app[SERVICE]
    real = service._render_and_encode
    on_loop: list[bool] = []

    def recording(*args):
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real(*args)
    monkeypatch.setattr(service, "_render_and_encode", recording)
    return on_loop


def _prompt_ids(h: Harness, body: dict) -> list[int]:
    h.decoder.says("ok")
    status, _, out = h.chat({"stream": True, **body})
    assert status == 200, out
    return h.decoder.requests[-1][1]["input_ids"].reshape(-1).tolist()


def test_short_prompts_run_on_the_loop_long_ones_and_tools_in_a_thread(make_harness, monkeypatch):
    h = make_harness("--inline-prompt-chars", "100")
    on_loop = _placements(h, monkeypatch)
    _prompt_ids(h, {"messages": [{"role": "user", "content": "x" * 100}]})
    _prompt_ids(h, {"messages": [{"role": "user", "content": "x" * 101}]})
    _prompt_ids(h, {"messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]})
    assert on_loop == [True, False, False]


def test_by_default_every_prompt_is_templated_in_a_thread(make_harness, monkeypatch):
    h = make_harness()
    on_loop = _placements(h, monkeypatch)
    _prompt_ids(h, {"messages": [{"role": "user", "content": "Hi"}]})
    assert on_loop == [False]


@pytest.mark.parametrize("body", [
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello  there\n</s>"}]},
    {"messages": [{"role": "user", "content": "Weather?"}], "tools": [TOOL]},
])
def test_the_decoder_gets_the_same_prompt_ids_wherever_they_were_made(make_harness, body):
    in_thread = _prompt_ids(make_harness(), body)
    on_loop = _prompt_ids(make_harness("--inline-prompt-chars", "2048"), body)
    assert in_thread == on_loop and len(on_loop) > 5


def test_completions_prompt_text_gives_the_same_ids_on_the_loop_and_in_a_thread(make_harness):
    ids = []
    for args in ((), ("--inline-prompt-chars", "2048")):
        h = make_harness(*args)
        h.decoder.says("ok")
        status, _, _ = h.post("/v1/completions", {"model": h.model, "prompt": "Once upon a time </s>"})
        assert status == 200
        ids.append(h.decoder.requests[-1][1]["input_ids"].reshape(-1).tolist())
    assert ids[0] == ids[1]


def test_a_negative_bound_is_refused_at_start(default_model_dir, capsys):
    from frontend.settings import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--model-dir", str(default_model_dir), "--inline-prompt-chars", "-1"])
    assert "--inline-prompt-chars must be >= 0" in capsys.readouterr().err
