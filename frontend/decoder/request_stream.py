"""One decoder request on its own gRPC stream (Triton's bidirectional ModelStreamInfer call).

The call's request side is an async iterator that yields the one request and then stays open
until `close()`: the stream is held open until the final response has arrived. TritonDecoder's
`generate` and `stop` and the health probes (probes.py) all send their request this way.
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterator, Optional

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import np_to_triton_dtype


def infer_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """The request's tensors as tritonclient's inputs."""
    out = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


class RequestStream:
    """One request, built at construction (its input tensors encoded); `open` starts the call and
    returns its responses, an iterator of `(result, error)` with tritonclient's `cancel()`; `close`
    ends the request side, and must be called once the call is over or given up."""

    def __init__(self, model_name: str, request_id: str, arrays: dict[str, np.ndarray], parameters: dict,
                 outputs: Optional[list[grpcclient.InferRequestedOutput]] = None):
        self._request = {"model_name": model_name, "inputs": infer_inputs(arrays), "outputs": outputs,
                         "request_id": request_id, "parameters": parameters}
        self._done = asyncio.Event()

    async def _requests(self) -> AsyncIterator[dict]:
        yield self._request
        await self._done.wait()     # keep the stream open until the final response arrives

    def open(self, client: grpcclient.InferenceServerClient, headers: Optional[dict] = None):
        return client.stream_infer(self._requests(), headers=headers)

    def close(self) -> None:
        self._done.set()
