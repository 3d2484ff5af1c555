"""A gRPC proxy between a frontend and Triton that records every inference request it forwards.

Bytes pass through unchanged (a generic handler, no (de)serialisation on the forwarding path), so
the frontend talks to the real Triton exactly as it would directly; each request of a
ModelStreamInfer stream is also parsed into a `Recorded` for the test to check against upstream's
contract. `config_rewrite` may change the ModelConfig answers on their way back: a served config
that differs from what Triton has, without starting another Triton.
"""
from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Optional

import grpc
import numpy as np
from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, service_pb2
from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

OPTIONS = [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
           ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE)]


@dataclass
class Recorded:
    model: str
    request_id: str
    inputs: dict[str, tuple[str, tuple[int, ...], np.ndarray]]     # name -> (wire datatype, shape, values)
    outputs: Optional[list[str]]          # None: none asked for, so Triton sends every output
    parameters: dict = field(default_factory=dict)

    def value(self, name: str):
        """A scalar input's value, a string input's text, or None when the input is absent."""
        if name not in self.inputs:
            return None
        datatype, _, values = self.inputs[name]
        v = values.reshape(-1)[0]
        if datatype == "BYTES":
            return v.decode() if isinstance(v, bytes) else str(v)
        return v.item()

    @property
    def is_stop(self) -> bool:
        return bool(self.value("stop"))


def _parse(raw: bytes) -> Recorded:
    req = service_pb2.ModelInferRequest.FromString(raw)
    inputs = {}
    for i, t in enumerate(req.inputs):
        shape = tuple(int(d) for d in t.shape)
        data = req.raw_input_contents[i] if i < len(req.raw_input_contents) else b""
        if t.datatype == "BYTES":
            values = deserialize_bytes_tensor(data).reshape(shape)
        else:
            values = np.frombuffer(data, dtype=triton_to_np_dtype(t.datatype)).reshape(shape)
        inputs[t.name] = (t.datatype, shape, values)
    outputs = [o.name for o in req.outputs] or None
    params = {k: v.WhichOneof("parameter_choice") and getattr(v, v.WhichOneof("parameter_choice"))
              for k, v in req.parameters.items()}
    return Recorded(req.model_name, req.id, inputs, outputs, params)


class RecordingProxy:
    def __init__(self, upstream: str, config_rewrite: Optional[Callable[[bytes], bytes]] = None):
        self.upstream = upstream
        self.config_rewrite = config_rewrite
        self.channel = grpc.insecure_channel(upstream, options=OPTIONS)
        self._lock = threading.Lock()
        self._records: list[Recorded] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=OPTIONS)
        self.server.add_generic_rpc_handlers((_Forward(self),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def records(self, model: str = "tensorrt_llm") -> list[Recorded]:
        with self._lock:
            return [r for r in self._records if r.model == model]

    def _record(self, raw: bytes) -> None:
        rec = _parse(raw)
        with self._lock:
            self._records.append(rec)

    def close(self) -> None:
        self.server.stop(grace=None)
        self.channel.close()

    # ---- forwarding -------------------------------------------------------------------------
    def unary(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        call = self.channel.unary_unary(method)
        try:
            response = call(request, metadata=_metadata(context), timeout=context.time_remaining())
        except grpc.RpcError as e:
            context.abort(e.code(), e.details())
        if method.endswith("/ModelInfer"):
            self._record(request)
        if method.endswith("/ModelConfig") and self.config_rewrite is not None:
            response = self.config_rewrite(response)
        return response

    def stream(self, method: str, requests, context: grpc.ServicerContext):
        def forwarded():
            for raw in requests:
                self._record(raw)
                yield raw
        call = self.channel.stream_stream(method)(forwarded(), metadata=_metadata(context))
        context.add_callback(call.cancel)       # the client hung up: so does the upstream stream
        try:
            yield from call
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                context.abort(e.code(), e.details())


def _metadata(context: grpc.ServicerContext) -> list[tuple[str, str]]:
    """The caller's own metadata, without what the transport sets itself."""
    return [(m.key, m.value) for m in context.invocation_metadata()
            if m.key != "user-agent" and not m.key.startswith((":", "grpc-"))]


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, proxy: RecordingProxy):
        self.proxy = proxy

    def service(self, details):
        method = details.method
        if method.endswith("/ModelStreamInfer"):
            return grpc.stream_stream_rpc_method_handler(lambda it, ctx: self.proxy.stream(method, it, ctx))
        return grpc.unary_unary_rpc_method_handler(lambda req, ctx: self.proxy.unary(method, req, ctx))


def drop_output(name: str) -> Callable[[bytes], bytes]:
    """A config_rewrite: the served config without output `name`."""
    def rewrite(raw: bytes) -> bytes:
        resp = service_pb2.ModelConfigResponse.FromString(raw)
        if resp.config.name == "tensorrt_llm":
            kept = [o for o in resp.config.output if o.name != name]
            del resp.config.output[:]
            resp.config.output.extend(kept)
        return resp.SerializeToString()
    return rewrite
