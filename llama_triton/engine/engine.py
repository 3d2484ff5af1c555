"""The in-flight batcher: requests join and leave between steps of one batched forward pass.

`submit` and `cancel` are called from other threads (Triton's execute thread); everything else
runs on the engine thread (`start`/`run_forever`) or on whoever calls `step` when there is none.
Each step: take new requests and cancellations, schedule (admit, chunk prefill, decode, preempt),
run one forward pass over the packed batch, sample, check stops, emit outputs, retire.

Guides compile on the engine's own compile threads, never on the caller's thread (Triton's execute
thread, which also serves the health probes) nor on the engine thread: a guided request is parked
in the scheduler (`SequenceStatus.WAITING_FOR_GUIDE`, as vLLM parks requests in WAITING_FOR_FSM)
until its grammar is ready, while the others keep decoding; the compile's end wakes the engine.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..contract import EngineStopped, QueueFull, RequestError
from ..llama.checkpoint import read_json_file
from ..llama.config import ModelConfig
from ..llama.dtype import resolve_dtype
from ..llama.linear import configure_matmul
from ..llama.loader import load_model
from .config import EngineConfig, auto_num_threads
from .kv_cache import BlockManager
from .model_runner import ModelRunner
from .scheduler import ScheduledBatch, Scheduler
from .sequence import Sequence, SequenceStatus
from .stop_words import StopWords
from .types import GenerationRequest, OutputCallback, SequenceOutput

logger = logging.getLogger(__name__)

SamplerFactory = Callable[[int, Any], Any]  # (vocab_size, hf_tokenizer or None) -> Sampler


@dataclass
class RequestState:
    request: GenerationRequest
    callback: OutputCallback
    max_new_tokens: int                                   # clamped to max_seq_len - prompt_len
    samplings: list[Any] = field(default_factory=list)    # one SequenceSampling per sequence index
    guide: Optional[Future] = None                        # the guide's compile, while parked
    seqs: dict[int, Sequence] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)
    stop_words: StopWords = field(init=False)

    def __post_init__(self) -> None:
        self.stop_words = StopWords(self.request.params.stop_words)

    @property
    def num_sequences(self) -> int:
        return self.request.params.num_return_sequences


def _load_tokenizer(model_dir: str) -> Any:
    """The Hugging Face tokenizer when the checkpoint ships one (guided decoding needs it), else None."""
    if not any(os.path.exists(os.path.join(model_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    from llama_triton.text.sentencepiece_compat import align_converted_sentencepiece, ensure_sentencepiece_proto
    ensure_sentencepiece_proto()  # a checkpoint with only tokenizer.model
    return align_converted_sentencepiece(AutoTokenizer.from_pretrained(model_dir), model_dir)


def _default_sampler_factory(vocab_size: int, hf_tokenizer: Any) -> Any:
    from .sampler import Sampler
    return Sampler(vocab_size, hf_tokenizer=hf_tokenizer)


class Engine:
    """The CPU decoder: one instance per `tensorrt_llm` model instance.

    Outputs go to each request's callback on the engine thread: streaming requests get one
    `SequenceOutput` per step per sequence (the new token; the last one has `finished` set),
    non-streaming requests one final output per sequence with all tokens. The first output of a
    sequence carries `num_reused_tokens`. An `end_id` token (or the stop token that ends a guided
    grammar) is not returned: its step's output is empty with finish_reason "stop". Stop words are
    returned. Every sequence ends with exactly one `finished` output, whatever the reason.
    """

    def __init__(self, model_dir: str, config: EngineConfig, sampler_factory: Optional[SamplerFactory] = None) -> None:
        self.config = config
        self.dtype = resolve_dtype(config.dtype)
        if config.num_threads is not None:
            threads = config.num_threads
            if threads == 0:
                model_config = ModelConfig.from_hf(read_json_file(model_dir, "config.json"))
                threads = auto_num_threads(model_config.macs_per_token)
            torch.set_num_threads(threads)
        self.model = load_model(model_dir, self.dtype)
        self.matmul_plan = configure_matmul(self.model, config.matmul)   # weight shape -> kernels, for the log
        self.model_config = self.model.config
        self.vocab_size = self.model_config.vocab_size
        self.max_seq_len = config.max_seq_len or self.model_config.max_position_embeddings
        kv_capacity = config.num_blocks * config.block_size
        if kv_capacity < self.max_seq_len:
            raise ValueError(f"the KV cache holds {kv_capacity} tokens (max_num_tokens), less than max_seq_len "
                             f"{self.max_seq_len}: raise max_num_tokens or lower max_seq_len")
        self.tokenizer = _load_tokenizer(model_dir)
        self.sampler = (sampler_factory or _default_sampler_factory)(self.vocab_size, self.tokenizer)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_reuse)
        self.scheduler = Scheduler(config, self.block_manager)
        self.runner = ModelRunner(self.model, config.num_blocks, config.block_size)

        # counters: plain ints, written by the engine thread only
        self.num_steps = 0
        self.num_forward_passes = 0
        self.num_decode_passes = 0          # forward passes that decoded at least one running sequence
        self.num_prefill_tokens = 0         # prompt (or recomputed) tokens run through the model
        self.num_generated_tokens = 0       # tokens sampled
        self.num_reused_tokens = 0          # prompt tokens served from the prefix cache
        self.num_preemptions = 0            # sequences sent back to waiting for lack of KV blocks

        self._requests: dict[str, RequestState] = {}   # engine thread only
        self._next_seq_id = 0
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._inbox: deque[tuple[GenerationRequest, OutputCallback, int]] = deque()  # guarded by _lock
        self._cancelled: set[str] = set()                                             # guarded by _lock
        self._active_ids: set[str] = set()                                            # guarded by _lock
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._cancel_step: dict[str, int] = {}                                       # guarded by _lock
        self._step_listeners: list[Callable[[], None]] = []
        self._step_end_listeners: list[Callable[[], None]] = []
        self.num_cancelled = 0              # requests retired by cancel()
        self.last_cancel_latency_steps = 0  # steps from cancel() to the step that freed the slots
        self._num_running = 0   # scheduler counts as of the end of the last step, safe to read anywhere
        self._num_waiting = 0
        self._num_queued = 0
        self._compiles: Optional[ThreadPoolExecutor] = None   # made on the first guided request
        self._guides_ready = False                             # guarded by _lock: a parked compile ended

    # ---- public, thread-safe -------------------------------------------------------------

    @property
    def num_running(self) -> int:
        """Sequences holding batch slots (a request with n sequences counts n from admission)."""
        return self._num_running

    @property
    def num_waiting(self) -> int:
        """Sequences waiting for admission: queued requests (n each) and preempted sequences."""
        with self._lock:
            queued = sum(req.params.num_return_sequences for req, _, _ in self._inbox)
        return queued + self._num_waiting

    @property
    def num_free_blocks(self) -> int:
        return self.block_manager.num_free_blocks

    def submit(self, request: GenerationRequest, callback: OutputCallback) -> None:
        """Queues a request. Raises RequestError for a request that cannot be served, QueueFull when full.

        Quick: parameters are checked here, the guide compiles later, on the compile threads."""
        max_new_tokens = self._validate(request)
        check = getattr(self.sampler, "check", None)
        if check is not None:
            check(request.params, request.prompt_ids)
        with self._lock:
            if self._stopping:
                raise EngineStopped("the engine has shut down")
            if request.request_id in self._active_ids:
                raise RequestError(f"request id {request.request_id!r} is already in flight")
            if len(self._inbox) + self._num_queued >= self.config.max_queue_size:
                raise QueueFull(f"the engine queue is full ({self.config.max_queue_size} waiting requests)")
            self._active_ids.add(request.request_id)
            self._inbox.append((request, callback, max_new_tokens))
            self._wakeup.notify()

    def cancel(self, request_id: str) -> None:
        """Retires the request's sequences at the next step; each gets finish_reason "cancelled"."""
        with self._lock:
            if request_id in self._active_ids:
                self._cancelled.add(request_id)
                self._cancel_step.setdefault(request_id, self.num_steps)
                self._wakeup.notify()

    def add_step_listener(self, listener: Callable[[], None], *, at_end: bool = False) -> None:
        """Called on the engine thread at the start of every step (e.g. to poll Triton's
        cancellation), or at its end with `at_end` (e.g. to publish counters)."""
        (self._step_end_listeners if at_end else self._step_listeners).append(listener)

    @staticmethod
    def _notify(listeners: list[Callable[[], None]]) -> None:
        for listener in listeners:
            try:
                listener()
            except Exception:
                logger.exception("step listener failed")

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine thread is already running")
        self._thread = threading.Thread(target=self.run_forever, name="llama-triton-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stops the engine thread; unfinished requests end with finish_reason "error"."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._abort_all("the engine shut down")
        if self._compiles is not None:
            self._compiles.shutdown(wait=False, cancel_futures=True)

    def run_forever(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._has_work_locked():
                    self._wakeup.wait()
                if self._stopping:
                    break
            try:
                self.step()
            except Exception:
                logger.exception("engine step failed")
        self._abort_all("the engine shut down")

    @property
    def has_work(self) -> bool:
        with self._lock:
            return self._has_work_locked()

    # ---- the step (engine thread) ---------------------------------------------------------

    def step(self) -> None:
        self.num_steps += 1
        self._notify(self._step_listeners)
        try:
            self._take_inbox()
            batch = self.scheduler.schedule()
            # The queue bound (submit) reads these while the batch runs: what waits now, not
            # what waited at the end of the last step.
            self._num_queued = self.scheduler.num_queued
            self._num_waiting = self.scheduler.num_waiting
            self.num_reused_tokens += batch.num_reused_tokens
            self.num_preemptions += len(batch.preempted)
            if batch.seqs:
                self._run_batch_or_fail(batch)
        finally:
            self._num_running = self.scheduler.num_running
            self._num_waiting = self.scheduler.num_waiting
            self._num_queued = self.scheduler.num_queued
            self._notify(self._step_end_listeners)

    def _run_batch_or_fail(self, batch: ScheduledBatch) -> None:
        try:
            self._run_batch(batch)
        except Exception as exc:
            logger.exception("forward pass or sampling failed; failing the requests of this batch")
            for request_id in {seq.request_id for seq in batch.seqs}:
                state = self._requests.get(request_id)
                if state is not None:
                    self._finish_request(state, "error", f"internal error: {exc}")

    def _run_batch(self, batch: ScheduledBatch) -> None:
        is_decode = [seq.is_decoding for seq in batch.seqs]
        logits = self.runner.run(batch.seqs, batch.num_new_tokens)
        self.num_forward_passes += 1
        self.num_decode_passes += any(is_decode)
        self.num_prefill_tokens += sum(n for n, d in zip(batch.num_new_tokens, is_decode) if not d)

        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            self.scheduler.computed(seq, num_new)
        targets, rows, row = [], [], 0   # logits row r belongs to the r-th seq that reached its last token
        for seq in batch.seqs:
            if seq.num_uncomputed_tokens:
                continue  # a prefill chunk: no token yet
            for s in self._fork(seq) if seq.num_forks > 1 else [seq]:
                targets.append(s)
                rows.append(row)
            row += 1
        if not targets:
            return
        if rows != list(range(logits.shape[0])):
            logits = logits[rows]
        results = self.sampler.sample(logits, [s.sampling for s in targets], overwrite=True)
        for seq, result in zip(targets, results):
            self._append_token(seq, result)

    def _fork(self, parent: Sequence) -> list[Sequence]:
        state = self._requests[parent.request_id]
        children = [self._new_sequence(state, i) for i in range(1, parent.num_forks)]
        for child in children:
            child.token_ids = list(parent.token_ids)
            child.num_reused_tokens = parent.num_reused_tokens
        self.runner.copy_blocks(self.scheduler.fork(parent, children))
        return [parent, *children]

    def _append_token(self, seq: Sequence, result: Any) -> None:
        """Records one sampled token (the sampler has already `accept`ed it) and checks the stops."""
        state = self._requests.get(seq.request_id)
        if state is None:
            return  # failed earlier in this step (another sequence of the request)
        params = state.request.params
        token_id = int(result.token_id)
        self.num_generated_tokens += 1
        if getattr(result, "error", None):
            self._finish_request(state, "error", result.error)
            return
        if token_id == params.end_id or seq.sampling.is_grammar_terminated:
            # the stop token (end_id, or the one that ended the grammar) is not returned
            self._emit(state, seq, [], finish_reason="stop")
            return
        log_prob = result.logprob if params.return_log_probs else None
        top = result.top_logprobs if params.top_logprobs > 0 else None
        seq.append_token(token_id, log_prob, top)
        finish_reason = None
        if state.stop_words.hit(seq.token_ids, seq.num_prompt_tokens):
            finish_reason = "stop"
        elif seq.num_generated_tokens >= state.max_new_tokens:
            finish_reason = "length"
        self._emit(state, seq, [token_id], finish_reason,
                   log_probs=None if log_prob is None else [log_prob],
                   top_logprobs=None if top is None else [top])

    # ---- outputs --------------------------------------------------------------------------

    def _emit(self, state: RequestState, seq: Sequence, token_ids: list[int], finish_reason: Optional[str],
              log_probs: Optional[list[float]] = None,
              top_logprobs: Optional[list[list[tuple[int, float]]]] = None) -> None:
        finished = finish_reason is not None
        if finished:
            self._retire(state, seq)
        if state.request.streaming:
            out = SequenceOutput(state.request.request_id, seq.sequence_index, token_ids, log_probs, top_logprobs,
                                 finished, finish_reason,
                                 num_reused_tokens=seq.num_reused_tokens if seq.num_outputs == 0 else 0)
        elif finished:
            params = state.request.params
            out = SequenceOutput(state.request.request_id, seq.sequence_index, seq.generated_ids,
                                 list(seq.log_probs) if params.return_log_probs else None,
                                 list(seq.top_logprobs) if params.top_logprobs > 0 else None,
                                 True, finish_reason, num_reused_tokens=seq.num_reused_tokens)
        else:
            return
        seq.num_outputs += 1
        self._deliver(state, out)

    def _deliver(self, state: RequestState, out: SequenceOutput) -> None:
        try:
            state.callback(out)
        except Exception:
            logger.exception("output callback of request %s failed", out.request_id)

    def _retire(self, state: RequestState, seq: Sequence) -> None:
        self.scheduler.finish(seq)
        state.finished.add(seq.sequence_index)
        if len(state.finished) == state.num_sequences:
            del self._requests[state.request.request_id]
            with self._lock:
                self._active_ids.discard(state.request.request_id)
                self._cancelled.discard(state.request.request_id)
                self._cancel_step.pop(state.request.request_id, None)

    def _finish_request(self, state: RequestState, finish_reason: str, error: Optional[str] = None,
                        error_code: str = "internal_error") -> None:
        """Ends every unfinished sequence of the request (cancel, error) with one final output each."""
        unfinished = [i for i in range(state.num_sequences) if i not in state.finished]
        for index in unfinished:
            seq = state.seqs.get(index)
            if seq is not None and seq.status is not SequenceStatus.FINISHED:
                self.scheduler.finish(seq)
        for index in unfinished:
            seq = state.seqs.get(index)
            keep = seq is not None and not state.request.streaming and finish_reason == "cancelled"
            out = SequenceOutput(state.request.request_id, index, seq.generated_ids if keep else [],
                                 finished=True, finish_reason=finish_reason, error=error, error_code=error_code,
                                 num_reused_tokens=seq.num_reused_tokens if seq and not seq.num_outputs else 0)
            state.finished.add(index)
            self._deliver(state, out)
        self._requests.pop(state.request.request_id, None)
        with self._lock:
            self._active_ids.discard(state.request.request_id)
            self._cancelled.discard(state.request.request_id)
            self._cancel_step.pop(state.request.request_id, None)

    # ---- admission of new requests (engine thread) ----------------------------------------

    def _take_inbox(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, deque()
            # Still queued until schedule() has placed them: without this, requests submitted
            # meanwhile saw neither these nor their places, and the queue overfilled its bound.
            self._num_queued += len(inbox)
            cancelled, self._cancelled = self._cancelled, set()
            guides_ready, self._guides_ready = self._guides_ready, False
        for request, callback, max_new_tokens in inbox:
            state = RequestState(request, callback, max_new_tokens)
            self._requests[request.request_id] = state
            guided = bool(request.params.guide_type) and hasattr(self.sampler, "compile_guide")
            if not guided and not self._set_up_sampling(state, None):
                continue
            seq = self._new_sequence(state, 0)
            seq.num_forks = request.params.num_return_sequences
            if guided:
                state.guide = self._compile_guide(request)
                self.scheduler.park(seq)
            else:
                self.scheduler.add(seq)
        if guides_ready:
            self._unpark_compiled()
        for request_id in cancelled:
            with self._lock:
                asked_at = self._cancel_step.pop(request_id, self.num_steps)
            state = self._requests.get(request_id)
            if state is not None:
                self._finish_request(state, "cancelled")
                self.num_cancelled += 1
                self.last_cancel_latency_steps = self.num_steps - asked_at

    def _set_up_sampling(self, state: RequestState, compiled: Any) -> bool:
        """Makes the request's per-sequence sampling state; False (request failed) on an error."""
        request = state.request
        try:
            prompt = list(request.prompt_ids)
            state.samplings = [self.sampler.new_sequence(request.params, i, prompt, compiled)
                               if compiled is not None else self.sampler.new_sequence(request.params, i, prompt)
                               for i in range(request.params.num_return_sequences)]
        except RequestError as exc:
            self._finish_request(state, "error", str(exc), "invalid_request")
            return False
        except Exception as exc:
            logger.exception("setting up sampling for request %s failed", request.request_id)
            self._finish_request(state, "error", f"internal error: {exc}")
            return False
        if 0 in state.seqs:
            state.seqs[0].sampling = state.samplings[0]
        return True

    def _compile_guide(self, request: GenerationRequest) -> Future:
        if self._compiles is None:
            self._compiles = ThreadPoolExecutor(max_workers=2, thread_name_prefix="guide-compile")
        future = self._compiles.submit(self.sampler.compile_guide, request.params)

        def ready(_):
            with self._lock:
                self._guides_ready = True
                self._wakeup.notify()

        future.add_done_callback(ready)
        return future

    def _unpark_compiled(self) -> None:
        """Parked sequences whose guide has compiled join the waiting queue; a failed compile
        fails its request alone."""
        for seq in [s for s in self.scheduler.parked]:
            state = self._requests.get(seq.request_id)
            if state is None or state.guide is None or not state.guide.done():
                continue
            future, state.guide = state.guide, None
            try:
                compiled = future.result()
            except RequestError as exc:
                self._finish_request(state, "error", str(exc), "invalid_request")
                continue
            except Exception as exc:
                logger.exception("compiling the guide of request %s failed", seq.request_id)
                self._finish_request(state, "error", f"internal error: {exc}")
                continue
            if self._set_up_sampling(state, compiled):
                self.scheduler.unpark(seq)

    def _new_sequence(self, state: RequestState, index: int) -> Sequence:
        prompt = list(state.request.prompt_ids)
        seq = Sequence(self._next_seq_id, state.request.request_id, index, prompt, len(prompt),
                       sampling=state.samplings[index] if index < len(state.samplings) else None,
                       cache_salt=state.request.cache_salt,
                       order=(state.request.priority, state.request.tenant_rank))
        self._next_seq_id += 1
        state.seqs[index] = seq
        return seq

    def _validate(self, request: GenerationRequest) -> int:
        """Checks a request against the engine limits; returns its clamped max_new_tokens."""
        params, prompt = request.params, request.prompt_ids
        if not prompt:
            raise RequestError("the prompt is empty")
        if any(not 0 <= int(t) < self.vocab_size for t in prompt):
            raise RequestError(f"prompt token ids must be in [0, {self.vocab_size})")
        if len(prompt) >= self.max_seq_len:
            raise RequestError(f"the prompt has {len(prompt)} tokens; the engine's max_seq_len is {self.max_seq_len}")
        if params.max_new_tokens < 1:
            raise RequestError("max_new_tokens must be at least 1")
        n = params.num_return_sequences
        if not 1 <= n <= self.config.max_batch_size:
            raise RequestError(f"num_return_sequences must be in [1, {self.config.max_batch_size}]")
        if self.block_manager.blocks_needed(len(prompt), n) > self.block_manager.num_blocks:
            raise RequestError(f"{n} sequences of a {len(prompt)}-token prompt do not fit in the KV cache")
        if params.end_id is not None and not -1 <= params.end_id < self.vocab_size:
            raise RequestError(f"end_id must be in [0, {self.vocab_size}) or -1 (none)")
        for word in params.stop_words:
            if any(not 0 <= t < self.vocab_size for t in word):
                raise RequestError(f"stop word token ids must be in [0, {self.vocab_size})")
        return min(params.max_new_tokens, self.max_seq_len - len(prompt))

    def _has_work_locked(self) -> bool:
        return bool(self._inbox or self._cancelled or self._guides_ready or self.scheduler.has_work)

    def _abort_all(self, error: str) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, deque()
        for request, callback, max_new_tokens in inbox:
            self._requests[request.request_id] = RequestState(request, callback, max_new_tokens)
        for state in list(self._requests.values()):
            self._finish_request(state, "error", error, "shutting_down")
        self._num_running = self.scheduler.num_running
        self._num_waiting = self.scheduler.num_waiting
