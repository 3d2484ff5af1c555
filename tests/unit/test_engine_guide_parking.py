"""Issue 24 finding 4: the CPU decoder never compiles a guide on the caller's thread (Triton's execute
thread, which also answers the health probes) nor on the engine thread. A guided request waits,
parked in the scheduler, until its grammar is ready, while other requests keep decoding."""
from __future__ import annotations

import shutil
import threading

import pytest

from llama_triton.engine.config import EngineConfig
from llama_triton.engine.engine import Engine
from llama_triton.engine.types import GenerationRequest, SamplingParams, SequenceOutput
from llama_triton.engine.sampler import Sampler
from llama_triton.text.grammar import GuideCompiler
from tests.unit.tiny_models import tiny_llama, torch_threads

VOCAB = 32000       # the Llama-2 tokenizer's: guided decoding needs a real vocabulary
WAIT_S = 120        # generous bounds on event waits (a loaded box), never a pass/fail timing


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, default_model_dir):
    path = tmp_path_factory.mktemp("tiny-llama-32k")
    hf = tiny_llama(VOCAB)
    hf.generation_config.eos_token_id = 2
    hf.save_pretrained(str(path))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(default_model_dir / name, path / name)
    return str(path)


class Outputs:
    def __init__(self) -> None:
        self.by_id: dict[str, list[SequenceOutput]] = {}
        self.finished: dict[str, threading.Event] = {}

    def expect(self, request_id: str) -> None:
        self.by_id[request_id] = []
        self.finished[request_id] = threading.Event()

    def __call__(self, out: SequenceOutput) -> None:
        self.by_id[out.request_id].append(out)
        if out.finished:
            self.finished[out.request_id].set()


def test_a_slow_guide_parks_its_request_and_others_keep_decoding(checkpoint, monkeypatch):
    release, started = threading.Event(), threading.Event()
    compile_threads: list[str] = []
    real, real_compile = GuideCompiler._compile_now, GuideCompiler.compile

    def slow_compile(self, guide_type, guide):
        release.wait(WAIT_S)
        return real(self, guide_type, guide)

    def compile_entry(self, guide_type, guide):
        compile_threads.append(threading.current_thread().name)     # whoever waits for the compile
        started.set()
        return real_compile(self, guide_type, guide)

    monkeypatch.setattr(GuideCompiler, "_compile_now", slow_compile)
    monkeypatch.setattr(GuideCompiler, "compile", compile_entry)
    with torch_threads(1):
        engine = Engine(checkpoint, EngineConfig(max_batch_size=4, max_num_tokens=2048, block_size=16,
                                                 max_seq_len=256),
                        sampler_factory=lambda v, tok: Sampler(v, tok, guide_compile_timeout_s=WAIT_S))
        outputs = Outputs()
        outputs.expect("guided")
        outputs.expect("plain")
        # The engine's counts are published at the end of a step, after its outputs went out:
        # read them once the step that finished "plain" has ended, not when its callback fired.
        counted = threading.Event()
        engine.add_step_listener(lambda: outputs.finished["plain"].is_set() and counted.set(), at_end=True)
        engine.start()
        try:
            submitter = threading.current_thread().name
            # returns at once, although the compile cannot finish until `release` (on main it
            # compiled here and this call raised "grammar compilation took longer" after WAIT_S)
            engine.submit(GenerationRequest("guided", [1, 450, 1234], SamplingParams(
                max_new_tokens=8, temperature=0.0, end_id=2, guide_type="regex", guide="(yes|no)")), outputs)
            engine.submit(GenerationRequest("plain", [1, 450, 1235], SamplingParams(
                max_new_tokens=6, temperature=0.0)), outputs)
            assert outputs.finished["plain"].wait(WAIT_S)
            assert [o.finish_reason for o in outputs.by_id["plain"] if o.finished] == ["length"]
            assert outputs.by_id["guided"] == []             # still parked, nothing sent
            assert counted.wait(WAIT_S)
            assert engine.num_waiting == 1 and engine.num_running == 0
            assert started.wait(WAIT_S)
            assert submitter not in compile_threads
            assert "llama-triton-engine" not in compile_threads
            release.set()
            assert outputs.finished["guided"].wait(WAIT_S)
            final = outputs.by_id["guided"][-1]
            assert final.error is None and final.finish_reason in ("stop", "length")
        finally:
            release.set()
            engine.shutdown()


def test_cancel_and_bad_guides_while_parked(checkpoint, monkeypatch):
    release = threading.Event()
    real = GuideCompiler._compile_now

    def slow_compile(self, guide_type, guide):
        release.wait(WAIT_S)
        return real(self, guide_type, guide)

    monkeypatch.setattr(GuideCompiler, "_compile_now", slow_compile)
    with torch_threads(1):
        engine = Engine(checkpoint, EngineConfig(max_batch_size=4, max_num_tokens=2048, block_size=16,
                                                 max_seq_len=256),
                        sampler_factory=lambda v, tok: Sampler(v, tok, guide_compile_timeout_s=WAIT_S))
        engine.start()
        try:
            outputs = Outputs()
            for rid, guide in (("cancelled", "a+"), ("bad", "(unclosed")):
                outputs.expect(rid)
                engine.submit(GenerationRequest(rid, [1, 450], SamplingParams(
                    max_new_tokens=4, guide_type="regex", guide=guide)), outputs)
            engine.cancel("cancelled")
            assert outputs.finished["cancelled"].wait(WAIT_S)
            assert [o.finish_reason for o in outputs.by_id["cancelled"]] == ["cancelled"]
            release.set()
            assert outputs.finished["bad"].wait(WAIT_S)
            final = outputs.by_id["bad"][-1]
            assert final.finish_reason == "error" and "invalid regex" in final.error
            assert engine.num_waiting == 0
        finally:
            release.set()
            engine.shutdown()
