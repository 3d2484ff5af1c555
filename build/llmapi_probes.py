"""The GPU smoke test's probes for the LLM-API path (issue 23), each PASS or FAIL.

    python3 build/llmapi_probes.py list
    python3 build/llmapi_probes.py run --url http://127.0.0.1:8090 --grpc 127.0.0.1:8011 --model-dir DIR [--only a,b]

build/gpu_smoke.sh runs them against `llama-triton serve --decoder-io llmapi --llm-api tensorrt_llm`
(TensorRT-LLM's LLM, PyTorch backend, no engine build). The helpers and the driver are
build/gpu_probes.py's; the registry is this module's own, since these probes expect what the engine
path refuses (min_p, top_logprobs). They also pass against the CPU stand-in (`--llm-api cpu`).
"""
from __future__ import annotations

import json
import queue
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_probes as gp  # noqa: E402  (build/ holds scripts, not a package)

PROBES: dict = {}


def probe(name: str, description: str):
    def register(fn):
        PROBES[name] = ("23", description, fn)
        return fn
    return register


STORY = [{"role": "user", "content": "Tell me a story about a fox."}]


@probe("llmapi_config", "the served tensorrt_llm is the LLM-API decoder and declares min_p and num_top_log_probs")
def llmapi_config(stack: gp.Stack):
    cfg = stack.config()
    params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
    inputs = {i["name"] for i in cfg["input"]}
    assert params.get("llm_api") in ("tensorrt_llm", "cpu"), params
    assert {"min_p", "num_top_log_probs"} <= inputs, sorted(inputs)
    print(f"    llm_api {params['llm_api']}, {len(inputs)} inputs")


probe("llmapi_streamed_chat", "a streamed chat completion equals the non-streamed one")(gp.streamed_chat)
probe("llmapi_tools", "tool_choice required and auto, streamed and not, guided by the LLM's xgrammar")(gp.tools)
probe("llmapi_json_schema", "a json_schema response (nullable type, bounds) compiles and is honoured")(gp.nullable_schema)


@probe("llmapi_min_p", "min_p is honoured: 1.0 keeps the best token alone, so any seed gives the greedy text")
def llmapi_min_p(stack: gp.Stack):
    greedy = gp._ok(*stack.chat(STORY, max_tokens=12, temperature=0))["choices"][0]["message"]["content"]
    kept = {gp._ok(*stack.chat(STORY, max_tokens=12, temperature=1.0, seed=s, min_p=1.0))
            ["choices"][0]["message"]["content"] for s in (1, 2)}
    assert kept == {greedy}, (kept, greedy)


@probe("llmapi_top_logprobs", "top_logprobs: 5 ranked alternatives per token; greedy picks the first")
def llmapi_top_logprobs(stack: gp.Stack):
    body = gp._ok(*stack.chat(STORY, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5))
    content = body["choices"][0]["logprobs"]["content"]
    assert len(content) == 4, content
    for t in content:
        alts = [a["logprob"] for a in t["top_logprobs"]]
        assert len(alts) == 5 and alts == sorted(alts, reverse=True), t
        assert t["top_logprobs"][0]["token"] == t["token"], t


def _arrays(ids, max_tokens, **flags):
    import numpy as np
    a = [gp._tensor("input_ids", np.array([ids], np.int32)),
         gp._tensor("input_lengths", np.array([[len(ids)]], np.int32)),
         gp._tensor("request_output_len", np.array([[max_tokens]], np.int32)),
         gp._tensor("end_id", np.array([[-1]], np.int32))]
    return a + [gp._tensor(k, np.array([[v]], np.bool_)) for k, v in flags.items()]


@probe("llmapi_cancel", "stop=true with a request's id ends its 1,000-token stream at once (the result's abort)")
def llmapi_cancel(stack: gp.Stack):
    import tritonclient.grpc as grpcclient
    rid, got, done = f"smoke-{uuid.uuid4().hex}", queue.Queue(), queue.Queue()
    client = grpcclient.InferenceServerClient(stack.grpc)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    stopper = grpcclient.InferenceServerClient(stack.grpc)
    try:
        client.async_stream_infer("tensorrt_llm", _arrays([1, 450, 4996], 1000, streaming=True), request_id=rid,
                                  enable_empty_final_response=True)
        got.get(timeout=120)                        # it is generating
        stopper.start_stream(callback=lambda result, error: done.put(error))
        stopper.async_stream_infer("tensorrt_llm", _arrays([0], 1, stop=True), request_id=rid,
                                   enable_empty_final_response=True)
        assert done.get(timeout=30) is None
        tokens, deadline = 1, time.monotonic() + 30
        while True:
            result, error = got.get(timeout=max(0.1, deadline - time.monotonic()))
            assert error is None, error
            if result.as_numpy("output_ids") is not None:
                tokens += result.as_numpy("output_ids").size
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        assert tokens < 1000, tokens
        print(f"    stopped after {tokens} tokens")
    finally:
        stopper.stop_stream()
        client.stop_stream()


@probe("llmapi_queue_full_429", "past max_batch_size + max_queue_size open requests the decoder says queue full; "
                                "the frontend answers 429")
def llmapi_queue_full_429(stack: gp.Stack):
    import tritonclient.grpc as grpcclient
    params = {k: v["string_value"] for k, v in stack.config()["parameters"].items()}
    capacity = int(params["max_batch_size"]) + int(params["max_queue_size"])
    errors = queue.Queue()
    client = grpcclient.InferenceServerClient(stack.grpc)
    client.start_stream(callback=lambda result, error: errors.put(error) if error is not None else None)
    try:
        for _ in range(capacity + 4):               # straight at the decoder: no frontend gate in the way
            client.async_stream_infer("tensorrt_llm", _arrays([1, 450, 4996], 1000), request_id=uuid.uuid4().hex)
        first = errors.get(timeout=120)
        status, body = stack.chat(max_tokens=4)
    finally:
        client.stop_stream(cancel_requests=True)
    assert "queue full" in str(first), first
    assert status == 429, body
    assert json.loads(body)["error"]["code"] == "queue_full", body


def main(argv=None) -> int:
    gp.PROBES.clear()               # the driver is gpu_probes.py's, over this registry
    gp.PROBES.update(PROBES)
    return gp.main(argv)


if __name__ == "__main__":
    sys.exit(main())
