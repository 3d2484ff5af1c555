"""The frontend's only door to Triton: the `tensorrt_llm` decoder over tritonclient's asyncio gRPC.

Reads which tensors the deployed decoder declares (its capabilities), streams one request's
responses as plain Python values, and cancels the way TensorRT-LLM expects (`stop=true` with
the same request id) besides closing the stream.

Triton going away (killed, restarted by the launcher) ends every open stream with
`DecoderUnavailable` at once (gRPC sees the connection drop), and drops the cached capabilities so
they are read again from the restarted server. The channel itself reconnects on its own; its
reconnect backoff is capped at about a second (gRPC's default grows to two minutes), so the
frontend serves again within a second of Triton's models being ready, without a restart.
"""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Optional

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE
from tritonclient.utils import InferenceServerException

from frontend.decoder.interface import (DecoderBusy, DecoderCapabilities, DecoderError, DecoderFailure,
                                        DecoderResponse, DecoderUnavailable)
from frontend.decoder.request_stream import RequestStream
from frontend.telemetry import current_request, ttft_stamps
from llama_triton.contract import stop_request_arrays
from llama_triton.trtllm import backend_contract
from llama_triton.trtllm import decoder_errors
from llama_triton.trtllm.tensor_contract import COMMON_OUTPUTS, CPU_ONLY_OUTPUTS, PERF_METRIC_OUTPUTS

log = logging.getLogger("frontend.triton")

DECODER_MODEL = "tensorrt_llm"
# The aio client has no `enable_empty_final_response` argument (the sync one sets this parameter):
# without it a request that ends with no response of its own (a stop request, a final flag sent
# alone) never tells the client it is over.
EMPTY_FINAL_RESPONSE = {"triton_enable_empty_final_response": True}
# The CPU decoder may merge a stream's queued tokens into one response when its sending falls
# behind (llama_triton/backend/decoder_model.py MERGE_PARAMETER); responses are read as token lists
# here anyway, so the frontend accepts. TensorRT-LLM's backend ignores the parameter.
GENERATE_PARAMETERS = {**EMPTY_FINAL_RESPONSE, "llama_triton_merge_responses": True}
HEALTH_TIMEOUT_S = 2.0      # a health probe that takes longer says "not ready"
STOP_TIMEOUT_S = 5.0
CHANNEL_ARGS = [
    ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
    ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
    # Reconnect quickly after Triton restarts: gRPC's default backoff grows to 120 s.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# What a response is read for; anything else the decoder declares (is_final, cum_log_probs, ...)
# is not requested, so Triton neither serializes nor sends it. Every tensor costs per streamed
# token in the decoder, Triton and here, so a single-choice request does without sequence_index,
# and a stream to the CPU decoder (beam 1: output_ids holds exactly the new tokens) without
# sequence_length. TensorRT-LLM's backend fails any request that does not ask for both output_ids
# and sequence_length (backend_contract.REQUIRED_OUTPUTS): requests to it always ask for them.
BASE_OUTPUTS = ("output_ids", "num_reused_tokens")
LENGTH_OUTPUTS = ("sequence_length",)
INDEX_OUTPUTS = ("sequence_index",)
LOG_PROB_OUTPUTS = ("output_log_probs",)
TOP_LOG_PROB_OUTPUTS = ("top_log_prob_ids", "top_log_probs")
# TensorRT-LLM's stand-in for num_reused_tokens (with return_perf_metrics): reused KV blocks.
PERF_OUTPUTS = ("kv_cache_reused_blocks",)
# Their element formats (struct codes) as the decoder's tensor contract declares them.
_FORMAT_OF_DTYPE = {"TYPE_INT32": "i", "TYPE_INT64": "q", "TYPE_FP32": "f"}
OUTPUT_FORMATS = {t.name: _FORMAT_OF_DTYPE[t.dtype] for t in COMMON_OUTPUTS + CPU_ONLY_OUTPUTS + PERF_METRIC_OUTPUTS
                  if t.name in BASE_OUTPUTS + LENGTH_OUTPUTS + INDEX_OUTPUTS + LOG_PROB_OUTPUTS
                  + TOP_LOG_PROB_OUTPUTS + PERF_OUTPUTS}


class ContractMismatch(DecoderUnavailable):
    """The served `tensorrt_llm` config breaks TensorRT-LLM's backend contract (backend_contract.py):
    the frontend refuses to serve on it (HTTP 503 naming the tensor, and no start-up at all)."""


async def startup_refusal(decoder) -> Optional[str]:
    """Why the frontend must not start serving on this decoder, or None. Only a config that is
    read and breaks the contract refuses: a Triton not up yet is checked again by each request."""
    if not isinstance(decoder, TritonDecoder):
        return None
    try:
        await decoder.capabilities()
    except ContractMismatch as e:
        return str(e)
    except DecoderFailure:
        return None
    return None


# gRPC statuses of a call that never reached the decoder, or lost it: Triton is down or going away.
_TRANSPORT_DOWN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
                   grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL)


def classify_error(err: Exception) -> Exception:
    """A failure of a decoder call as a DecoderFailure. Transport errors by their gRPC status; the
    decoder's own error texts by llama_triton/trtllm/decoder_errors.py (a typed code at the start of
    the text, or one row of the table of TensorRT-LLM's and Triton's texts), never by words found
    anywhere in the text: a message may quote the request."""
    if isinstance(err, grpc.aio.AioRpcError):
        if err.code() in _TRANSPORT_DOWN:
            return DecoderUnavailable(f"lost the decoder stream: {err.code().name}: {err.details()}")
        return DecoderError(f"{err.code().name}: {err.details()}", internal=True)
    if isinstance(err, InferenceServerException) and err.status() is not None:
        # tritonclient's wrapping of a gRPC error of a unary call (is_model_ready, the model config)
        status = err.status().rpartition(".")[2]
        if status in {c.name for c in _TRANSPORT_DOWN}:
            return DecoderUnavailable(f"{status}: {err.message()}")
        return DecoderError(f"{status}: {err.message()}", internal=True)
    msg = err.message() if isinstance(err, InferenceServerException) else str(err)
    kind = decoder_errors.classify(msg)
    text = decoder_errors.without_code(msg)
    if kind == decoder_errors.BUSY:
        return DecoderBusy(text)
    if kind == decoder_errors.UNAVAILABLE:
        return DecoderUnavailable(text)
    if kind == decoder_errors.INVALID:
        return DecoderError(text, certain=True)     # the decoder says: this request's input
    return DecoderError(text, internal=kind == decoder_errors.INTERNAL)


def decoder_capacity(cfg: dict, params: dict) -> Optional[int]:
    """Requests the decoder holds at once: running batch plus queue. The CPU decoder states both
    as parameters; TensorRT-LLM's config has them as max_batch_size and dynamic_batching's
    default_queue_policy.max_queue_size, which its backend makes the executor's queue bound
    (tensorrtllm_backend model_instance_state.cc:659-675)."""
    batch, queue = params.get("max_batch_size") or "", params.get("max_queue_size") or ""
    if batch.isdigit() and queue.isdigit():
        return int(batch) + int(queue)
    policy = cfg.get("dynamic_batching", {}).get("default_queue_policy", {})
    batch, queue = str(cfg.get("max_batch_size", "")), str(policy.get("max_queue_size", ""))
    if batch.isdigit() and queue.isdigit() and int(queue) > 0:
        # With pipeline parallelism the executor runs PP micro-batches of max_batch_size each.
        return int(batch) * backend_contract.pipeline_parallel_size(cfg) + int(queue)
    return None


def _values(buffers: dict[str, bytes], name: str) -> Optional[list]:
    """An output's elements as a list. memoryview.cast reads the buffer in place (Triton's wire order
    is little-endian, the machine's on x86 and arm64): a third of np.frombuffer's cost per token."""
    buf = buffers.get(name)
    return None if buf is None else memoryview(buf).cast(OUTPUT_FORMATS[name]).tolist()


def _rows(buffers: dict[str, bytes], name: str, n: int) -> Optional[np.ndarray]:
    """A [tokens, N] output (top log-probs) as an n-row array."""
    buf = buffers.get(name)
    return None if buf is None or not n else np.frombuffer(buf, OUTPUT_FORMATS[name]).reshape(n, -1)


class TritonDecoder:
    """The `DecoderClient` (frontend/decoder/interface.py) over Triton's gRPC stream."""

    def __init__(self, grpc_url: str, model_name: str = DECODER_MODEL, metrics=None):
        self.grpc_url = grpc_url
        self.model_name = model_name
        self.metrics = metrics      # FrontendMetrics or None: queue depth, open streams, errors
        self._client: Optional[grpcclient.InferenceServerClient] = None
        self._caps: Optional[DecoderCapabilities] = None
        self._capacity: Optional[int] = None    # max_batch_size + max_queue_size, when declared
        self._block_tokens = 0                  # tokens per KV block (GPU: cached tokens from reused blocks)
        self._requested: dict[tuple[bool, bool], list[grpcclient.InferRequestedOutput]] = {}
        self._required: tuple[str, ...] = ("output_ids",)   # what every request asks for (backend_contract)
        # health.py, wired by frontend/http/app.py: tells a broken decoder from a bad request,
        # watches open streams, ends them when the decoder is down. None: no health tracking.
        self.health = None

    @property
    def capacity(self) -> Optional[int]:
        """Requests the decoder holds at once (batch slots plus queue), once its config was read:
        the 429 gate's limit (frontend/tenancy/fair_share.py)."""
        return self._capacity

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.grpc_url, channel_args=CHANNEL_ARGS)
        return self._client

    async def _judge(self, err: DecoderError, produced: bool) -> Exception:
        """An error answer of the decoder: its refusal of this request, or the decoder broken?"""
        if await self.health.is_broken():
            return DecoderUnavailable(f"the decoder failed: {err}")
        # Failed after producing tokens while the decoder answers probes: the server's fault (500).
        return DecoderError(str(err), internal=True) if produced and not err.internal else err

    def _lost(self, err: Exception) -> Exception:
        """Bookkeeping for a failure: Triton may come back with another configuration."""
        if isinstance(err, DecoderUnavailable):
            self._caps = None
            if self.health is not None:
                self.health.suspect()   # have the watchdog probe now
        if self.metrics is not None:
            kind = {DecoderBusy: "busy", DecoderUnavailable: "unavailable"}.get(type(err), "error")
            self.metrics.decoder_errors.labels(kind).inc()
        return err

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def is_ready(self) -> bool:
        if self.health is not None and not self.health.ready:
            return False
        try:
            ready = bool(await self.client.is_model_ready(self.model_name, client_timeout=HEALTH_TIMEOUT_S))
        except Exception:
            ready = False
        if not ready:
            self._caps = None
        return ready

    async def capabilities(self) -> DecoderCapabilities:
        if self._caps is None:
            try:
                cfg = (await self.client.get_model_config(self.model_name, as_json=True,
                                                          client_timeout=HEALTH_TIMEOUT_S))["config"]
            except InferenceServerException as e:
                raise DecoderUnavailable(str(e)) from None
            problems = backend_contract.config_problems(cfg)
            if problems:
                raise ContractMismatch(f"the served {self.model_name} config does not match TensorRT-LLM "
                                       f"{backend_contract.TRTLLM_RELEASE}'s backend: " + "; ".join(problems))
            params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items()}
            self._caps = DecoderCapabilities(frozenset(i["name"] for i in cfg.get("input", [])),
                                             frozenset(o["name"] for o in cfg.get("output", [])), params)
            self._capacity = decoder_capacity(cfg, params)
            self._required = backend_contract.required_outputs(cfg)
            tokens_per_block = params.get("tokens_per_block") or ""
            self._block_tokens = int(tokens_per_block) if tokens_per_block.isdigit() else 0
            self._requested = {}
        return self._caps

    def _outputs(self, arrays: dict[str, np.ndarray]) -> Optional[list[grpcclient.InferRequestedOutput]]:
        """The outputs this request reads, of those the decoder declares (None: all, caps unknown)."""
        if self._caps is None:
            return None
        streaming = arrays.get("streaming")
        key = ("return_log_probs" in arrays, "num_top_log_probs" in arrays, "return_perf_metrics" in arrays,
               streaming is None or not bool(np.asarray(streaming).reshape(-1)[0]),
               "num_return_sequences" in arrays)
        outputs = self._requested.get(key)
        if outputs is None:
            names = BASE_OUTPUTS + (LOG_PROB_OUTPUTS if key[0] else ()) + (TOP_LOG_PROB_OUTPUTS if key[1] else ()) \
                + (PERF_OUTPUTS if key[2] else ()) + (LENGTH_OUTPUTS if key[3] else ()) + (INDEX_OUTPUTS if key[4] else ())
            names = tuple(dict.fromkeys(self._required + names))
            outputs = [grpcclient.InferRequestedOutput(n) for n in names if n in self._caps.outputs]
            self._requested[key] = outputs
        return outputs

    async def generate(self, request_id: str, arrays: dict[str, np.ndarray]) -> AsyncIterator[DecoderResponse]:
        """Yields responses until the decoder's final one. Closing the generator cancels.

        Admission (the 429 gate, fair share per key) is the service's, in front of this call
        (frontend/tenancy/fair_share.py): a request gets here only with a place in the decoder.
        """
        health = self.health
        if health is not None and not health.ready:
            raise self._lost(DecoderUnavailable(health.down_reason))
        call = RequestStream(self.model_name, request_id, arrays, GENERATE_PARAMETERS, self._outputs(arrays))
        ctx = current_request.get()
        if ctx is not None:
            ctx.triton_request_id = request_id
        metrics = self.metrics

        queued = metrics is not None
        if metrics is not None:
            metrics.decoder_streams.inc()
            metrics.decoder_queued.inc()
        stream = None
        finished = False
        produced = False
        aborted: list[str] = []     # the health watchdog's reason, once it ended this request

        def abort(reason: str) -> None:
            aborted.append(reason)
            if stream is not None:
                stream.cancel()     # wakes the read below with CancelledError

        key = health.track(abort) if health is not None else None
        try:
            # `traceparent` of the request's decode span, when tracing is on (frontend/telemetry/tracing.py)
            if ttft_stamps.ENABLED:
                ttft_stamps.stamp("grpc_start")
            stream = call.open(self.client, headers=ctx.trace_headers if ctx is not None else None)
            async for result, error in stream:
                if ttft_stamps.ENABLED:
                    ttft_stamps.stamp("grpc_first")
                if key is not None:
                    health.heard(key)
                if queued:
                    metrics.decoder_queued.dec()
                    queued = False
                if error is not None:
                    finished = True
                    err = classify_error(error)
                    if type(err) is DecoderError and health is not None and not err.certain:
                        # Triton's stream errors carry no code: probing tells whose fault it was.
                        err = await self._judge(err, produced)
                    raise self._lost(err)
                resp = result.get_response()
                final = resp.parameters["triton_final_response"].bool_param \
                    if "triton_final_response" in resp.parameters else False
                if final:
                    finished = True
                if not resp.outputs:
                    if final:
                        yield DecoderResponse(0, [], None, None, None, None, True)
                        break
                    continue
                parsed = self._parse(resp, final, self._block_tokens)
                produced = True
                yield parsed
                if final:
                    break
            else:
                finished = True   # the stream ended without a final response: Triton went away
                raise self._lost(DecoderUnavailable("the decoder stream ended early"))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if aborted and not (task is not None and task.cancelling()):
                finished = True     # the watchdog ended it: the decoder is down
                raise self._lost(DecoderUnavailable(aborted[0])) from None
            raise
        except InferenceServerException as e:
            finished = True
            raise self._lost(classify_error(e)) from None
        except Exception as e:   # grpc errors when Triton dies mid-stream
            if isinstance(e, (DecoderFailure, GeneratorExit, asyncio.CancelledError)):
                raise
            finished = True
            err = classify_error(e)
            if not isinstance(err, (DecoderUnavailable, DecoderBusy)):
                err = DecoderUnavailable(f"lost the decoder stream: {e}")
            raise self._lost(err) from None
        finally:
            if key is not None:
                health.untrack(key)
            call.close()
            if metrics is not None:
                metrics.decoder_streams.dec()
                if queued:
                    metrics.decoder_queued.dec()
            if not finished and stream is not None:
                stream.cancel()
                if health is None or health.ready:    # a down decoder would not answer it
                    await self.stop(request_id)

    @staticmethod
    def _parse(resp, final: bool, block_tokens: int = 0) -> DecoderResponse:
        """One ModelInferResponse -> DecoderResponse, straight from its raw output buffers.

        This runs once per streamed token: reading the protobuf directly costs a fraction of
        tritonclient's `as_numpy`, which searches the outputs by name on every call.
        """
        buffers = dict(zip([out.name for out in resp.outputs], resp.raw_output_contents))
        tokens = _values(buffers, "output_ids") or []
        lengths = _values(buffers, "sequence_length")
        if lengths:
            tokens = tokens[: lengths[0]]
        n = len(tokens)
        seq = _values(buffers, "sequence_index")
        lps = _values(buffers, "output_log_probs")
        reused = _values(buffers, "num_reused_tokens")
        if reused is None and block_tokens:
            # TensorRT-LLM counts reused KV blocks; whole blocks of the prompt were served from cache.
            blocks = _values(buffers, "kv_cache_reused_blocks")
            reused = [blocks[0] * block_tokens] if blocks else None
        if lps is not None and len(lps) > n:
            # A streamed TensorRT-LLM response holds the new ids but the log-probs of every token
            # so far (llmRequest.cpp createResult; tensorrtllm_backend issue #632): the new
            # tokens' are the last n.
            lps = lps[len(lps) - n:]
        return DecoderResponse(
            sequence_index=seq[0] if seq else 0,
            token_ids=tokens,
            log_probs=lps,
            top_ids=_rows(buffers, "top_log_prob_ids", n),
            top_log_probs=_rows(buffers, "top_log_probs", n),
            num_reused_tokens=reused[0] if reused else None,
            is_final=final,
        )

    async def stop(self, request_id: str) -> None:
        """TensorRT-LLM's cancellation: a request with stop=true and the same id."""
        call = RequestStream(self.model_name, request_id, stop_request_arrays(), EMPTY_FINAL_RESPONSE)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                async for _result, _error in call.open(self.client):
                    break
        except Exception as e:
            log.warning("stop request for %s failed: %s", request_id, e)
        finally:
            call.close()
