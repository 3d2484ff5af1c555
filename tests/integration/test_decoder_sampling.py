"""Each sampling parameter of the `tensorrt_llm` decoder, seen through Triton's gRPC interface.

Requests go straight to the decoupled `tensorrt_llm` model with token ids (and, where it adds
something, through the `ensemble` with text), one gRPC stream per request, on the real
tritonserver of the session `stack`. Expectations are exact, not statistical: greedy equivalences,
token-by-token agreement with a reference computation of the penalised logits (the same checkpoint
in transformers' LlamaForCausalLM), seeds reproduced inside a busy batch, grammar-valid output from
random weights, and TensorRT-LLM's end_id / stop / bad-word / min_tokens semantics.

The gRPC client helpers at the top are shared with test_decoder_batching.py.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import numpy as np
import pytest
import torch
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import np_to_triton_dtype

pytestmark = [
    pytest.mark.timeout(300),
    # exact expectations of the CPU reference decoder on the default model (and its counters)
    pytest.mark.skipif(bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")),
                       reason="needs the CPU reference decoder on the default model, not an external stack"),
]

DECODER = "tensorrt_llm"
ENSEMBLE = "ensemble"
EOS = 2  # the default model's </s>

# ----------------------------------------------------------------------------- gRPC helpers

# decoder scalar inputs (TensorRT-LLM names) and their numpy types
SCALAR_TYPES = {
    "temperature": np.float32, "runtime_top_k": np.int32, "runtime_top_p": np.float32,
    "min_p": np.float32, "repetition_penalty": np.float32, "presence_penalty": np.float32,
    "frequency_penalty": np.float32, "min_tokens": np.int32, "seed": np.uint64,
    "end_id": np.int32, "pad_id": np.int32, "num_return_sequences": np.int32,
    "return_log_probs": np.bool_, "num_top_log_probs": np.int32,
    "exclude_input_in_output": np.bool_, "beam_width": np.int32, "stop": np.bool_,
    # ensemble names
    "max_tokens": np.int32, "top_k": np.int32, "top_p": np.float32, "stream": np.bool_,
}

_ids = itertools.count()


def request_id(prefix: str) -> str:
    """Unique per test session (the decoder refuses an id that is still in flight)."""
    return f"{prefix}-{next(_ids)}"


@dataclass
class Generation:
    """Everything a request's responses carried, per sequence_index."""
    request_id: str
    tokens: dict[int, list[int]] = field(default_factory=dict)
    log_probs: dict[int, list[float]] = field(default_factory=dict)
    cum_log_probs: dict[int, list[float]] = field(default_factory=dict)   # one per response
    top_ids: dict[int, list[list[int]]] = field(default_factory=dict)      # per token, best first
    top_log_probs: dict[int, list[list[float]]] = field(default_factory=dict)
    texts: dict[int, list[str]] = field(default_factory=dict)              # ensemble text_output
    is_final: dict[int, list[bool]] = field(default_factory=dict)          # per response
    responses: list[dict[str, np.ndarray]] = field(default_factory=list)   # responses with tensors
    num_final_flags: int = 0     # Triton responses flagged final (exactly one per request)
    error: Optional[str] = None

    @property
    def ids(self) -> list[int]:
        return self.tokens.get(0, [])

    @property
    def text(self) -> str:
        return "".join(self.texts.get(0, []))

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        idx = int(arrays["sequence_index"].reshape(-1)[0]) if "sequence_index" in arrays else 0
        if "output_ids" in arrays:
            ids = arrays["output_ids"].reshape(-1).tolist()
            if "sequence_length" in arrays:
                ids = ids[: int(arrays["sequence_length"].reshape(-1)[0])]
            self.tokens.setdefault(idx, []).extend(ids)
        if "output_log_probs" in arrays:
            self.log_probs.setdefault(idx, []).extend(arrays["output_log_probs"].reshape(-1).tolist())
        if "cum_log_probs" in arrays:
            self.cum_log_probs.setdefault(idx, []).append(float(arrays["cum_log_probs"].reshape(-1)[0]))
        if "top_log_prob_ids" in arrays:
            n = arrays["top_log_prob_ids"].shape[-1]
            self.top_ids.setdefault(idx, []).extend(arrays["top_log_prob_ids"].reshape(-1, n).tolist())
            self.top_log_probs.setdefault(idx, []).extend(arrays["top_log_probs"].reshape(-1, n).tolist())
        if "text_output" in arrays:
            self.texts.setdefault(idx, []).append(b"".join(arrays["text_output"].reshape(-1)).decode())
        if "is_final" in arrays:
            self.is_final.setdefault(idx, []).append(bool(arrays["is_final"].reshape(-1)[0]))


def decoder_arrays(ids: list[int], max_tokens: int, *, streaming: bool = True,
                   raw: Optional[dict[str, np.ndarray]] = None, **params: Any) -> dict[str, np.ndarray]:
    """The `tensorrt_llm` input tensors (batch 1) of one request; `raw` overrides any of them."""
    arrays = {
        "input_ids": np.asarray([ids], dtype=np.int32),
        "input_lengths": np.asarray([[len(ids)]], dtype=np.int32),
        "request_output_len": np.asarray([[max_tokens]], dtype=np.int32),
        "streaming": np.asarray([[streaming]], dtype=bool),
    }
    for name, value in params.items():
        if name in ("stop_words_list", "bad_words_list"):
            arrays[name] = np.asarray(value, dtype=np.int32)[None]        # [1, 2, L]
        elif name == "embedding_bias":
            arrays[name] = np.asarray(value, dtype=np.float32)[None]      # [1, vocab]
        elif name.startswith("guided_decoding"):
            arrays[name] = np.asarray([[value.encode()]], dtype=object)
        else:
            arrays[name] = np.asarray([[value]], dtype=SCALAR_TYPES[name])
    arrays.update(raw or {})
    return arrays


def ensemble_arrays(text: str, max_tokens: int, *, stream: bool = True, **params: Any) -> dict[str, np.ndarray]:
    arrays = {"text_input": np.asarray([[text.encode()]], dtype=object),
              "max_tokens": np.asarray([[max_tokens]], dtype=np.int32),
              "stream": np.asarray([[stream]], dtype=bool)}
    for name, value in params.items():
        if name.startswith("guided_decoding"):
            arrays[name] = np.asarray([[value.encode()]], dtype=object)
        else:
            arrays[name] = np.asarray([[value]], dtype=SCALAR_TYPES[name])
    return arrays


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcaio.InferInput]:
    out = []
    for name, arr in arrays.items():
        t = grpcaio.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


OnResponse = Callable[[Generation, dict[str, np.ndarray]], Awaitable[Optional[bool]]]


async def stream_request(client: grpcaio.InferenceServerClient, model: str, arrays: dict[str, np.ndarray],
                         rid: str, *, on_response: Optional[OnResponse] = None,
                         timeout: float = 120.0) -> Generation:
    """Sends one request on its own gRPC stream and collects its responses until the final one.

    A Triton error ends the request (`Generation.error`). `on_response` returning False closes
    the stream right there (a client that goes away)."""
    gen = Generation(rid)
    done = asyncio.Event()
    inputs = _inputs(arrays)

    async def requests():
        # tritonclient.grpc.aio ignores an `enable_empty_final_response` key (only the sync
        # client maps it), so the request parameter is set directly.
        yield {"model_name": model, "inputs": inputs, "request_id": rid,
               "parameters": {"triton_enable_empty_final_response": True}}
        await done.wait()   # keep the stream open until the final response

    call = client.stream_infer(requests())
    finished = False

    async def consume() -> None:
        nonlocal finished
        async for result, error in call:
            if error is not None:
                gen.error = str(error)
                finished = True
                return
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            gen.num_final_flags += final
            finished = finished or final
            if resp.outputs:
                arrays_out = {o.name: result.as_numpy(o.name) for o in resp.outputs}
                gen.responses.append(arrays_out)
                gen.add(arrays_out)
                if on_response is not None and await on_response(gen, arrays_out) is False:
                    return
            if final:
                return

    try:
        await asyncio.wait_for(consume(), timeout)
    finally:
        done.set()   # half-closes the stream
        if not finished:
            call.cancel()   # closes the gRPC stream
    if finished:
        # Let Triton end the RPC before the caller closes the channel: closing it right after the
        # final response leaves Triton 2.51 holding the stream, and with it the model, so that it
        # cannot unload at shutdown (it waits out its exit timeout).
        try:
            await asyncio.wait_for(_drain(call), 10)
        except Exception:
            call.cancel()
    return gen


async def _drain(call) -> None:
    async for _ in call:
        pass


@dataclass
class Call:
    """One request for `run_concurrently`."""
    arrays: dict[str, np.ndarray]
    rid: str
    model: str = DECODER
    on_response: Optional[OnResponse] = None


async def _gather(url: str, calls: list[Call]) -> list[Generation]:
    client = grpcaio.InferenceServerClient(url)
    try:
        return list(await asyncio.gather(*(stream_request(client, c.model, c.arrays, c.rid,
                                                          on_response=c.on_response) for c in calls)))
    finally:
        await client.close()


def run_concurrently(url: str, calls: list[Call]) -> list[Generation]:
    """All calls at once, each on its own stream; results in the order of `calls`."""
    return asyncio.run(_gather(url, calls))


def generate(url: str, ids: list[int], max_tokens: int, *, prefix: str = "req", **params: Any) -> Generation:
    """One `tensorrt_llm` request; fails the test on a Triton error."""
    gen = run_concurrently(url, [Call(decoder_arrays(ids, max_tokens, **params), request_id(prefix))])[0]
    assert gen.error is None, gen.error
    assert gen.num_final_flags == 1
    return gen


def generate_ensemble(url: str, text: str, max_tokens: int, *, prefix: str = "ens", **params: Any) -> Generation:
    gen = run_concurrently(url, [Call(ensemble_arrays(text, max_tokens, **params), request_id(prefix),
                                      model=ENSEMBLE)])[0]
    assert gen.error is None, gen.error
    return gen


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def url(stack) -> str:
    return stack.grpc_url


@pytest.fixture(scope="module")
def prompt(default_tokenizer) -> list[int]:
    # Greedy decoding of the random default model loops on this prompt (14 distinct tokens in
    # 24, one of them 5 times). In every penalty case below the reference's top-2 logit gap stays
    # >= 1.8e-3 at every step (>= 2.4e-4 on the looping prompt), far above the ~1e-6 float32
    # difference between the decoder and transformers.
    return default_tokenizer.encode("The quick brown fox jumps over the lazy dog", add_special_tokens=True)


@pytest.fixture(scope="module")
def other_prompts(default_tokenizer) -> list[list[int]]:
    texts = ["Once upon a time", "def fibonacci(n):", "Paris is the capital of", "SELECT * FROM",
             "Dear diary, today", "1, 2, 3, 4,", "In a hole in the ground", "Das ist ein Test"]
    return [default_tokenizer.encode(t, add_special_tokens=True) for t in texts]


@pytest.fixture(scope="module")
def hf_model(default_model_dir):
    """The same checkpoint in transformers: the reference for logits."""
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(default_model_dir)).float().eval()


@pytest.fixture(scope="module")
def greedy(url, prompt) -> list[int]:
    return generate(url, prompt, 24, temperature=0.0).ids


@torch.no_grad()
def next_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids])).logits[0, -1].float()


def penalised(logits: torch.Tensor, prompt: list[int], generated: list[int], repetition: float = 1.0,
              presence: float = 0.0, frequency: float = 0.0, variant: Optional[str] = None) -> torch.Tensor:
    """The reference: CTRL/HF multiplicative repetition penalty over prompt + generated ids, then
    OpenAI's additive presence/frequency penalties over generated ids.

    `variant` names a plausible mistake, to show that a test tells it apart: "generated_only"
    (repetition penalty without the prompt), "additive_first" (the two steps swapped),
    "frequency_as_presence" (counts capped at 1)."""
    x = logits.clone()

    def multiplicative() -> None:
        ids = set(generated) if variant == "generated_only" else set(prompt) | set(generated)
        if repetition != 1.0 and ids:
            seen = torch.tensor(sorted(ids))
            v = x[seen]
            x[seen] = torch.where(v > 0, v / repetition, v * repetition)

    def additive() -> None:
        for token, count in Counter(generated).items():
            x[token] -= presence + frequency * (1 if variant == "frequency_as_presence" else count)

    if variant == "additive_first":
        additive()
        multiplicative()
    else:
        multiplicative()
        additive()
    return x


def first_disagreement(model, prompt: list[int], out: list[int], variant: Optional[str] = None,
                       **penalties: float) -> Optional[tuple[int, int, torch.Tensor]]:
    """Teacher-forced: the first step whose decoder token is not the argmax of the reference's
    penalised logits (for the prompt and the decoder's own tokens before it), or None."""
    for t, token in enumerate(out):
        ref = penalised(next_logits(model, prompt + out[:t]), prompt, out[:t], variant=variant, **penalties)
        if token != int(ref.argmax()):
            return t, token, ref
    return None


def assert_matches_reference(model, prompt: list[int], out: list[int], **penalties: float) -> None:
    miss = first_disagreement(model, prompt, out, **penalties)
    if miss is not None:
        t, token, ref = miss
        top = torch.topk(ref, 2)
        raise AssertionError(f"step {t}: decoder chose {token}, the reference {int(top.indices[0])} "
                             f"(reference margin {float(top.values[0] - top.values[1]):.2e}; decoder "
                             f"token's reference logit {float(ref[token]):.5f} vs {float(top.values[0]):.5f})")


def max_repeats(tokens: list[int]) -> int:
    return max(Counter(tokens).values())


# ----------------------------------------------------------------------------- greedy equivalences


def test_greedy_matches_the_reference_model(url, prompt, greedy, hf_model):
    assert len(greedy) == 24
    assert_matches_reference(hf_model, prompt, greedy)
    assert max_repeats(greedy) >= 3, "the prompt should make the random model loop"


@pytest.mark.parametrize("params", [
    dict(runtime_top_k=1, temperature=1.0, seed=1),
    dict(runtime_top_k=1, temperature=5.0, seed=2, runtime_top_p=0.5),
    dict(runtime_top_k=1, temperature=1e-6, seed=3),
    dict(min_p=1.0, temperature=1.0, seed=4),
    dict(min_p=1.0, temperature=0.7, seed=5, runtime_top_k=40),
    dict(temperature=1e-6, seed=6),
], ids=["top_k1", "top_k1_hot_top_p", "top_k1_tiny_temp", "min_p1", "min_p1_top_k40", "tiny_temp"])
def test_top_k_1_and_min_p_1_equal_greedy(url, prompt, greedy, params):
    assert generate(url, prompt, 24, **params).ids == greedy


def test_sampling_without_truncation_is_not_greedy(url, prompt, greedy):
    # The control for the test above: the same seeds without top_k=1 / min_p=1 do sample.
    for seed in (1, 4):
        assert generate(url, prompt, 24, temperature=1.0, seed=seed).ids != greedy


def test_ensemble_top_k_1_equals_greedy(url):
    text = "Tell me about the weather"
    greedy_ids = generate_ensemble(url, text, 16, temperature=0.0).ids
    assert len(greedy_ids) == 16
    assert generate_ensemble(url, text, 16, temperature=2.0, top_k=1, seed=11).ids == greedy_ids
    assert generate_ensemble(url, text, 16, temperature=1.0, min_p=1.0, seed=12).ids == greedy_ids


# ----------------------------------------------------------------------------- penalties


PENALTY_CASES = {
    # id: (prompt, penalties, effect on the looping greedy output, a wrong formula the case rules out)
    "repetition5": ("plain", dict(repetition_penalty=5.0), "fewer", None),
    "repetition5_prompt": ("looping", dict(repetition_penalty=5.0), "fewer", "generated_only"),
    "presence1": ("plain", dict(presence_penalty=1.0), "fewer", None),
    "frequency0.5": ("plain", dict(frequency_penalty=0.5), "fewer", None),
    "frequency0.03": ("plain", dict(frequency_penalty=0.03), "fewer", "frequency_as_presence"),
    "presence-0.5": ("plain", dict(presence_penalty=-0.5), "more", None),     # rewards repeating
    "combined": ("plain", dict(repetition_penalty=1.5, presence_penalty=0.3, frequency_penalty=0.2), "fewer", None),
    "combined_order": ("looping", dict(repetition_penalty=2.0, presence_penalty=-0.5), None, "additive_first"),
}


@pytest.mark.parametrize("case", list(PENALTY_CASES))
def test_penalties_match_the_reference(url, prompt, greedy, hf_model, case):
    which, penalties, direction, rival = PENALTY_CASES[case]
    # "looping": the prompt already holds the start of the greedy loop, so the greedy next token
    # is a prompt token and only a penalty that covers the prompt avoids it.
    p = prompt if which == "plain" else prompt + greedy[:10]
    base = greedy if which == "plain" else generate(url, p, 24, temperature=0.0).ids   # unpenalised
    out = generate(url, p, 24, temperature=0.0, **penalties).ids
    assert len(out) == 24
    ref_kw = {"repetition": penalties.get("repetition_penalty", 1.0),
              "presence": penalties.get("presence_penalty", 0.0),
              "frequency": penalties.get("frequency_penalty", 0.0)}
    assert_matches_reference(hf_model, p, out, **ref_kw)
    assert out != base
    if which == "looping":
        assert base[0] in p and out[0] != base[0]
    if direction == "fewer":
        assert max_repeats(out) < max_repeats(base)
    elif direction == "more":
        assert max_repeats(out) > max_repeats(base)
    if penalties.get("repetition_penalty", 1.0) >= 5 or penalties.get("presence_penalty", 0.0) >= 1:
        assert len(set(out)) == len(out), "a strong penalty should stop every repeat"
    if rival is not None:
        # the prompt and settings are chosen so that the case can fail: the wrong formula differs
        assert first_disagreement(hf_model, p, out, variant=rival, **ref_kw) is not None, rival


# ----------------------------------------------------------------------------- seeds


def test_seed_reproduces_alone_and_inside_a_busy_batch(url, prompt, other_prompts):
    # The engine's logits move by ~6e-7 with the batch shape (float32 kernels are not batch
    # invariant). Over the random model's 32000 near-uniform logits that is enough to move an
    # untruncated inverse-CDF draw to a neighbouring id now and then, and to flip a top-k / top-p
    # cut where two logits are that close. So the target samples from its top 4, and for this
    # prompt and seed every step keeps >= 9e-4 between the 4th and 5th logit and >= 3e-2 between
    # its uniform draw and the nearest split of the 4 (checked offline with the same sampler on
    # the transformers reference): only a real dependence on the batch can change its tokens.
    target = dict(temperature=0.9, runtime_top_k=4, seed=1234)
    alone = generate(url, prompt, 16, **target).ids
    assert len(alone) == 16
    assert generate(url, prompt, 16, **target).ids == alone
    assert generate(url, prompt, 16, **{**target, "seed": 1235}).ids != alone

    others = [
        dict(temperature=0.0),
        dict(temperature=1.0, seed=1234),                       # same seed, other settings
        dict(temperature=0.9, runtime_top_k=50, runtime_top_p=0.95, seed=99),
        dict(temperature=1.3, min_p=0.05, seed=7),
        dict(temperature=0.7, runtime_top_p=0.5, seed=8),
        dict(temperature=1.0, repetition_penalty=1.3, seed=9),
        dict(temperature=1.0, presence_penalty=0.5, frequency_penalty=0.5, seed=10),
        dict(temperature=1.0, return_log_probs=True, num_top_log_probs=5, seed=11),
        dict(temperature=1.0, num_return_sequences=2, seed=12),
        dict(temperature=0.5, runtime_top_k=3, seed=13, min_tokens=4, end_id=EOS),
        dict(temperature=1.0, seed=14, bad_words_list=[[alone[0], alone[1]], [1, 2]]),
        dict(temperature=2.0, seed=15, embedding_bias=np.linspace(-1, 1, 32000)),
        dict(runtime_top_k=1, seed=16),
        dict(temperature=1.0, seed=17, streaming=False),
        dict(temperature=1.0, seed=18, runtime_top_k=1000, runtime_top_p=0.9, min_p=0.01),
        dict(temperature=0.8, seed=19, repetition_penalty=0.8),
    ]
    assert len(others) == 16
    calls = []
    for i, params in enumerate(others):
        p = prompt if i < 3 else other_prompts[i % len(other_prompts)]
        calls.append(Call(decoder_arrays(p, 8 + i, **params), request_id("busy")))
    calls.insert(8, Call(decoder_arrays(prompt, 16, **target), request_id("seeded")))
    results = run_concurrently(url, calls)
    assert all(r.error is None for r in results), [r.error for r in results if r.error]
    assert results[8].ids == alone
    # and the requests around it really differ from it
    assert all(r.ids != alone for i, r in enumerate(results) if i != 8)


# ----------------------------------------------------------------------------- guided decoding


SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["color", "count"],
    "additionalProperties": False,
}


def _text(tokenizer, ids: list[int]) -> str:
    # The exact bytes the grammar constrained (no SentencePiece leading-space strip).
    return b"".join(tokenizer.token_bytes[i] for i in ids).decode("utf-8")


def _validate_schema(value: Any) -> None:
    try:
        import jsonschema
    except ImportError:   # by hand
        assert isinstance(value, dict) and set(value) == {"color", "count"}
        assert value["color"] in ("red", "green", "blue")
        assert isinstance(value["count"], int) and 1 <= value["count"] <= 9
        return
    jsonschema.validate(value, SCHEMA)


@pytest.mark.parametrize("params", [dict(temperature=0.0), dict(temperature=1.0, seed=5),
                                    dict(temperature=1.5, seed=6)], ids=["greedy", "seed5", "seed6_hot"])
def test_guided_json_schema_validates(url, default_tokenizer, params):
    ids = default_tokenizer.encode("Give me JSON:", add_special_tokens=True)
    gen = generate(url, ids, 64, guided_decoding_guide_type="json_schema",
                   guided_decoding_guide=json.dumps(SCHEMA), end_id=EOS, **params)
    assert 0 < len(gen.ids) < 64, "the grammar should end the sequence before the length limit"
    assert EOS not in gen.ids
    _validate_schema(json.loads(_text(default_tokenizer, gen.ids)))


def test_guided_json_object_parses(url, default_tokenizer):
    # `json` is any object: with random weights the strings and nesting inside never end, so an
    # embedding bias (a TensorRT-LLM input too) favours '"' and ' "' over '}' over the rest, and
    # the grammar decides where each may go: an object needs a key before '}' can win.
    bias = np.zeros(len(default_tokenizer.token_bytes), dtype=np.float32)
    for i, b in enumerate(default_tokenizer.token_bytes):
        if b in (b'"', b' "'):
            bias[i] = 20.0
        elif b == b"}":
            bias[i] = 10.0
    ids = default_tokenizer.encode("Any JSON object:", add_special_tokens=True)
    for params in (dict(temperature=0.0), dict(temperature=1.0, seed=3)):
        gen = generate(url, ids, 32, guided_decoding_guide_type="json", end_id=EOS,
                       embedding_bias=bias, **params)
        assert 0 < len(gen.ids) < 32
        value = json.loads(_text(default_tokenizer, gen.ids))
        assert isinstance(value, dict) and value


REGEX = r"(yes|no), [0-9]{1,2}!"


def test_guided_regex_decoder_and_ensemble(url, default_tokenizer):
    ids = default_tokenizer.encode("Answer:", add_special_tokens=True)
    for params in (dict(temperature=0.0), dict(temperature=1.0, seed=21)):
        gen = generate(url, ids, 16, guided_decoding_guide_type="regex", guided_decoding_guide=REGEX,
                       end_id=EOS, **params)
        assert re.fullmatch(REGEX, _text(default_tokenizer, gen.ids)), _text(default_tokenizer, gen.ids)
    # the text path: the ensemble's preprocessing supplies end_id, postprocessing the text
    gen = generate_ensemble(url, "Answer:", 16, guided_decoding_guide_type="regex",
                            guided_decoding_guide=REGEX, temperature=1.0, seed=22)
    assert re.fullmatch(REGEX, gen.text), gen.text


def test_guided_ebnf_grammar(url, default_tokenizer):
    grammar = 'root ::= "answer: " choice "."\nchoice ::= "A" | "B" | "C"'
    ids = default_tokenizer.encode("Pick one:", add_special_tokens=True)
    seen = set()
    for params in (dict(temperature=0.0), dict(temperature=1.0, seed=5), dict(temperature=1.0, seed=6)):
        gen = generate(url, ids, 16, guided_decoding_guide_type="ebnf_grammar", guided_decoding_guide=grammar,
                       end_id=EOS, **params)
        text = _text(default_tokenizer, gen.ids)
        assert re.fullmatch(r"answer: [ABC]\.", text), text
        seen.add(text)
    assert len(seen) > 1, "sampling should pick different alternatives for different seeds"


# ----------------------------------------------------------------------------- log-probs


@pytest.mark.parametrize("streaming", [True, False])
def test_log_probs_shapes_and_greedy_top1(url, prompt, greedy, hf_model, streaming):
    n, k = 8, 5
    gen = generate(url, prompt, n, temperature=0.0, return_log_probs=True, num_top_log_probs=k,
                   streaming=streaming)
    assert gen.ids == greedy[:n]
    if streaming:
        assert len(gen.responses) == n
        for r in gen.responses:
            assert r["output_ids"].shape == (1, 1, 1)
            assert r["output_log_probs"].shape == (1, 1, 1)
            assert r["cum_log_probs"].shape == (1, 1)
            assert r["top_log_probs"].shape == (1, 1, 1, k)
            assert r["top_log_prob_ids"].shape == (1, 1, 1, k)
    else:
        assert len(gen.responses) == 1
        r = gen.responses[0]
        assert r["output_ids"].shape == (1, 1, n)
        assert r["output_log_probs"].shape == (1, 1, n)
        assert r["cum_log_probs"].shape == (1, 1)
        assert r["top_log_probs"].shape == (1, 1, n, k)
        assert r["top_log_prob_ids"].shape == (1, 1, n, k)
        assert gen.cum_log_probs[0][0] == pytest.approx(sum(gen.log_probs[0]), abs=1e-4)
    lps, top_ids, top_lps = gen.log_probs[0], gen.top_ids[0], gen.top_log_probs[0]
    assert len(lps) == len(top_ids) == len(top_lps) == n
    for t in range(n):
        # under greedy the chosen token is the top-1 alternative, with the same log-prob
        assert top_ids[t][0] == gen.ids[t]
        assert top_lps[t][0] == lps[t]
        assert all(a >= b for a, b in zip(top_lps[t], top_lps[t][1:]))
        assert len(set(top_ids[t])) == k
        # and it is log_softmax of the model's logits (no penalties here)
        ref = torch.log_softmax(next_logits(hf_model, prompt + gen.ids[:t]), -1)
        assert lps[t] == pytest.approx(float(ref[gen.ids[t]]), abs=1e-4)
        assert top_lps[t] == pytest.approx(torch.topk(ref, k).values.tolist(), abs=1e-4)


# ----------------------------------------------------------------------------- n > 1


def test_num_return_sequences(url, prompt):
    # top 4 only, as in the seed test: sequence 0 decodes in a batch of 3 here and alone below,
    # and for this prompt and seed its draws keep well clear of float-noise ties (>= 1e-3).
    params = dict(temperature=1.0, runtime_top_k=4, seed=42)
    gen = generate(url, prompt, 8, num_return_sequences=3, **params)
    assert sorted(gen.tokens) == [0, 1, 2]
    assert all(len(gen.tokens[i]) == 8 for i in range(3))
    assert len({tuple(gen.tokens[i]) for i in range(3)}) == 3, gen.tokens
    assert all("sequence_index" in r for r in gen.responses)
    assert all(flags.count(True) == 1 and flags[-1] for flags in gen.is_final.values())
    assert gen.num_final_flags == 1
    # sequence 0 draws from the same stream as a single sequence with that seed
    assert gen.tokens[0] == generate(url, prompt, 8, **params).ids
    # and the whole set is reproducible
    again = generate(url, prompt, 8, num_return_sequences=3, **params)
    assert again.tokens == gen.tokens


# ----------------------------------------------------------------------------- stop conditions


def _first_new(tokens: list[int], start: int) -> int:
    """An index >= start whose token does not occur earlier in `tokens`."""
    for k in range(start, len(tokens)):
        if tokens[k] not in tokens[:k]:
            return k
    raise AssertionError(f"no fresh token after {start} in {tokens}")


def test_end_id_stops_and_is_not_returned(url, prompt, greedy):
    k = _first_new(greedy, 3)
    gen = generate(url, prompt, 24, temperature=0.0, end_id=greedy[k])
    assert gen.ids == greedy[:k]
    assert gen.is_final[0][-1]
    # the end_id step's response carries no token
    assert gen.responses[-1]["output_ids"].size == 0
    # non-streamed: the same tokens in one response
    assert generate(url, prompt, 24, temperature=0.0, end_id=greedy[k], streaming=False).ids == greedy[:k]
    # end_id -1 means none
    assert generate(url, prompt, 24, temperature=0.0, end_id=-1).ids == greedy


def test_min_tokens_suppresses_end_id(url, prompt, greedy, hf_model):
    k = _first_new(greedy, 2)
    end_id = greedy[k]
    gen = generate(url, prompt, 24, temperature=0.0, end_id=end_id, min_tokens=k + 4)
    out = gen.ids
    assert out[:k] == greedy[:k]
    assert len(out) >= k + 4
    assert end_id not in out[:k + 4]
    # at step k the end_id was masked: the decoder took the reference's best other token
    ref = next_logits(hf_model, prompt + greedy[:k])
    ref[end_id] = -float("inf")
    assert out[k] == int(ref.argmax())
    # without min_tokens the same request stops at step k
    assert generate(url, prompt, 24, temperature=0.0, end_id=end_id).ids == greedy[:k]


def test_stop_words(url, prompt, greedy):
    k = _first_new(greedy, 3)
    # a single-token stop word is returned, and generation stops there
    single = [[greedy[k]], [1]]
    assert generate(url, prompt, 24, temperature=0.0, stop_words_list=single).ids == greedy[:k + 1]
    # a two-token stop word stops after its second token
    pair = [[greedy[k], greedy[k + 1]], [2, -1]]
    assert generate(url, prompt, 24, temperature=0.0, stop_words_list=pair).ids == greedy[:k + 2]
    # several words, padded offsets: the first to complete wins
    several = [[31999, 31998, greedy[k], greedy[k + 1]], [2, 4, -1, -1]]
    assert generate(url, prompt, 24, temperature=0.0, stop_words_list=several).ids == greedy[:k + 2]
    # a stop word that never occurs changes nothing
    assert generate(url, prompt, 24, temperature=0.0, stop_words_list=[[31999], [1]]).ids == greedy


def test_bad_words(url, prompt, greedy, hf_model):
    # greedy loops, so its most repeated token is a good victim
    victim, _ = Counter(greedy).most_common(1)[0]
    k = greedy.index(victim)
    out = generate(url, prompt, 24, temperature=0.0, bad_words_list=[[victim], [1]]).ids
    assert len(out) == 24
    assert victim not in out
    assert out[:k] == greedy[:k]
    ref = next_logits(hf_model, prompt + greedy[:k])
    ref[victim] = -float("inf")
    assert out[k] == int(ref.argmax())

    # a two-token bad word masks its last token only right after its first
    j = next(j for j in range(1, len(greedy)) if greedy[j] not in greedy[:j] and greedy[j - 1] != greedy[j])
    pair = [greedy[j - 1], greedy[j]]
    out = generate(url, prompt, 24, temperature=0.0, bad_words_list=[pair, [2, -1]]).ids
    assert out[:j] == greedy[:j]
    assert out[j] != greedy[j]
    assert all(out[i:i + 2] != pair for i in range(len(out) - 1))
    # and bad words reach back into the prompt: the prompt's last token + greedy[0]
    out = generate(url, prompt, 24, temperature=0.0, bad_words_list=[[prompt[-1], greedy[0]], [2, -1]]).ids
    assert out[0] != greedy[0]
