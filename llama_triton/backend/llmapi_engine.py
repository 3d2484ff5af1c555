"""The LLM-API decoder: TensorRT-LLM's `LLM` (PyTorch backend, 1.2.1) behind the decoder model.

`LlmApiEngine` is a `DecoderEngine` (llama_triton/engine/types.py), so the `tensorrt_llm` Triton
model (llama_triton/backend/decoder_model.py: tensors, stop requests, Triton cancellation,
responses) is the same code as the CPU decoder's. Behind it is any object shaped like 1.2.1's
`LLM`: `tensorrt_llm.LLM` on a GPU, or the CPU stand-in (llama_triton/backend/llmapi_standin.py),
chosen by the model's `llm_api` parameter, never by what happens to be importable. tensorrt_llm
needs CUDA to import, so it is imported here, lazily, and only for `llm_api: tensorrt_llm`.

As upstream's own LLM-API model does (triton_backend/all_models/llmapi/tensorrt_llm/1/model.py
@b35ac1b, "M" below), the engine runs on an asyncio loop of its own thread (M:218-220), creates
the `LLM` with the arguments of `model.yaml` (M:160-165, :247-248), calls `generate_async` per request
(M:415-416) and iterates the result (M:431); cancelling is the result's `abort()` (M:326, :353).
What it does differently, and why:

* Outputs: upstream's model sends the text of every output on every response. Ours keeps the
  decoder's per-token contract: new token ids only, each sequence on its own, log-probs aligned
  with them. A result's `token_ids_diff` is the diff of the last response *that sequence* was in
  (R:187: `_last_token_ids_len` moves only for the sequence handled), so another sequence's diff
  is stale; each sequence's own cursor into `token_ids` / `logprobs` is what is new.
* The end token: the PyTorch sampler appends it before it stops (llmapi_standin.py, S); our
  contract never returns it (docs/GPU.md 5.1). A token equal to the active end id is always the
  last one, so it is dropped as it arrives, with its log-prob.
* Finish: a sequence is finished when its output says so, and every sequence when the request
  is (R:219-234 sets only the final response's sequence's reason).
* A full queue: the PyTorch executor's queue has no bound (its `queue.Queue()`), so this engine
  refuses a request past max_batch_size + max_queue_size open ones (QueueFull: a 429).
* `cached_tokens` (RequestOutput.cached_tokens, the prompt tokens the KV cache reused) becomes
  `num_reused_tokens`, capped at the prompt.
* The cache salt: our `cache_salt_id` input (a uint64, one per API key, frontend/tenancy/tenants.py) goes
  to `generate_async(cache_salt=...)` as its decimal text. The LLM API takes a string there
  (`LLM.generate_async(..., cache_salt: Optional[str] = None)`, tensorrt_llm/llmapi/llm.py@4c05a74,
  the search index's copy, not pinned to the v1.2.1 tag) and hashes it into the request's
  `cache_salt_id` (`get_cache_salt_id`, tensorrt_llm/inputs/utils.py@bab0f2e: 8 bytes of a BLAKE3
  hash of the UTF-8 text), which the KV cache manager hashes into block keys (docs/GPU.md 5.4), so
  blocks are reused only between requests with the same salt. Distinct salts give distinct
  strings, so they stay apart (up to a 64-bit hash collision).
* Errors: an exception while iterating is that request's error (a RequestError: its text; anything
  else: "internal error: ..."). A dead executor fails every request this way, which the
  frontend's work probe sees (frontend/decoder/health.py) and reports, and the launcher restarts
  tritonserver.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from llama_triton.backend.llmapi_sampling import to_llmapi, word_text_for
from llama_triton.contract import QueueFull, RequestError
from llama_triton.engine.types import GenerationRequest, OutputCallback, SequenceOutput

logger = logging.getLogger(__name__)

LLM_APIS = ("cpu", "tensorrt_llm")
TICK_S = 0.02           # step listeners (Triton cancellation poll, metrics) while requests are open
IDLE_TICK_S = 0.2
# Counters the CPU stand-in reports (llmapi_worker.COUNTERS); the decoder model exports those an
# engine has as Triton metrics. tensorrt_llm.LLM has none of them.
ENGINE_STATS = frozenset(("num_steps", "num_forward_passes", "num_decode_passes", "num_prefill_tokens",
                          "num_generated_tokens", "num_reused_tokens", "num_cancelled", "num_running",
                          "num_waiting", "num_free_blocks", "last_cancel_latency_steps"))


@dataclass
class Api:
    """The three names the engine needs from an LLM-API module."""
    LLM: Any
    SamplingParams: Any
    GuidedDecodingParams: Any
    RequestError: type = RuntimeError


def load_api(kind: str) -> Api:
    if kind == "tensorrt_llm":
        from tensorrt_llm import LLM, SamplingParams                    # needs CUDA: only here
        from tensorrt_llm.sampling_params import GuidedDecodingParams
        try:
            from tensorrt_llm.executor.utils import RequestError as TrtllmRequestError
        except ImportError:
            # Not where this release keeps it: then no exception counts as the request's own fault,
            # every failure is "internal error" and the frontend's probes decide (never a 400 by mistake).
            logger.warning("tensorrt_llm.executor.utils.RequestError not found: request errors read as internal")

            class TrtllmRequestError(Exception):
                pass
        return Api(LLM, SamplingParams, GuidedDecodingParams, TrtllmRequestError)
    if kind == "cpu":
        from llama_triton.backend.llmapi_standin import LLM, RequestError
        from llama_triton.backend.llmapi_standin_params import GuidedDecodingParams, SamplingParams
        return Api(LLM, SamplingParams, GuidedDecodingParams, RequestError)
    raise ValueError(f"llm_api {kind!r}: choose one of {', '.join(LLM_APIS)}")


@dataclass
class _Open:
    """One request in flight: its result (once generate_async returned) and each sequence's cursor."""
    request: GenerationRequest
    callback: OutputCallback
    sampling: Any
    result: Any = None
    cancelled: bool = False
    sent: dict[int, int] = field(default_factory=dict)        # sequence -> tokens already forwarded
    sent_lp: dict[int, int] = field(default_factory=dict)     # sequence -> log-probs consumed
    finished: set[int] = field(default_factory=set)
    reused_sent: set[int] = field(default_factory=set)
    held: dict[int, list] = field(default_factory=dict)       # non-streamed: sequence -> [tokens, lps, tops]
    cached: int = 0                                            # prompt tokens the KV cache reused


class LlmApiEngine:
    """A DecoderEngine over an `LLM`-shaped object (see the module docstring)."""

    def __init__(self, llm: Any, api: Api, *, max_batch_size: int, max_queue_size: int):
        self.llm = llm
        self.api = api
        self.max_batch_size, self.max_queue_size = max_batch_size, max_queue_size
        self.capacity = max_batch_size + max_queue_size
        self.word_text = word_text_for(llm.tokenizer)
        self._open: dict[str, _Open] = {}      # loop thread only, after admission
        self._count = 0                        # admitted and not yet done; guarded by _lock
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self._end_listeners: list[Callable[[], None]] = []
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped = threading.Event()

    def __getattr__(self, name: str) -> Any:
        # The stand-in's engine counters (for the decoder model's Triton metrics); a real LLM has none.
        if name in ENGINE_STATS:
            counters = getattr(self.__dict__.get("llm"), "counters", None)
            if isinstance(counters, dict) and name in counters:
                return counters[name]
        raise AttributeError(name)

    # ---- DecoderEngine ----------------------------------------------------------------------

    def add_step_listener(self, listener: Callable[[], None], *, at_end: bool = False) -> None:
        (self._end_listeners if at_end else self._listeners).append(listener)

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.create_task(self._ticker())
            ready.set()
            loop.run_forever()
            pending = asyncio.all_tasks(loop)       # the ticker, requests still iterating at shutdown
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name="llmapi-engine", daemon=True)
        self._thread.start()
        ready.wait()

    def submit(self, request: GenerationRequest, callback: OutputCallback) -> None:
        """Raises RequestError (SamplingParams refused it, with 1.2.1's text) or QueueFull."""
        mapped = to_llmapi(request.params, self.word_text)
        try:
            guided = None if mapped.guided is None else self.api.GuidedDecodingParams(**mapped.guided)
            sampling = self.api.SamplingParams(**mapped.sampling, guided_decoding=guided)
        except (ValueError, TypeError) as e:
            raise RequestError(str(e)) from None
        with self._lock:
            if self._count >= self.capacity:
                raise QueueFull(f"{self._count} requests in flight (max_batch_size {self.max_batch_size} + "
                                f"max_queue_size {self.max_queue_size})")
            self._count += 1
        entry = _Open(request, callback, sampling)
        self._loop.call_soon_threadsafe(self._begin, entry)

    def cancel(self, request_id: str) -> None:
        loop = self._loop
        if loop is not None and not self._stopped.is_set():
            loop.call_soon_threadsafe(self._cancel, request_id)

    def shutdown(self) -> None:
        loop = self._loop
        if loop is None:
            return
        self._stopped.set()

        def stop() -> None:
            for entry in list(self._open.values()):
                self._cancel(entry.request.request_id)
            loop.stop()
        loop.call_soon_threadsafe(stop)
        self._thread.join(timeout=30)
        self.llm.shutdown()

    # ---- the loop thread ---------------------------------------------------------------------

    def _begin(self, entry: _Open) -> None:
        rid = entry.request.request_id
        self._open[rid] = entry
        self._notify()
        if entry.request.params.max_new_tokens == 0:
            # Our contract: no tokens, finished (request_decoding allows 0; the LLM API would
            # still generate one).
            self._finish_all(entry, "length")
            return
        asyncio.get_running_loop().create_task(self._run(entry))

    async def _run(self, entry: _Open) -> None:
        req = entry.request
        try:
            entry.result = self.llm.generate_async(list(req.prompt_ids), sampling_params=entry.sampling,
                                                   streaming=req.streaming, cache_salt=salt_text(req.cache_salt))
            if entry.cancelled:
                entry.result.abort()
            async for out in entry.result:
                self._forward(entry, out)
            self._finish_all(entry, "stop")
        except Exception as e:
            text = str(e) if isinstance(e, (self.api.RequestError, RequestError)) else f"internal error: {e}"
            self._fail(entry, text)

    def _forward(self, entry: _Open, result: Any) -> None:
        # An update from the engine is this engine's "step": the listeners (Triton cancellation
        # poll, metrics) see it at once; both throttle themselves.
        self._notify()
        req = entry.request
        end_id = None if getattr(entry.sampling, "ignore_eos", False) else req.params.end_id
        entry.cached = max(entry.cached, min(int(getattr(result, "cached_tokens", 0) or 0), len(req.prompt_ids)))
        for out in result.outputs:
            i = int(out.index)
            if i in entry.finished:
                continue
            start = entry.sent.get(i, 0)
            tokens = [int(t) for t in out.token_ids[start:]]
            entry.sent[i] = start + len(tokens)
            lps = tops = None
            if req.params.return_log_probs or req.params.top_logprobs:
                start_lp = entry.sent_lp.get(i, 0)
                new = list(out.logprobs[start_lp:start_lp + len(tokens)])
                entry.sent_lp[i] = start_lp + len(new)
                lps, tops = self._log_probs(tokens, new, req.params.top_logprobs)
            if end_id is not None and end_id in tokens:
                # The end token ends the sequence: drop it (and anything after, which there is not).
                cut = tokens.index(end_id)
                tokens = tokens[:cut]
                lps = None if lps is None else lps[:cut]
                tops = None if tops is None else tops[:cut]
            finished = out.finish_reason is not None
            self._emit(entry, i, tokens, lps, tops, out.finish_reason if finished else None)

    def _emit(self, entry: _Open, i: int, tokens: list[int], lps: Optional[list[float]],
              tops: Optional[list], finish_reason: Optional[str]) -> None:
        """One sequence's news to the decoder model. A streamed request gets it as it comes; a
        non-streamed one gets one output per sequence, with all its tokens, when it finishes."""
        req = entry.request
        if not req.streaming:
            held = entry.held.setdefault(i, [[], [], []])
            held[0] += tokens
            held[1] += lps or []
            held[2] += tops or []
            if finish_reason is None:
                return
            tokens, lps, tops = held
        elif not tokens and finish_reason is None:
            return
        first = i not in entry.reused_sent
        entry.reused_sent.add(i)
        if finish_reason is not None:
            entry.finished.add(i)
        self._deliver(entry, SequenceOutput(
            req.request_id, i, tokens, lps if req.params.return_log_probs else None,
            tops if req.params.top_logprobs else None, finish_reason is not None, finish_reason,
            num_reused_tokens=entry.cached if first else 0))

    @staticmethod
    def _log_probs(tokens: list[int], entries: list[Any], n: int) -> tuple[list[float], list[list[tuple[int, float]]]]:
        """Per token: the sampled token's log-prob, and the top n (rank order) from 1.2.1's
        {token id: Logprob(logprob, rank)} (R:35-43); a plain float list carries no alternatives."""
        lps, tops = [], []
        for token, entry in zip(tokens, entries):
            if isinstance(entry, dict):
                chosen = entry.get(token)
                lps.append(float(chosen.logprob) if chosen is not None else float("nan"))
                ranked = sorted(((lp.rank if lp.rank is not None else 1 << 30, tid, float(lp.logprob))
                                 for tid, lp in entry.items()))
                tops.append([(int(tid), lp) for _, tid, lp in ranked[:n]])
            else:
                lps.append(float(entry))
                tops.append([])
        return lps, tops

    def _finish_all(self, entry: _Open, reason: str) -> None:
        """The request is over: every sequence not yet finished gets its final (empty) output."""
        for i in range(entry.request.params.num_return_sequences):
            if i not in entry.finished:
                self._emit(entry, i, [], None, None, "cancelled" if entry.cancelled else reason)
        self._close(entry)

    def _fail(self, entry: _Open, text: str) -> None:
        remaining = [i for i in range(entry.request.params.num_return_sequences) if i not in entry.finished]
        entry.finished.update(remaining)
        for i in remaining:
            self._deliver(entry, SequenceOutput(entry.request.request_id, i, [], finished=True,
                                                finish_reason="error", error=text))
        self._close(entry)

    def _close(self, entry: _Open) -> None:
        if self._open.pop(entry.request.request_id, None) is not None:
            with self._lock:
                self._count -= 1
            self._notify()

    def _cancel(self, request_id: str) -> None:
        entry = self._open.get(request_id)
        if entry is None or entry.cancelled:
            return
        entry.cancelled = True
        if entry.result is not None:
            entry.result.abort()

    def _deliver(self, entry: _Open, out: SequenceOutput) -> None:
        try:
            entry.callback(out)
        except Exception:
            logger.exception("output callback of request %s failed", out.request_id)

    def _notify(self) -> None:
        for listener in self._listeners + self._end_listeners:
            try:
                listener()
            except Exception:
                logger.exception("step listener failed")

    async def _ticker(self) -> None:
        """The CPU engine calls its step listeners every step; here they also run on a clock, for
        requests that wait without updates (queued ones: Triton's cancellation must still be seen)."""
        while True:
            await asyncio.sleep(TICK_S if self._open else IDLE_TICK_S)
            self._notify()


def salt_text(salt: Optional[int]) -> Optional[str]:
    """Our uint64 cache salt as the LLM API's `cache_salt` string; None keeps the unsalted scope."""
    return None if salt is None else str(int(salt))


def read_model_yaml(path: Path) -> dict[str, Any]:
    """The `LLM(...)` arguments of model.yaml: a mapping, nothing else."""
    try:
        args = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(args, dict) or not isinstance(args.get("model"), str):
        raise ValueError(f"{path}: expected a mapping of LLM arguments with `model`")
    return args


def build_llmapi_engine(params: dict[str, str], model_yaml: Path) -> LlmApiEngine:
    """The decoder model's engine (model_repository/tensorrt_llm_llmapi/1/model.py passes its
    model.yaml): `llm_api` picks tensorrt_llm.LLM or the CPU stand-in."""
    kind = params.get("llm_api", "")
    api = load_api(kind)
    args = read_model_yaml(model_yaml)
    # An n > 1 request at temperature 0 is a 400 in the LLM API unless this is set (SP:310-322);
    # the OpenAI API allows it (identical choices), as our CPU decoder does. The stub process runs
    # this model alone, so the environment is ours to set.
    os.environ.setdefault("TLLM_ALLOW_N_GREEDY_DECODING", "1")
    extra = {"cpu_threads": int(params.get("num_threads", "0"))} if kind == "cpu" else {}
    llm = api.LLM(**args, **extra)
    print(f"llama-triton LLM-API decoder: {kind}, model {args['model']}", flush=True)
    return LlmApiEngine(llm, api, max_batch_size=int(params["max_batch_size"]),
                        max_queue_size=int(params["max_queue_size"]))
