"""An `LLM`-shaped stand-in for TensorRT-LLM 1.2.1's LLM API (PyTorch backend), backed by the CPU engine.

The LLM-API decoder (llama_triton/backend/llmapi_engine.py) drives `tensorrt_llm.LLM`. That
package needs CUDA to import, so on CPU machines, and in CI on every commit, the same adapter
code drives this module instead: `LLM`, and results shaped like 1.2.1's `RequestOutput` /
`CompletionOutput` / `Logprob`; `SamplingParams` and `GuidedDecodingParams` are
llmapi_standin_params.py's (1.2.1's tensorrt_llm/sampling_params.py). The engine behind it is the
CPU decoder, in a worker process of its own as the real executor is (llmapi_worker.py).

Every behaviour a client of the LLM API can see is reproduced from the upstream source, cited as
path:line@commit. The v1.2.1 tag (376f7e1) itself could not be read here (the tree is too large to
fetch, the package index holds no 1.2.1 wheel, the search index stores no file at the tag), so
the citations name the stored commits read, nearest first:

  SP = tensorrt_llm/sampling_params.py@b35ac1b (version.py there: 1.2.0rc2)
  R  = tensorrt_llm/executor/result.py@005bc84, plus NVIDIA/TensorRT-LLM PR #8785 (merged Nov 2025,
       before 1.2.0): PyTorch-backend responses carry only the new tokens' log-probs, which
       `_handle_sequence` appends (`output.logprobs += response_tensors.log_probs[src_idx]`)
  EX = tensorrt_llm/executor/executor.py (`_handle_background_error`; stored copy, commit not
       named by the index): an error text from the executor becomes `RequestError(text)`, raised
       to whoever iterates the result
  S  = tensorrt_llm/_torch/pyexecutor/sampler.py (`TorchSampler.update_requests`, several stored
       copies): `add_token(req, ...)` runs before `_handle_stop_criteria`, so the end token is in
       the request's tokens when `FinishReason.END_ID` ends it
  Q  = tensorrt_llm/_torch/pyexecutor/executor_request_queue.py (every stored copy): the request
       queue is an unbounded `queue.Queue()`; the PyTorch executor never answers "queue full"
  L  = tensorrt_llm/llmapi/llm.py@4c05a74 (`LLM.generate_async`) and tensorrt_llm/inputs/utils.py
       @bab0f2e (`get_cache_salt_id`): `cache_salt`, a string, becomes the request's uint64
       `cache_salt_id`; KV blocks are reused only between requests with the same id

What it cannot reproduce is listed in docs/GPU.md section 8.4.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from llama_triton.backend.llmapi_standin_params import SamplingParams
from llama_triton.backend.llmapi_worker import Channel
from llama_triton.defaults import TRTLLM_MAX_NUM_TOKENS
from llama_triton.engine.types import GenerationRequest, SequenceOutput
from llama_triton.engine.types import SamplingParams as EngineSamplingParams

# The CPU engine's own queue stands in for the PyTorch executor's, which has no bound (Q): the
# decoder model's gate (llmapi_engine.py) is the only limit, as on a GPU.
UNBOUNDED_QUEUE = 1 << 30


class RequestError(RuntimeError):
    """tensorrt_llm.executor.utils.RequestError: one request failed; the LLM lives on (EX)."""


# ----------------------------------------------------------------------------- results (R)

@dataclass(slots=True)
class Logprob:
    """R:35-39."""
    logprob: float
    rank: Optional[int] = None


@dataclass(slots=True)
class CompletionOutput:
    """R:52-110: cumulative token_ids and logprobs, and the diff of the last response that
    carried this sequence."""
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: Optional[float] = None
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    finish_reason: Optional[str] = None
    stop_reason: Optional[Union[int, str]] = None
    _last_token_ids_len: int = 0
    _last_logprobs_len: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len:]

    @property
    def logprobs_diff(self) -> list[dict[int, Logprob]]:
        return self.logprobs[self._last_logprobs_len:]


@dataclass
class _Response:
    """One executor response: one sequence's news (R `_handle_response` handles one
    `response_result.sequence_index` at a time). `finish` is the CPU engine's reason on a
    sequence's last response; `_handle` turns it into the executor's FinishReason."""
    sequence_index: int
    token_ids: list[int]
    logprobs: Optional[list[dict[int, Logprob]]]
    finish: Optional[str] = None        # "stop" | "length" | "cancelled" | None (not final)
    cached_tokens: int = 0
    error: Optional[str] = None


class RequestOutput:
    """What `LLM.generate_async` returns: iterate it (`async for`) to get itself back, updated by
    one executor response each time, until `finished`."""

    def __init__(self, request_id: int, prompt_token_ids: list[int], params: SamplingParams,
                 loop: asyncio.AbstractEventLoop, abort_fn):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = params
        self.cached_tokens = 0
        self._outputs = [CompletionOutput(i) for i in range(params.best_of)]   # R:138-140
        self._done = False
        self._aborted = False
        self._loop = loop
        self._abort_fn = abort_fn
        self._queue: deque[_Response] = deque()
        self._ready = asyncio.Event()
        self._sequences_done: set[int] = set()

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[:self.sampling_params.n]       # R:157-161 (n == best_of: no ranking)

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        """R GenerationResult.abort: asks the executor to cancel; the request then ends with
        finish_reason "cancelled" on its unfinished sequences."""
        self._abort_fn(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def __aiter__(self):
        return self

    async def __anext__(self) -> "RequestOutput":
        if self._done:
            raise StopAsyncIteration
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        self._handle(self._queue.popleft())
        return self

    def _push(self, response: _Response) -> None:       # on the loop's thread
        self._queue.append(response)
        self._ready.set()

    def _handle(self, r: _Response) -> None:
        if r.error is not None:
            self._done = True
            raise RequestError(r.error)                 # EX: a per-request error text
        sp = self.sampling_params
        self.cached_tokens = max(self.cached_tokens, r.cached_tokens)
        out = self._outputs[r.sequence_index]
        ids, logprobs = list(r.token_ids), r.logprobs
        reason = self._finish_reason(out, r)
        if reason == "END_ID" and sp.end_id is not None and not sp.ignore_eos:
            # S: the PyTorch sampler appends the end token before it stops the request, so it is
            # the last of the returned ids. The CPU engine drops it and never reports its log-prob.
            ids.append(int(sp.end_id))
            if logprobs is not None:
                logprobs = logprobs + [{int(sp.end_id): Logprob(float("nan"), rank=None)}]
        out._last_token_ids_len = len(out.token_ids)    # R:187
        out.token_ids.extend(ids)                       # R:192
        if logprobs is not None:                        # PR #8785: new tokens' log-probs, appended
            out._last_logprobs_len = len(out.logprobs)
            out.logprobs += logprobs
            out.cumulative_logprob = sum(d[t].logprob for d, t in zip(out.logprobs, out.token_ids))
        if reason == "CANCELLED":
            out.finish_reason = "cancelled"             # R:214-217
        if reason is not None:
            self._sequences_done.add(r.sequence_index)
        self._done = len(self._sequences_done) == len(self._outputs)
        if not self._done:
            return
        # R:219-234: on the request's final response, the finish reason of the sequence it carries.
        if reason == "END_ID":
            out.finish_reason = "stop"
        elif reason == "STOP_WORDS":
            out.finish_reason = "stop"
            for stop_reason, stop_ids in sp._get_stop_reasons_and_words():
                if out.token_ids[-len(stop_ids):] == stop_ids:
                    out.stop_reason = stop_reason
                    if not sp.include_stop_str_in_output:
                        out.token_ids = out.token_ids[:-len(stop_ids)]
                    break
        elif reason == "LENGTH":
            out.finish_reason = "length"

    def _finish_reason(self, out: CompletionOutput, r: _Response) -> Optional[str]:
        """The executor's FinishReason for a CPU engine's final output. The CPU engine ends a
        sequence with "stop" on its end token or a finished grammar (no token returned) and on a
        stop word (returned): a "stop" that brought tokens ended on a stop word."""
        if r.finish is None:
            return None
        if r.finish != "stop":
            return {"length": "LENGTH", "cancelled": "CANCELLED"}[r.finish]
        tokens = out.token_ids + list(r.token_ids)
        if r.token_ids and any(w and tokens[-len(w):] == w for w in self.sampling_params._get_stop_words()):
            return "STOP_WORDS"
        return "END_ID"


# ----------------------------------------------------------------------------- LLM

# LLM(...) keywords the stand-in honours (llama_triton/backend/llmapi_engine.py renders them into
# model.yaml, TensorRT-LLM's LlmArgs names); anything else is refused, never ignored.
_LLM_ARGS = {"model", "backend", "tensor_parallel_size", "pipeline_parallel_size", "max_batch_size",
             "max_num_tokens", "max_seq_len", "kv_cache_config", "enable_chunked_prefill",
             "guided_decoding_backend", "dtype"}
_KV_CACHE_ARGS = {"free_gpu_memory_fraction", "enable_block_reuse", "tokens_per_block", "max_tokens"}


def _load_tokenizer(model_dir: str) -> Any:
    """The checkpoint's Hugging Face tokenizer, as the LLM loads it (same ids as the CPU engine's)."""
    from transformers import AutoTokenizer

    from llama_triton.text.sentencepiece_compat import align_converted_sentencepiece, ensure_sentencepiece_proto
    ensure_sentencepiece_proto()
    return align_converted_sentencepiece(AutoTokenizer.from_pretrained(model_dir), model_dir)


class LLM:
    """tensorrt_llm.LLM's surface as the adapter uses it: `generate_async`, `tokenizer`,
    `shutdown`. The CPU engine runs in a worker process (llmapi_worker.py).

    `cpu_threads` is the stand-in's own keyword (the CPU decoder's torch threads, 0: by model
    size); the others are LlmArgs names from model.yaml."""

    def __init__(self, model: str, *, cpu_threads: int = 0, python: Optional[str] = None, **kwargs: Any):
        unknown = sorted(set(kwargs) - _LLM_ARGS)
        if unknown:
            raise TypeError(f"the LLM-API stand-in does not implement the LLM argument(s) {', '.join(unknown)}")
        kv = dict(kwargs.get("kv_cache_config") or {})
        unknown = sorted(set(kv) - _KV_CACHE_ARGS)
        if unknown:
            raise TypeError(f"the LLM-API stand-in does not implement kv_cache_config.{', '.join(unknown)}")
        if kwargs.get("backend", "pytorch") != "pytorch":
            raise ValueError(f"backend {kwargs['backend']!r}: the stand-in is the PyTorch backend's")
        world = int(kwargs.get("tensor_parallel_size", 1)) * int(kwargs.get("pipeline_parallel_size", 1))
        if world != 1:
            raise ValueError(f"tensor_parallel_size x pipeline_parallel_size = {world}: the CPU stand-in runs "
                             "one engine process (multi-GPU needs tensorrt_llm)")
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"model {model!r}: the stand-in loads a local checkpoint directory only")
        if "max_tokens" not in kv:
            raise ValueError("kv_cache_config.max_tokens is required on CPU: there is no GPU memory to take "
                             "free_gpu_memory_fraction of")
        self.model = str(model)
        self.args = dict(kwargs)
        self.guided_decoding_backend = kwargs.get("guided_decoding_backend")
        self.tokenizer = _load_tokenizer(self.model)
        engine_config = {
            "max_batch_size": int(kwargs.get("max_batch_size", 2048)),
            "max_num_tokens": int(kv["max_tokens"]),
            "block_size": int(kv.get("tokens_per_block", 32)),
            "max_seq_len": int(kwargs["max_seq_len"]) if kwargs.get("max_seq_len") else None,
            "max_queue_size": UNBOUNDED_QUEUE,
            # LlmArgs.max_num_tokens bounds the tokens one iteration runs: the CPU engine's prefill
            # budget per step plays that part.
            "prefill_chunk_size": int(kwargs.get("max_num_tokens", TRTLLM_MAX_NUM_TOKENS)),
            "enable_prefix_reuse": bool(kv.get("enable_block_reuse", True)),
            "dtype": str(kwargs.get("dtype", "auto")),
            "num_threads": int(cpu_threads),
        }
        self._ids = itertools.count(1)
        self._results: dict[int, tuple[RequestOutput, set[int]]] = {}   # id -> result, sequences not yet final
        self._lock = threading.Lock()
        self._dead: Optional[str] = None
        self.counters: dict[str, float] = {}
        parent, child = socket.socketpair()
        self._proc = subprocess.Popen(
            [python or _python(), "-m", "llama_triton.backend.llmapi_worker", "--fd", str(child.fileno()),
             "--model-dir", self.model, "--engine-config", json.dumps(engine_config)],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL)
        child.close()
        self._channel = Channel(parent)
        first = self._channel.recv()
        if first is None or first[0] != "ready":
            self._proc.wait()
            raise RuntimeError(f"the executor process failed to start: "
                               f"{first[1] if first else f'exit code {self._proc.returncode}'}")
        self.counters = first[1]
        self._reader = threading.Thread(target=self._read, name="llmapi-standin-reader", daemon=True)
        self._reader.start()

    def generate_async(self, inputs: Union[list[int], dict], sampling_params: Optional[SamplingParams] = None,
                       streaming: bool = False, cache_salt: Optional[str] = None) -> RequestOutput:
        """Token ids in; the result to iterate. Must be called on a running event loop's thread
        (the real result uses an asyncio queue when one runs, R GenerationResultBase.__init__).
        `cache_salt` scopes the prefix cache (L): only requests with the same salt share blocks."""
        loop = asyncio.get_running_loop()
        # L: the salt is hashed before anything else is looked at (a non-string fails there too).
        salt_id = None if cache_salt is None else get_cache_salt_id(cache_salt)
        ids = inputs["prompt_token_ids"] if isinstance(inputs, dict) else inputs
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        sp = (sampling_params if sampling_params is not None else SamplingParams())._setup(self.tokenizer)
        if sp.guided_decoding is not None and self.guided_decoding_backend is None:
            # Not an upstream text: upstream's guided decoder is only built when the LLM has a backend.
            raise ValueError("guided decoding needs the LLM argument guided_decoding_backend")
        if self._dead is not None:
            raise RuntimeError(self._dead)
        rid = next(self._ids)
        result = RequestOutput(rid, list(ids), sp, loop, self._abort)
        with self._lock:
            self._results[rid] = (result, set(range(sp.best_of)))
        try:
            self._channel.send(("submit", GenerationRequest(str(rid), list(ids), _engine_params(sp), streaming,
                                                            cache_salt=salt_id)))
        except OSError:
            with self._lock:
                self._results.pop(rid, None)
            raise RuntimeError(self._dead or "the executor process is gone") from None
        return result

    def _abort(self, rid: int) -> None:
        try:
            self._channel.send(("cancel", str(rid)))
        except OSError:
            pass

    def _read(self) -> None:
        """Reader thread: the worker's messages to the results, on their loops' threads."""
        while True:
            message = self._channel.recv()
            if message is None:
                break
            if message[0] == "outputs":
                self.counters = message[2]
                for out in message[1]:
                    self._deliver(int(out.request_id), out)
            elif message[0] == "counters":
                self.counters = message[1]
            elif message[0] == "reject":
                self._deliver(int(message[1]), None, error=message[2])
        # The executor is gone: every open request fails, and so does every new one, until the
        # model is restarted (an upstream LLM shuts itself down on a dead worker: executor.py
        # ConcreteProxyExecutor, "MPI worker exited unexpectedly").
        code = self._proc.wait()
        self._dead = f"the executor process exited unexpectedly (exit code {code})"
        with self._lock:
            open_results = [result for result, _ in self._results.values()]
            self._results.clear()
        for result in open_results:
            result._loop.call_soon_threadsafe(result._push, _Response(0, [], None, error=self._dead))

    def _deliver(self, rid: int, out: Optional[SequenceOutput], error: Optional[str] = None) -> None:
        if error is None and out.error is not None:
            error = out.error
        with self._lock:
            entry = self._results.get(rid)
            if entry is None:
                return                  # finished or failed already
            result, unfinished = entry
            if error is None and out.finished:
                unfinished.discard(out.sequence_index)
            if error is not None or not unfinished:
                del self._results[rid]
        response = (_Response(0, [], None, error=error) if error is not None
                    else _to_response(out, result.sampling_params))
        result._loop.call_soon_threadsafe(result._push, response)

    def shutdown(self) -> None:
        self._channel.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def get_cache_salt_id(cache_salt: str) -> int:
    """L `get_cache_salt_id`: 8 bytes of a hash of the salt's UTF-8 bytes, little-endian, unsigned.
    Upstream hashes with BLAKE3 (its `default_hasher`, tensorrt_llm/inputs/multimodal.py); the id
    never leaves the process, only its equality between requests matters, so the standard
    library's BLAKE2b stands in for it rather than a dependency of its own."""
    digest = hashlib.blake2b(cache_salt.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=False)


def _python() -> str:
    """The worker's interpreter: this one, unless this process is not a Python (Triton's Python
    backend stub embeds the interpreter; the stub finds the first python3 on PATH, and so do we)."""
    exe = Path(sys.executable)
    if exe.name.startswith("python"):
        return str(exe)
    return shutil.which("python3") or "python3"


def _engine_params(sp: SamplingParams) -> EngineSamplingParams:
    """The stand-in's SamplingParams -> the CPU engine's. ignore_eos is end_id -1 (trtllm-serve:
    tensorrt_llm/executor/base_worker.py:451-452@7b437aa); stop and bad words are the id lists
    `_setup` made (SP:415-428, :400-413)."""
    guide_type, guide = None, None
    g = sp.guided_decoding
    if g is not None:
        if g.json_object:
            guide_type = "json"
        elif g.json is not None:
            guide_type, guide = "json_schema", g.json if isinstance(g.json, str) else json.dumps(g.json)
        elif g.regex is not None:
            guide_type, guide = "regex", g.regex
        elif g.grammar is not None:
            guide_type, guide = "ebnf_grammar", g.grammar
        elif g.structural_tag is not None:
            raise RequestError("structural_tag guides are not implemented by the CPU stand-in")
    top = int(sp.logprobs or 0)
    return EngineSamplingParams(
        max_new_tokens=int(sp.max_tokens),
        temperature=1.0 if sp.temperature is None else float(sp.temperature),
        top_k=int(sp.top_k or 0),
        top_p=1.0 if sp.top_p is None else float(sp.top_p),
        min_p=float(sp.min_p or 0.0),
        repetition_penalty=1.0 if sp.repetition_penalty is None else float(sp.repetition_penalty),
        presence_penalty=float(sp.presence_penalty or 0.0),
        frequency_penalty=float(sp.frequency_penalty or 0.0),
        seed=int(sp.seed or 0),
        end_id=None if sp.ignore_eos else sp.end_id,
        stop_words=sp._get_stop_words(),
        bad_words=sp._get_bad_words(),
        min_tokens=int(sp.min_tokens or 0),
        num_return_sequences=int(sp.best_of),
        return_log_probs=top > 0,
        top_logprobs=top,
        embedding_bias=sp.embedding_bias,
        guide_type=guide_type,
        guide=guide,
    )


def _to_response(out: SequenceOutput, sp: SamplingParams) -> _Response:
    """A CPU engine output -> an executor response as the PyTorch backend sends it."""
    logprobs = None
    if sp.logprobs:
        # PyTorch backend: per token {token id: Logprob} with the top `logprobs` ranked 1..N, and
        # the sampled token besides when it is not among them (R compute_logprobs does the same
        # for the TRT flow). Its rank there is unknown to the CPU engine: N + 1, a lower bound.
        logprobs = []
        tops = out.top_logprobs or [[] for _ in out.token_ids]
        for token, lp, alts in zip(out.token_ids, out.log_probs or [], tops):
            entry = {int(t): Logprob(float(v), rank=r + 1) for r, (t, v) in enumerate(alts[:sp.logprobs])}
            if token not in entry:
                entry[int(token)] = Logprob(float(lp), rank=len(entry) + 1)
            logprobs.append(entry)
    return _Response(out.sequence_index, [int(t) for t in out.token_ids], logprobs,
                     finish=out.finish_reason if out.finished else None, cached_tokens=out.num_reused_tokens)
