"""The executor process behind the LLM-API stand-in (llama_triton/backend/llmapi_standin.py).

TensorRT-LLM's `LLM` does not run its executor in the caller's process: on Linux a single-GPU
`LLM` talks to a worker process through `GenerationExecutorProxy` ("Partition the workload to
multiple process for streaming performance", `GenerationExecutor.create` in
tensorrt_llm/executor/executor.py), and with `trtllm-llmapi-launch` the workers are MPI ranks.
The stand-in keeps that shape: this process owns the CPU engine (llama_triton.engine.Engine), the
`tensorrt_llm` model's stub process holds only the `LLM`-shaped object. So the failure a GPU
deployment can have, an executor that dies while Triton's model stays ready, has a real
counterpart here: this process exits (or is killed), every request fails, the stub lives on.

The wire is one socket (a socketpair; the child end is passed by fd) carrying length-prefixed
pickles. Parent -> child: ("submit", GenerationRequest), ("cancel", request_id); closing the
socket stops the worker. Child -> parent: ("ready", counters) or ("failed", text) once, then
("outputs", [SequenceOutput, ...], counters) once per engine step that produced any, ("counters",
counters) after other steps (when the batch changed, at most every 100 ms otherwise), and
("reject", request_id, text) for a request the engine refused at submission. Outputs of one step
travel together: one message per step, not per token.
"""
from __future__ import annotations

import argparse
import json
import pickle
import socket
import struct
import sys
import threading
import time
from typing import Any, Optional

_HEADER = struct.Struct("!I")
COUNTERS_PERIOD_S = 0.1     # counters alone, at most this often, when a step brought no outputs
# What the worker reports with every step (the Triton model exports them as llama_triton_engine
# metrics, as the CPU decoder does).
COUNTERS = ("num_steps", "num_forward_passes", "num_decode_passes", "num_prefill_tokens", "num_generated_tokens",
            "num_reused_tokens", "num_cancelled", "num_running", "num_waiting", "num_free_blocks",
            "last_cancel_latency_steps")


class Channel:
    """One end of the socket: whole messages in, whole messages out; `send` is thread-safe."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._send_lock:
            self.sock.sendall(_HEADER.pack(len(data)) + data)

    def recv(self) -> Optional[tuple]:
        """The next message, or None once the other end is gone."""
        header = self._read(_HEADER.size)
        if header is None:
            return None
        body = self._read(_HEADER.unpack(header)[0])
        return None if body is None else pickle.loads(body)

    def _read(self, n: int) -> Optional[bytes]:
        chunks, left = [], n
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        # shutdown first: close() alone leaves a thread blocked in recv() on this socket asleep,
        # and the peer sees no end of file while that recv holds the socket open.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def counters_of(engine: Any) -> dict[str, float]:
    return {name: float(getattr(engine, name)) for name in COUNTERS if hasattr(engine, name)}


def serve(channel: Channel, model_dir: str, config: dict[str, Any]) -> int:
    """Runs the engine until the parent closes the socket."""
    from llama_triton.engine.config import EngineConfig
    from llama_triton.contract import QueueFull, RequestError
    try:
        from llama_triton.engine.engine import Engine
        engine = Engine(model_dir, EngineConfig(**config))
    except Exception as e:      # a bad checkpoint or limit: the parent's LLM() raises it
        channel.send(("failed", f"{type(e).__name__}: {e}"))
        return 1
    pending: list = []          # outputs of the step in progress (engine thread only)
    last = {"occupancy": None, "at": 0.0}

    def collect(out) -> None:
        pending.append(out)

    def flush() -> None:        # end of every engine step
        now = time.monotonic()
        occupancy = (engine.num_running, engine.num_waiting)
        if pending:
            outs = pending[:]
            pending.clear()
            channel.send(("outputs", outs, counters_of(engine)))
        elif occupancy != last["occupancy"] or now - last["at"] >= COUNTERS_PERIOD_S:
            channel.send(("counters", counters_of(engine)))     # a step without outputs (a prefill chunk)
        else:
            return
        last["occupancy"], last["at"] = occupancy, now

    engine.add_step_listener(flush, at_end=True)
    engine.start()
    channel.send(("ready", counters_of(engine)))
    try:
        while True:
            message = channel.recv()
            if message is None:
                break
            kind = message[0]
            if kind == "submit":
                request = message[1]
                try:
                    engine.submit(request, collect)
                except (RequestError, QueueFull) as e:
                    channel.send(("reject", request.request_id, str(e)))
            elif kind == "cancel":
                engine.cancel(message[1])
    finally:
        engine.shutdown()
        channel.close()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llama_triton.backend.llmapi_worker", description=__doc__.splitlines()[0])
    p.add_argument("--fd", type=int, required=True, help="this end of the socketpair")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--engine-config", required=True, help="EngineConfig fields as JSON")
    a = p.parse_args(argv)
    channel = Channel(socket.socket(fileno=a.fd))
    return serve(channel, a.model_dir, json.loads(a.engine_config))


if __name__ == "__main__":
    sys.exit(main())
