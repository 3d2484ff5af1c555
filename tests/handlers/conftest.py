"""The handler layer: the real aiohttp app, service and generation logic against a scripted decoder.

No Triton, no engine: `FakeDecoder` implements frontend/decoder/interface.py's `DecoderClient` and answers
each request with what the test scripted, so these tests pin the OpenAI semantics (stop strings, n,
tools, reasoning, usage, logprobs, error statuses) in seconds. The end-to-end tests in
tests/integration/ keep checking the same paths against the real stack.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import numpy as np
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from tritonclient.utils import np_to_triton_dtype

from frontend.http import SETTINGS, create_app
from frontend.decoder.interface import DecoderCapabilities, DecoderError, DecoderResponse, DecoderUnavailable
from frontend.telemetry.logging_setup import current_request
from frontend.settings import parse_args
from llama_triton.contract import GUIDE_TYPES
from llama_triton.trtllm.tensor_contract import DECODER_IO, decoder_io

# A script step: a response, an exception to raise, or HANG (the decoder goes silent).
Step = Union[DecoderResponse, BaseException]
HANG = object()
DECODER_MODEL = "tensorrt_llm"

# Config data types (tensor_contract) as Triton's protocol names them (tritonclient's np_to_triton_dtype
# gives the same names for the arrays the frontend builds).
_PROTOCOL_DTYPE = {"TYPE_BOOL": "BOOL", "TYPE_INT32": "INT32", "TYPE_INT64": "INT64", "TYPE_UINT64": "UINT64",
                   "TYPE_FP32": "FP32", "TYPE_STRING": "BYTES", "TYPE_UINT8": "UINT8"}


def token_responses(token_ids: list[int], index: int = 0, final: bool = True,
                    log_probs: Optional[list[float]] = None, reused: Optional[int] = None) -> list[DecoderResponse]:
    """One streamed response per token, as the decoder sends them; the last one final if `final`."""
    out = []
    for i, t in enumerate(token_ids):
        out.append(DecoderResponse(index, [t], None if log_probs is None else [log_probs[i]], None, None,
                                   reused if i == 0 else None, final and i == len(token_ids) - 1))
    return out


def ended_at_once() -> list[DecoderResponse]:
    """What the decoder sends for a request whose first token is the end token: an empty final response."""
    return [DecoderResponse(0, [], None, None, None, None, True)]


class ScriptError(AssertionError):
    """The test scripted something the real decoder could not send (see FakeDecoder)."""


def _dims(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


class FakeDecoder:
    """A `DecoderClient` that plays a script per request and records what it was sent.

    As strict as `TritonDecoder` (frontend/decoder/triton_client.py) with Triton and the CPU decoder behind
    it: a request they refuse is refused here, with the same failure type and text, and a scripted
    answer they could not send fails the test (`ScriptError`, also reported at the harness's close).
    What is mirrored, and from where (Triton core read at 73aad7c, not a release tag):

    Triton, before the model sees the request (each an INVALID_ARG stream error with no code, which
    TritonDecoder without health probes turns into a plain DecoderError, HTTP 400):
      T1 an input the model does not declare (its capabilities) - core src/model.cc:44-50 (GetInput);
      T2 a required input missing (input_lengths, request_output_len) - src/infer_request.cc:1263-1318;
      T3 inputs with different batch sizes - src/infer_request.cc:1088-1094 (a common batch of more
         than one passes Triton and is refused by the decoder, D3: one value per scalar);
      T4 a data type other than the declared one - src/infer_request.cc:1120-1131;
      T5 a shape other than [batch] + the declared dims (-1: any) - src/infer_request.cc:1133-1180.
    The CPU decoder (llama_triton/backend/decoder_model.py _admit, llama_triton/trtllm/request_decoding.py
    parse_request; typed `invalid_request` errors, a certain DecoderError, HTTP 400):
      D1 a request id already in flight (decoder_model.py _admit, the `live` table);
      D2 no input_ids; input_lengths outside 1..len(input_ids); request_output_len below 0;
      D3 a scalar with more than one value, a float scalar that is not finite, beam_width other than 1,
         an embedding_bias that is not finite;
      D4 a guide type not in GUIDE_TYPES, or no guide for one that needs it.
      A stop request (`stop`: true) for an id that is not in flight is answered with an empty final
      response and changes nothing, in the CPU decoder (decoder_model.py _admit's StopRequest branch)
      as in TensorRT-LLM's backend (tensorrtllm_backend inflight_batcher_llm/src/model_instance_state.cc
      :883-906@c2e65b8, handleStopRequest; only a stop without an id is an error there, which
      TritonDecoder.stop never sends): so it is no error here either; `stopped` records each stop
      and whether its request was still being handled.
    TritonDecoder itself:
      C1 a stream that ends without a final response is DecoderUnavailable("the decoder stream ended
         early"); a final response without outputs is DecoderResponse(0, [], None, None, None, None, True);
      C2 only requested outputs come back: log-probs only with return_log_probs, top log-probs only
         with num_top_log_probs (num_top columns per token), sequence_index only with
         num_return_sequences; the request context gets `triton_request_id`, nothing else.
    What the CPU decoder sends (request_decoding.py output_arrays, llama_triton/engine/engine.py):
      R1 token ids inside the vocabulary (ScriptError otherwise); the end token (end_id >= 0) ends
         its sequence and is not returned (engine.py:341-342), and R2 a sequence ends at
         request_output_len tokens: the script is played up to there, as the decoder generates it,
         the response that ends the last sequence is the final one; R3 sequence indices below n;
         R4 one log-prob per token when sent; R5 nothing after the final (R3-R5: ScriptError).
    Not mirrored: the engine's sampling-range checks (temperature, top_p ... in llama_triton/engine/
    sampler.py), which answer as D2-D4 do; the handler tests send what the service builds from
    validated requests.
    """

    def __init__(self, tokenizer, *, max_seq_len: int = 512, decoder_io_name: str = "cpu"):
        self.tokenizer = tokenizer
        inputs, outputs = decoder_io(decoder_io_name)
        self.caps = DecoderCapabilities(frozenset(t.name for t in inputs), frozenset(t.name for t in outputs),
                                        {"max_seq_len": str(max_seq_len)})
        # Every list's tensors (a test may give the fake another list's capabilities): a name has the
        # same type and dims in each (tensor_contract.py).
        self._tensors = {t.name: t for io_inputs, _ in DECODER_IO.values() for t in io_inputs}
        self._io_name = decoder_io_name
        self._caps0 = DecoderCapabilities(self.caps.inputs, self.caps.outputs, dict(self.caps.parameters))
        self.script: Callable[[str, dict], Iterable[Step]] = lambda rid, arrays: ended_at_once()
        self.capabilities_error: Optional[BaseException] = None
        self.requests: list[tuple[str, dict]] = []
        self.closed_early: list[str] = []     # request ids whose stream the frontend left before the end
        # request id -> whether its stop went out while the request was still being handled
        self.stopped: dict[str, bool] = {}
        self.stop_seen = asyncio.Event()
        self.live: set[str] = set()           # request ids in flight (D1)
        self.script_errors: list[str] = []

    def reset(self) -> None:
        """Back to a fresh decoder (a harness shared by a module's tests, see `shared_harness`)."""
        caps0 = self._caps0
        self.__init__(self.tokenizer, decoder_io_name=self._io_name)
        self._caps0 = caps0
        self.caps = DecoderCapabilities(caps0.inputs, caps0.outputs, dict(caps0.parameters))

    def says(self, *texts: str, **kw) -> None:
        """Every request is answered with these texts, one per choice (sequence index)."""
        def script(rid, arrays):
            steps = []
            for i, text in enumerate(texts):
                ids = self.tokenizer.encode(text)
                steps += token_responses(ids, i, final=False, **kw)
            if not steps:
                return ended_at_once()
            steps[-1].is_final = True
            return steps
        self.script = script

    async def capabilities(self) -> DecoderCapabilities:
        if self.capabilities_error is not None:
            raise self.capabilities_error
        return self.caps

    # ---- what Triton and the decoder refuse --------------------------------------------------
    def refusal(self, request_id: str, arrays: dict) -> Optional[DecoderError]:
        """The error the real stack answers this request with, or None (see the class docstring)."""
        log_id = f"[request id: {request_id or '<id_unknown>'}] "
        for name in arrays:
            if name not in self.caps.inputs:                                            # T1
                return DecoderError(f"unexpected inference input '{name}' for model '{DECODER_MODEL}'")
        required = [t.name for t in self._tensors.values() if not t.optional and t.name in self.caps.inputs]
        missing = [n for n in required if n not in arrays]
        if missing:                                                                     # T2
            got = "[" + ",".join(f"'{n}'" for n in arrays) + "]"
            return DecoderError(
                f"{log_id}expected number of inputs between {len(required)} and {len(self.caps.inputs)} but got "
                f"{len(arrays)} inputs for model '{DECODER_MODEL}'. Got input(s) {got}, but missing required "
                f"input(s) [{','.join(repr(n) for n in missing)}]. Please provide all required input(s).")
        batch = None
        for name, arr in arrays.items():
            arr = np.asarray(arr)
            tensor = self._tensors[name]
            if arr.ndim and batch is not None and arr.shape[0] != batch:                 # T3
                return DecoderError(f"{log_id}input '{name}' batch size does not match other inputs for "
                                    f"'{DECODER_MODEL}'")
            batch = arr.shape[0] if arr.ndim else batch
            sent, expected = np_to_triton_dtype(arr.dtype), _PROTOCOL_DTYPE[tensor.dtype]
            if sent != expected:                                                        # T4
                return DecoderError(f"{log_id}inference input '{name}' data-type is '{sent}', but model "
                                    f"'{DECODER_MODEL}' expects '{expected}'")
            dims = arr.shape[1:]
            if arr.ndim == 0 or len(dims) != len(tensor.dims) or any(c != -1 and c != d for c, d in zip(tensor.dims, dims)):
                return DecoderError(                                                    # T5
                    f"{log_id}unexpected shape for input '{name}' for model '{DECODER_MODEL}'. Expected "
                    f"{_dims((-1, *tensor.dims))}, got {_dims(arr.shape)}. ")
        if request_id and request_id in self.live:                                      # D1
            return self._invalid(f"request id {request_id!r} is already in flight")
        return self._invalid(self._parse_error(arrays))

    @staticmethod
    def _invalid(message: Optional[str]) -> Optional[DecoderError]:
        # The CPU decoder's typed `invalid_request` (decoder_errors.py), as TritonDecoder reads it.
        return None if message is None else DecoderError(message, certain=True)

    @staticmethod
    def _parse_error(arrays: dict) -> Optional[str]:
        """parse_request's refusals (D2-D4) in its words."""
        def scalar(name):
            return np.asarray(arrays[name]).reshape(-1)
        for name, arr in arrays.items():
            flat = np.asarray(arr).reshape(-1)
            if name in ("input_ids", "stop_words_list", "bad_words_list", "embedding_bias"):
                continue
            if flat.size != 1:
                return (f"{name}: expected one value per request, got shape {list(np.asarray(arr).shape)}"
                        if flat.dtype != object else f"{name}: expected one string, got {flat.size}")
            if flat.dtype.kind == "f" and not np.isfinite(flat[0]):
                return f"{name}: must be a finite number, got {float(flat[0])}"
        if "input_ids" not in arrays:
            return "input_ids: required"
        ids = np.asarray(arrays["input_ids"]).reshape(-1)
        length = int(scalar("input_lengths")[0])
        if length < 1 or length > len(ids):
            return f"input_lengths: {length} does not fit input_ids of length {len(ids)}"
        if int(scalar("request_output_len")[0]) < 0:
            return f"request_output_len: must be >= 0, got {int(scalar('request_output_len')[0])}"
        if "beam_width" in arrays and int(scalar("beam_width")[0]) != 1:
            return f"beam_width: the CPU decoder samples (beam_width 1), got {int(scalar('beam_width')[0])}"
        if "embedding_bias" in arrays and not np.all(np.isfinite(np.asarray(arrays["embedding_bias"]))):
            return "embedding_bias: must be finite"
        if "guided_decoding_guide_type" in arrays:
            guide_type = scalar("guided_decoding_guide_type")[0].decode()
            guide = scalar("guided_decoding_guide")[0] if "guided_decoding_guide" in arrays else b""
            if guide_type and guide_type not in GUIDE_TYPES:
                return f"guided_decoding_guide_type: {guide_type!r} is not one of {', '.join(GUIDE_TYPES)}"
            if guide_type and guide_type != "json" and not guide:
                return f"guided_decoding_guide: required for guide type {guide_type}"
        return None

    # ---- what the decoder could send -----------------------------------------------------------
    def _play(self, steps: list, arrays: dict):
        """The script as TritonDecoder would yield it for this request: each response shaped (C2),
        each sequence ended where the decoder ends it (R1 end token, R2 request_output_len), final
        when the last sequence ends; a step the decoder could not send is a ScriptError (R1, R3-R5)."""
        def scalar(name, default):
            return int(np.asarray(arrays[name]).reshape(-1)[0]) if name in arrays else default
        n, limit, end_id = scalar("num_return_sequences", 1), scalar("request_output_len", 0), scalar("end_id", -1)
        top = scalar("num_top_log_probs", 0)
        counts: dict[int, int] = {}
        ended: set[int] = set()
        vocab = self.tokenizer.vocab_size
        for i, step in enumerate(steps):
            if step is HANG or isinstance(step, BaseException):
                yield step
                continue
            problems = []
            if step.is_final and i != len(steps) - 1:
                problems.append("responses after the final one")                           # R5
            if not 0 <= step.sequence_index < n:
                problems.append(f"sequence index {step.sequence_index} of a request for {n}")   # R3
            if any(not 0 <= t < vocab for t in step.token_ids):
                problems.append(f"a token outside the vocabulary (size {vocab})")             # R1
            if step.log_probs is not None and len(step.log_probs) != len(step.token_ids):
                problems.append(f"{len(step.log_probs)} log-probs for {len(step.token_ids)} tokens")   # R4
            for name, rows in (("top_ids", step.top_ids), ("top_log_probs", step.top_log_probs)):
                if rows is not None and top and np.asarray(rows).shape != (len(step.token_ids), top):
                    problems.append(f"{name} of shape {np.asarray(rows).shape}, not ({len(step.token_ids)}, {top})")
            if problems:
                raise self._script_error("; ".join(problems))
            seq = step.sequence_index
            if seq in ended:
                continue                    # the decoder ended this sequence: it sends no more of it
            tokens = list(step.token_ids)
            keep = len(tokens)
            if end_id >= 0 and end_id in tokens:
                keep = tokens.index(end_id)                                                 # R1
                ended.add(seq)
            room = limit - counts.get(seq, 0)
            if keep >= room:
                keep = room                                                                 # R2
                ended.add(seq)
            counts[seq] = counts.get(seq, 0) + keep
            final = step.is_final or len(ended) == n
            yield DecoderResponse(
                seq if n > 1 else 0, tokens[:keep],
                step.log_probs[:keep] if step.log_probs is not None and "return_log_probs" in arrays else None,
                step.top_ids[:keep] if step.top_ids is not None and top else None,
                step.top_log_probs[:keep] if step.top_log_probs is not None and top else None,
                step.num_reused_tokens, final)
            if final:
                return

    def _script_error(self, problem: str) -> ScriptError:
        self.script_errors.append(problem)
        return ScriptError(f"the script sends what the decoder could not: {problem}")

    async def generate(self, request_id: str, arrays: dict):
        self.requests.append((request_id, arrays))
        ctx = current_request.get()
        if ctx is not None:
            ctx.triton_request_id = request_id      # as TritonDecoder.generate (C2)
        refused = self.refusal(request_id, arrays)
        if refused is not None:
            raise refused
        steps = list(self.script(request_id, arrays))
        self.live.add(request_id)
        done = False
        try:
            for step in self._play(steps, arrays):
                if step is HANG:
                    await asyncio.Event().wait()
                if isinstance(step, BaseException):
                    done = True         # an error answer is the request's last (the decoder ended it)
                    raise step
                if step.is_final:
                    # Over once the final response is read, as TritonDecoder's `finished`: a consumer
                    # that stops here (a stop string matched in the last tokens) sends no stop.
                    done = True
                    yield step
                    return
                yield step
                await asyncio.sleep(0)      # each response arrives on a loop turn of its own
            done = True
            raise DecoderUnavailable("the decoder stream ended early")                     # C1
        finally:
            self.live.discard(request_id)
            if not done:
                self.closed_early.append(request_id)
                # As TritonDecoder: a request left early is stopped by a round trip to the decoder
                # (stop=true), awaited here. Recorded: whether the request was still being handled
                # when it went out (the frontend's aclose() must wait for it).
                await asyncio.sleep(0)
                ctx = current_request.get()
                self.stopped[request_id] = ctx is not None and not ctx.done
                self.stop_seen.set()

    async def is_ready(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class Harness:
    def __init__(self, model_dir: Path, tokenizer, *args: str):
        self.decoder = FakeDecoder(tokenizer)
        self.app = create_app(parse_args(["--model-dir", str(model_dir), "--log-format", "text", *args]), tokenizer,
                              decoder=self.decoder)
        self.tokenizer = tokenizer
        self.loop = asyncio.new_event_loop()     # an aiohttp app lives on one loop
        self.client = TestClient(TestServer(self.app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()
        # A script the real decoder could not have answered makes the test fail, whatever it asserted.
        assert not self.decoder.script_errors, self.decoder.script_errors

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict, bytes]:
        """(status, headers, body) of one request through the real aiohttp app."""
        async def go():
            # json, not orjson: a test may send what orjson cannot write (an integer past 64 bits)
            resp = await self.client.post(path, data=json.dumps(body).encode(),
                                          headers={"Content-Type": "application/json"})
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
        return self.loop.run_until_complete(go())

    def request(self, method: str, path: str, raw: Optional[bytes] = None) -> tuple[int, dict, bytes]:
        """(status, headers, body) of any request, its body sent as given (malformed JSON too)."""
        async def go():
            resp = await self.client.request(method, path, data=raw,
                                             headers={"Content-Type": "application/json"} if raw is not None else None)
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()
        return self.loop.run_until_complete(go())

    def chat(self, body: dict[str, Any]) -> tuple[int, dict, Any]:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], **body}
        status, headers, raw = self.post("/v1/chat/completions", body)
        return status, headers, (sse_events(raw) if body.get("stream") and status == 200 else orjson.loads(raw))

    @property
    def model(self) -> str:
        return self.app[SETTINGS].served_model_name


def sse_events(raw: bytes) -> list:
    """The `data:` payloads of an SSE body: dicts, and the string "[DONE]"."""
    out = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            payload = block[6:]
            out.append("[DONE]" if payload == b"[DONE]" else orjson.loads(payload))
    return out


def content_of(events: list, index: int = 0) -> str:
    """The streamed `content` of one choice, joined."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events
                   if isinstance(c, dict) and c.get("choices") and c["choices"][0]["index"] == index)


def finish_reasons(events: list) -> dict[int, list]:
    """Each choice's streamed finish reasons (a finished choice has exactly one)."""
    out: dict[int, list] = {}
    for c in events:
        if isinstance(c, dict) and c.get("choices") and c["choices"][0].get("finish_reason"):
            out.setdefault(c["choices"][0]["index"], []).append(c["choices"][0]["finish_reason"])
    return out


ANY_PARAM = object()     # error_of: the envelope's `param` is not checked


def error_of(status: int, body: dict, expected_status: int, param) -> dict:
    """The one envelope, with this status and `param` (unless ANY_PARAM); returns the error object."""
    assert status == expected_status, (status, body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert param is ANY_PARAM or body["error"]["param"] == param, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.fixture
def harness(default_model_dir: Path, default_tokenizer):
    h = Harness(default_model_dir, default_tokenizer)
    yield h
    h.close()


@pytest.fixture(scope="module")
def module_harness(default_model_dir: Path, default_tokenizer):
    """One app for a whole module: its guide compile workers start once (a second or two each)."""
    h = Harness(default_model_dir, default_tokenizer)
    yield h
    h.close()


@pytest.fixture
def shared_harness(module_harness: Harness):
    """The module's app with a fresh FakeDecoder state for each test."""
    module_harness.decoder.reset()
    yield module_harness
    errors = list(module_harness.decoder.script_errors)
    module_harness.decoder.reset()
    assert not errors, errors
