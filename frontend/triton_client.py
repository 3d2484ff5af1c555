"""The frontend's only door to Triton: the `tensorrt_llm` decoder over tritonclient's asyncio gRPC.

Reads which tensors the deployed decoder declares (its capabilities), streams one request's
responses as plain Python values, and cancels the way TensorRT-LLM expects (`stop=true` with
the same request id) besides closing the stream.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

log = logging.getLogger("frontend.triton")

DECODER_MODEL = "tensorrt_llm"


class DecoderUnavailable(RuntimeError):
    """Triton is down or the decoder is not ready (HTTP 503)."""


class DecoderBusy(RuntimeError):
    """The decoder's queue is full (HTTP 429)."""


class DecoderError(RuntimeError):
    """The decoder failed this request (HTTP 400 when it names bad input, else 500)."""


@dataclass(frozen=True)
class DecoderCapabilities:
    inputs: frozenset[str]
    outputs: frozenset[str]
    parameters: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass
class DecoderResponse:
    sequence_index: int
    token_ids: list[int]
    log_probs: Optional[list[float]]
    top_ids: Optional[np.ndarray]        # [tokens, N]
    top_log_probs: Optional[np.ndarray]  # [tokens, N]
    num_reused_tokens: Optional[int]
    is_final: bool                       # the last response of the whole request


def _classify(err: Exception) -> Exception:
    msg = str(err)
    low = msg.lower()
    if "queue full" in low or "exceeds maximum queue size" in low:
        return DecoderBusy(msg)
    if any(s in low for s in ("unavailable", "failed to connect", "connection refused", "not ready",
                              "socket closed", "connection reset", "unknown model", "is not found")):
        return DecoderUnavailable(msg)
    return DecoderError(msg)


class TritonDecoder:
    def __init__(self, grpc_url: str, model_name: str = DECODER_MODEL):
        self.grpc_url = grpc_url
        self.model_name = model_name
        self._client: Optional[grpcclient.InferenceServerClient] = None
        self._caps: Optional[DecoderCapabilities] = None

    @property
    def client(self) -> grpcclient.InferenceServerClient:
        if self._client is None:
            self._client = grpcclient.InferenceServerClient(self.grpc_url)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def is_ready(self) -> bool:
        try:
            return bool(await self.client.is_model_ready(self.model_name))
        except Exception:
            return False

    async def capabilities(self) -> DecoderCapabilities:
        if self._caps is None:
            try:
                cfg = (await self.client.get_model_config(self.model_name, as_json=True))["config"]
            except InferenceServerException as e:
                raise DecoderUnavailable(str(e)) from None
            params = {k: v.get("string_value") for k, v in cfg.get("parameters", {}).items()}
            self._caps = DecoderCapabilities(frozenset(i["name"] for i in cfg.get("input", [])),
                                             frozenset(o["name"] for o in cfg.get("output", [])), params)
        return self._caps

    @staticmethod
    def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
        out = []
        for name, arr in arrays.items():
            t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            t.set_data_from_numpy(arr)
            out.append(t)
        return out

    async def generate(self, request_id: str, arrays: dict[str, np.ndarray]) -> AsyncIterator[DecoderResponse]:
        """Yields responses until the decoder's final one. Closing the generator cancels."""
        done = asyncio.Event()
        inputs = self._inputs(arrays)

        async def requests():
            yield {"model_name": self.model_name, "inputs": inputs, "request_id": request_id,
                   "enable_empty_final_response": True}
            await done.wait()   # keep the stream open until the final response arrives

        stream = self.client.stream_infer(requests())
        finished = False
        try:
            async for result, error in stream:
                if error is not None:
                    finished = True
                    raise _classify(error)
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
                yield self._parse(result, final)
                if final:
                    break
        except InferenceServerException as e:
            finished = True
            raise _classify(e) from None
        except Exception as e:   # grpc errors when Triton dies mid-stream
            if isinstance(e, (DecoderBusy, DecoderUnavailable, DecoderError, GeneratorExit, asyncio.CancelledError)):
                raise
            finished = True
            raise DecoderUnavailable(f"lost the decoder stream: {e}") from None
        finally:
            done.set()
            if not finished:
                stream.cancel()
                await self.stop(request_id)

    @staticmethod
    def _parse(result, final: bool) -> DecoderResponse:
        def get(name):
            try:
                return result.as_numpy(name)
            except Exception:
                return None

        ids = get("output_ids")
        lengths = get("sequence_length")
        tokens = ids.reshape(-1).tolist() if ids is not None else []
        if lengths is not None:
            tokens = tokens[: int(lengths.reshape(-1)[0])]
        seq = get("sequence_index")
        lps = get("output_log_probs")
        top_ids = get("top_log_prob_ids")
        top_lps = get("top_log_probs")
        reused = get("num_reused_tokens")
        n = len(tokens)
        return DecoderResponse(
            sequence_index=int(seq.reshape(-1)[0]) if seq is not None else 0,
            token_ids=tokens,
            log_probs=lps.reshape(-1)[:n].tolist() if lps is not None else None,
            top_ids=top_ids.reshape(n, -1) if top_ids is not None and n else None,
            top_log_probs=top_lps.reshape(n, -1) if top_lps is not None and n else None,
            num_reused_tokens=int(reused.reshape(-1)[0]) if reused is not None else None,
            is_final=final,
        )

    async def stop(self, request_id: str) -> None:
        """TensorRT-LLM's cancellation: a request with stop=true and the same id."""
        arrays = {"input_ids": np.zeros((1, 1), np.int32), "input_lengths": np.ones((1, 1), np.int32),
                  "request_output_len": np.ones((1, 1), np.int32), "stop": np.ones((1, 1), bool)}
        done = asyncio.Event()
        inputs = self._inputs(arrays)

        async def requests():
            yield {"model_name": self.model_name, "inputs": inputs, "request_id": request_id,
                   "enable_empty_final_response": True}
            await done.wait()

        try:
            async with asyncio.timeout(5):
                async for _result, _error in self.client.stream_infer(requests()):
                    break
        except Exception as e:
            log.warning("stop request for %s failed: %s", request_id, e)
        finally:
            done.set()
