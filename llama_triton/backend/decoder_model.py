"""The CPU reference decoder model: TensorRT-LLM's `tensorrt_llm` tensors over llama_triton's engine.

model_repository/tensorrt_llm/1/model.py is a shell around `DecoderModel`; Triton's module
(`triton_python_backend_utils`) is passed in, so this runs without Triton in the unit tests.
Tensor parsing lives in llama_triton.backend.request_decoding, batching in the engine. A request
with `stop=true` cancels the in-flight request with the same id (TensorRT-LLM's way); Triton's own
cancellation is honoured too, checked before every engine step.
"""
from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from typing import Callable, Optional

from llama_triton.backend import trtllm_emulation as trtllm
from llama_triton.backend.engine_setup import EngineMetrics, build_engine
from llama_triton.backend.request_decoding import StopRequest, output_arrays, parse_request
from llama_triton.backend.response_pump import ResponsePump
from llama_triton.startup_heap import freeze_startup_heap
from llama_triton import defaults, ttft_stamps
from llama_triton.contract import EngineStopped, QueueFull, RequestError
from llama_triton.engine.types import DecoderEngine
from llama_triton.trtllm import decoder_errors as codes


# Triton request parameter (not a tensor: TensorRT-LLM's input list stays as it is) by which a
# client accepts several tokens per streamed response when the decoder's sending falls behind.
# The frontend sets it; its stream handling takes any number of tokens per response.
MERGE_PARAMETER = "llama_triton_merge_responses"


def wants_merged_responses(request) -> bool:
    try:
        params = request.parameters()
    except Exception:       # a Triton without request parameters
        return False
    if not params or MERGE_PARAMETER not in params:
        return False
    return json.loads(params).get(MERGE_PARAMETER) is True


class _Live:
    """A live request with an id: polled for Triton's cancellation until its final response.

    Triton releases a request once its FINAL response is sent, and is_cancelled() on it after that
    reaches freed memory in the Triton process (tried: tritonserver died with SIGSEGV). So a poll
    and the final response of one request never overlap: both take the request's own guard, not
    the model's lock, which execute() needs to admit every new request."""
    __slots__ = ("request", "guard", "done")

    def __init__(self, request):
        self.request = request
        self.guard = threading.Lock()
        self.done = False           # its final response is going out: never poll it again


class DecoderModel:
    """One instance of the `tensorrt_llm` model: its engine, and which live request id is whose."""

    def __init__(self, pb_utils, config: dict,
                 engine_factory: Optional[Callable[[dict[str, str]], DecoderEngine]] = None):
        self.pb = pb_utils
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.declared_inputs = frozenset(i["name"] for i in config["input"])
        self.declared_outputs = frozenset(o["name"] for o in config["output"])
        self.exclude_input_default = params.get("exclude_input_in_output", "true") == "true"
        # GPU mode: behave as TensorRT-LLM's C++ backend does (llama_triton/backend/trtllm_emulation.py).
        self.trtllm = params.get("emulate_tensorrt_llm", "false") == "true"
        self.block_size = int(params.get("tokens_per_block", defaults.TOKENS_PER_BLOCK))
        self.engine = (engine_factory or build_engine)(params)
        # Responses leave from their own thread; a request that asks for it (MERGE_PARAMETER) gets
        # several tokens per response when sending falls behind. Others, and every request in GPU
        # mode, get one response per step, as from TensorRT-LLM's backend.
        self.pump = ResponsePump()
        # Time points of each request's first response, for benchmarks/ttft_segments.py (off by default).
        self.stamps = ttft_stamps.StampLog("decoder") if ttft_stamps.ENABLED else None
        # Not for the zero-cost decoder either: it makes tokens far faster than any sender, and it
        # exists to measure the serving path per streamed token (one response per token).
        self.merge_allowed = not self.trtllm and params.get("decoder_kind", "llama") != "zero_cost"
        # Three threads share this stub's GIL: the engine, the response pump and Triton's execute
        # thread that admits new requests. At the default 5 ms switch interval a new request
        # waited a median 21 ms at c=16 before execute() ran (measured); 1 ms hands the GIL over
        # sooner. The stub process runs this model alone, so the setting is ours to make.
        sys.setswitchinterval(0.001)
        self.metrics = EngineMetrics(pb_utils, self.engine)
        self.lock = threading.Lock()
        self.live: dict[str, _Live] = {}  # request id -> its request; Triton-cancel polling
        self.last_cancel_poll = 0.0
        self.engine.add_step_listener(self._before_step)
        self.engine.add_step_listener(self.metrics.update, at_end=True)
        self.engine.start()
        freeze_startup_heap()

    def _before_step(self):
        # is_cancelled() is a round trip to the Triton process per request: poll at most every
        # 100 ms, as TensorRT-LLM's backend does (cancellation_check_period_ms). The round trips
        # run outside the model's lock (execute() takes it to admit every new request), each under
        # its request's guard (_Live).
        now = time.monotonic()
        if now - self.last_cancel_poll < 0.1:
            return
        self.last_cancel_poll = now
        with self.lock:
            live = list(self.live.items())
        for rid, entry in live:
            with entry.guard:
                if entry.done:
                    continue
                cancelled = entry.request.is_cancelled()
            if cancelled:
                with self.lock:
                    # The same request still: its id may have ended and been reused meanwhile.
                    still = self.live.get(rid) is entry
                if still:
                    self.engine.cancel(rid)

    def execute(self, requests):
        entered = ttft_stamps.now() if self.stamps is not None else None
        for request in requests:
            self._admit(request, entered)
        return None

    def _admit(self, request, entered: Optional[int] = None):
        sender = request.get_response_sender()
        rid = request.request_id()
        # Requests without an id (allowed by Triton) still need a unique engine key; they just
        # cannot be cancelled by a later stop request.
        engine_id = rid or f"anonymous-{uuid.uuid4().hex}"

        def get(name):
            if name not in self.declared_inputs:
                return None
            t = self.pb.get_input_tensor_by_name(request, name)
            return None if t is None else t.as_numpy()

        try:
            parsed, exclude_input = parse_request(get, engine_id, exclude_input_default=self.exclude_input_default,
                                                  trtllm=self.trtllm)
        except RequestError as e:
            return self._fail(sender, str(e), codes.INVALID_REQUEST)
        if isinstance(parsed, StopRequest):
            if self.trtllm:
                if not rid:
                    return self._fail(sender, trtllm.STOP_WITHOUT_ID, codes.INTERNAL_ERROR)
                self.engine.cancel(parsed.request_id)
                # An empty response with the final flag, not a bare flag (tensorrtllm_backend
                # model_instance_state.cc:903-904, sendEnqueueResponse): a client sees it even
                # without triton_enable_empty_final_response.
                sender.send(self.pb.InferenceResponse(output_tensors=[]),
                            flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            self.engine.cancel(parsed.request_id)
            sender.send(flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        params = parsed.params
        prompt = None if exclude_input else parsed.prompt_ids
        # Build only what the caller reads (the frontend asks for four outputs): every tensor
        # costs a copy through shared memory to the Triton process per streamed token.
        requested = frozenset(request.requested_output_names())
        wanted = self.declared_outputs.intersection(requested) or self.declared_outputs
        shaper = None
        if self.trtllm:
            raw_end_id = get("end_id")
            refusal = trtllm.executor_refusal(
                len(parsed.prompt_ids), None if raw_end_id is None else int(raw_end_id.reshape(-1)[0]),
                vocab_size=getattr(self.engine, "vocab_size", 0) or 1 << 31,
                max_input_len=getattr(self.engine, "max_seq_len", 0) or 1 << 31)
            if refusal:
                return self._fail(sender, trtllm.executor_error_text(refusal), codes.INVALID_REQUEST)
            shaper = trtllm.ResponseShaper(
                num_sequences=params.num_return_sequences, streaming=parsed.streaming,
                prompt_len=len(parsed.prompt_ids), block_size=self.block_size, declared=self.declared_outputs,
                perf_metrics=trtllm.wants_perf_metrics(get), requested=requested or self.declared_outputs)
        remaining = {"n": params.num_return_sequences}
        cum_log_probs = [0.0] * params.num_return_sequences   # running totals, as TensorRT-LLM reports
        if rid:
            with self.lock:
                # A second request under a live id would take over the original's entry (its
                # Triton cancellation) and its engine slot: refuse it, as the engine would.
                if rid in self.live:
                    return self._fail(sender, f"request id {rid!r} is already in flight", codes.INVALID_REQUEST)
                self.live[rid] = _Live(request)

        def send_output(out):
            if remaining["n"] < 0:
                return      # failed already: the error response was the final one
            if out.error is not None:
                # One error ends the request: with n > 1 the engine fails every unfinished
                # sequence, and only the first failure may answer (a closed sender raises).
                self._forget(rid, request)
                remaining["n"] = -1
                return self._fail(sender, out.error, out.error_code)
            # Streaming responses carry only the new tokens, as TensorRT-LLM's do.
            if out.log_probs and 0 <= out.sequence_index < len(cum_log_probs):
                cum_log_probs[out.sequence_index] += float(sum(out.log_probs))
            arrays = output_arrays(out, prompt_ids=None if parsed.streaming else prompt,
                                   cum_log_prob=cum_log_probs[out.sequence_index]
                                   if 0 <= out.sequence_index < len(cum_log_probs) else 0.0,
                                   with_log_probs=params.return_log_probs, num_top=params.top_logprobs,
                                   declared=wanted)
            if shaper is not None:
                try:
                    arrays = {k: v for k, v in shaper.shape(out, arrays).items() if k in wanted}
                except trtllm.MissingOutput as e:
                    self.engine.cancel(engine_id)
                    self._forget(rid, request)
                    remaining["n"] = -1     # the error response was the final one
                    return self._fail(sender, str(e), codes.INTERNAL_ERROR)
            tensors = [self.pb.Tensor(k, v) for k, v in arrays.items()]
            last = False
            if out.finished:
                remaining["n"] -= 1
                last = remaining["n"] == 0
            if last:
                self._forget(rid, request)
            sender.send(self.pb.InferenceResponse(output_tensors=tensors),
                        flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)

        pump = self.pump
        merge = self.merge_allowed and wants_merged_responses(request)
        points = None
        if self.stamps is not None:
            points, send_output, on_output = self._stamped(rid, entered, send_output, pump, merge)
        else:
            def on_output(out):     # engine thread
                pump.put(send_output, out, merge)

        try:
            self.engine.submit(parsed, on_output)
        except Exception as e:
            # Every admitted request gets exactly one final answer, whatever the engine raised.
            self._forget(rid, request)
            self._refused(sender, e)
            return
        if points is not None:
            points.setdefault("submitted", ttft_stamps.now())

    def _stamped(self, rid, entered, send_output, pump, merge):
        """The request's time points, and send_output and on_output noting its first output (engine
        thread) and its first send (pump thread, before and after the round trip to Triton); the
        record is written after that send."""
        points = {"rid": rid, "exec": entered}

        def stamped_send(out):
            first = "send" not in points
            if first:
                points["send"] = ttft_stamps.now()
            send_output(out)
            if first:
                points["sent"] = ttft_stamps.now()
                self.stamps.write(dict(points))     # a copy: execute() may still add "submitted"

        def on_output(out):     # engine thread
            if "first_out" not in points:
                points["first_out"] = ttft_stamps.now()
            pump.put(stamped_send, out, merge)
        return points, stamped_send, on_output

    def _refused(self, sender, e: Exception) -> None:
        """The final answer to a request the engine did not take."""
        if isinstance(e, QueueFull):
            code = codes.QUEUE_FULL
            text = trtllm.queue_full_text(self.engine.config.max_queue_size) if self.trtllm else f"queue full: {e}"
        elif isinstance(e, EngineStopped):
            code, text = codes.SHUTTING_DOWN, trtllm.SHUTDOWN_TEXT if self.trtllm else str(e)
        elif isinstance(e, RequestError):
            code, text = codes.INVALID_REQUEST, trtllm.executor_error_text(str(e)) if self.trtllm else str(e)
        else:
            code, text = codes.INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}"
        self._fail(sender, text, code)

    def _forget(self, rid, request):
        """Before a request's final response: no poll of it from now on (one in flight ends first)."""
        if not rid:
            return
        with self.lock:
            entry = self.live.get(rid)
            if entry is None or entry.request is not request:
                return
            del self.live[rid]
        with entry.guard:
            entry.done = True

    def _fail(self, sender, message: str, code: str):
        """The request's final response: an error. The CPU decoder puts its typed code in front
        (llama_triton/trtllm/decoder_errors.py); GPU mode keeps TensorRT-LLM's own texts, which the
        frontend matches in that module's table."""
        text = message if self.trtllm else codes.typed_message(code, message)
        # INTERNAL, the code of every error TensorRT-LLM's backend sends (TRITONSERVER_ERROR_INTERNAL).
        status = getattr(self.pb.TritonError, "INTERNAL", None)
        error = self.pb.TritonError(text) if status is None else self.pb.TritonError(text, status)
        sender.send(self.pb.InferenceResponse(output_tensors=[], error=error),
                    flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        self.engine.shutdown()
        self.pump.close()
        if self.stamps is not None:
            self.stamps.close()
        # Drop the metric objects while the stub can still write them back; destroying them
        # during interpreter shutdown crashed the stub now and then.
        self.metrics = None
