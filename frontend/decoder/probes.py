"""The two probe requests of frontend/decoder/health.py, sent on the decoder's own gRPC client.

* reach: `stop=true` for a request id nobody uses, the same tensors as TritonDecoder.stop. The CPU
  decoder cancels nothing and sends an empty final response; TensorRT-LLM's backend does the same
  for an id it does not know (`handleStopRequest`: "the request to cancel may already be
  completed", NVIDIA/TensorRT-LLM triton_backend/inflight_batcher_llm/src/model_instance_state.cc).
* work: one token from a one-token prompt, built by the same request mapping as client requests,
  so it carries only inputs the deployed decoder declares.
"""
from __future__ import annotations

import asyncio
from typing import Callable

import numpy as np

from frontend.decoder.health import DecoderHealth, ProbeFailed, probe_request_id
from frontend.decoder.interface import DecoderBusy
from frontend.decoder.request_stream import RequestStream
from frontend.decoder.triton_client import EMPTY_FINAL_RESPONSE, TritonDecoder, classify_error
from llama_triton.contract import stop_request_arrays
from llama_triton.trtllm.request_encoding import DecodeSettings, decoder_arrays

PROBE_PROMPT = [1]      # one token id that every Llama vocabulary has (BOS)


async def _one_request(decoder: TritonDecoder, arrays: dict[str, np.ndarray]) -> None:
    """Sends one request and reads it to its final response; ProbeFailed on an error answer."""
    call = RequestStream(decoder.model_name, probe_request_id(), arrays, EMPTY_FINAL_RESPONSE)
    stream = call.open(decoder.client)
    try:
        async for result, error in stream:
            if error is not None:
                if isinstance(classify_error(error), DecoderBusy):
                    return          # a full queue is a decoder at work
                raise ProbeFailed(str(error))
            resp = result.get_response()
            if "triton_final_response" in resp.parameters and resp.parameters["triton_final_response"].bool_param:
                return
        raise ProbeFailed("the stream ended without a final response")
    except ProbeFailed:
        raise
    except asyncio.CancelledError:
        raise
    except Exception as e:      # grpc errors: Triton unreachable
        raise ProbeFailed(f"{type(e).__name__}: {e}") from None
    finally:
        call.close()
        stream.cancel()


async def reach(decoder: TritonDecoder) -> None:
    await _one_request(decoder, stop_request_arrays())


async def work(decoder: TritonDecoder) -> None:
    try:
        caps = await decoder.capabilities()
    except Exception as e:
        raise ProbeFailed(f"model config unreadable: {e}") from None
    await _one_request(decoder, decoder_arrays(DecodeSettings(prompt_ids=PROBE_PROMPT, max_new_tokens=1, seed=0),
                                               caps.inputs))


def probed_health(decoder: TritonDecoder, report: Callable[[str], None]) -> DecoderHealth:
    """The health of `decoder`, told by the two probes above; `report(reason)` hears when it is broken."""
    return DecoderHealth(lambda: reach(decoder), lambda: work(decoder), report)
