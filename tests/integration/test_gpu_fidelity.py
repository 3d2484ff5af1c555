"""Issue 11: what TensorRT-LLM's C++ backend does, seen through the frontend and straight at the
`tensorrt_llm` model. The frontend tests run against both decoder modes; in GPU mode the CPU
decoder behaves as the C++ backend (llama_triton/backend/trtllm_emulation.py), so each one fails where a
GPU deployment would. The decoder-level tests check that stand-in against the upstream behaviour
docs/GPU.md cites.
"""
from __future__ import annotations

import queue
import time
import urllib.error
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.integration.conftest import DECODER_MODES, decoder_mode
from tests.integration.http_helpers import post_json
from tests.integration.stack import wait_for

both_modes = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)
USER = [{"role": "user", "content": "Tell me a story about a fox."}]
DECODER = "tensorrt_llm"
PROMPT = [1, 450, 4996, 17354, 1701, 29916, 432, 17204, 975, 278, 17366, 11203]   # "The quick brown fox ..."
# What tensorrtllm_backend writes with return_perf_metrics (model_instance_state.cc:1288-1305 at c2e65b8).
PERF_METRICS = ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                "arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens")
TYPES = {np.int32: "INT32", np.uint64: "UINT64", np.float32: "FP32", np.bool_: "BOOL"}


# ----------------------------------------------------------------------------- through the frontend

@both_modes
def test_seeded_n2_at_temperature_1_differ(stack, openai_client):
    """Finding 1: without runtime_top_k/top_p TensorRT-LLM decodes greedily, so n choices were equal."""
    kwargs = dict(model=stack.model_name, messages=USER, n=2, temperature=1.0, seed=11, max_tokens=16)
    first = openai_client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in first.choices]
    assert texts[0] != texts[1], texts
    again = openai_client.chat.completions.create(**kwargs)
    assert [c.message.content for c in again.choices] == texts     # the seed reproduces them


@both_modes
def test_unseeded_requests_differ(stack, openai_client):
    """Finding 5 (seed): TensorRT-LLM's default seed is a fixed 0, so the frontend always sends one."""
    texts = {openai_client.chat.completions.create(model=stack.model_name, messages=USER, temperature=1.0,
                                                   max_tokens=16).choices[0].message.content for _ in range(2)}
    assert len(texts) == 2, texts


@both_modes
def test_streamed_log_probs_equal_non_streamed(stack, openai_client):
    """Finding 2: a streamed TensorRT-LLM response carries the log-probs of every token so far."""
    kwargs = dict(model=stack.model_name, messages=USER, temperature=1.0, seed=3, max_tokens=12, logprobs=True)
    full = openai_client.chat.completions.create(**kwargs).choices[0].logprobs.content
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in full]
    assert np.allclose([t.logprob for t in streamed], [t.logprob for t in full], atol=1e-5), \
        ([t.logprob for t in streamed], [t.logprob for t in full])
    assert len({round(t.logprob, 4) for t in full}) > 1     # not one value repeated


@both_modes
def test_log_probs_are_the_decoders_per_token_values(stack, openai_client):
    """Finding 2, exactly: the frontend streams from the decoder even for non-streamed requests,
    so misaligned log-probs were wrong on both paths alike. Compare with the decoder's own
    non-streamed answer for the same prompt ids and seed."""
    r = openai_client.completions.create(model=stack.model_name, prompt=PROMPT, max_tokens=8, temperature=1.0,
                                         seed=5, logprobs=0)
    got = run_decoder(stack.grpc_url, _arrays(PROMPT, 8, temperature=np.float32(1.0), runtime_top_k=np.int32(0),
                                              runtime_top_p=np.float32(1.0), seed=np.uint64(5), end_id=np.int32(2),
                                              return_log_probs=True),
                      outputs=("output_ids", "sequence_length", "output_log_probs"))
    direct = got.responses[-1].as_numpy("output_log_probs").reshape(-1).tolist()
    assert len(r.choices[0].logprobs.token_logprobs) == len(direct) == 8
    assert np.allclose(r.choices[0].logprobs.token_logprobs, direct, atol=1e-4), \
        (r.choices[0].logprobs.token_logprobs, direct)


@both_modes
def test_cached_tokens_on_a_repeated_prompt(stack, openai_client):
    """cached_tokens on GPU: kv_cache_reused_blocks (return_perf_metrics) x tokens_per_block."""
    messages = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "lorem ipsum dolor sit amet " * 12}]
    usages = [openai_client.chat.completions.create(model=stack.model_name, messages=messages, max_tokens=1,
                                                    seed=1).usage for _ in range(2)]
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    cached = usages[1].prompt_tokens_details.cached_tokens
    assert 16 <= cached <= usages[1].prompt_tokens, usages[1]
    if decoder_mode(stack) == "gpu":
        assert cached % 16 == 0     # whole KV blocks (the GPU-mode decoder's tokens_per_block)


def _decoder_limits(stack) -> tuple[int, int]:
    """(running sequences, queued requests) the decoder holds, from its model config."""
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    cfg = client.get_model_config(DECODER, as_json=True)["config"]
    client.close()
    params = {k: v["string_value"] for k, v in cfg.get("parameters", {}).items()}
    if "max_queue_size" in params:
        return int(params["max_batch_size"]), int(params["max_queue_size"])
    return int(cfg["max_batch_size"]), int(cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"])


def _arrays(ids: list[int], max_tokens: int, **extra) -> dict[str, np.ndarray]:
    arrays = {"input_ids": np.asarray([ids], np.int32), "input_lengths": np.asarray([[len(ids)]], np.int32),
              "request_output_len": np.asarray([[max_tokens]], np.int32)}
    for name, value in extra.items():
        arrays[name] = np.asarray([[value]], dtype=type(value) if not isinstance(value, bool) else np.bool_)
    return arrays


def _inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    out = []
    for name, arr in arrays.items():
        t = grpcclient.InferInput(name, list(arr.shape), TYPES[arr.dtype.type])
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


# Long enough to hold their places, short enough that a full CPU batch (64 x this) fits the
# session stacks' 32768-token KV cache without preemption.
FLOOD_TOKENS = 1000      # near the suite stacks' 1,024-token context: the flood outlasts the test


@both_modes
def test_decoder_queue_full_is_429(stack):
    """Finding 4: the decoder's own queue-full error is a 429, whatever words the decoder uses
    (TensorRT-LLM: "Maximum queue size of N has been reached, please try again later")."""
    batch, queue_size = _decoder_limits(stack)
    capacity = batch + queue_size
    flood = capacity + 4
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(stack.grpc_url)
    client.start_stream(callback=lambda result, error: results.put(error))
    try:
        # Long requests straight at the decoder (no frontend gate in the way): capacity of them
        # run or queue, the rest are refused by the decoder itself. Not streamed: a full batch's
        # per-token responses (thousands a second) would only slow the flood's own delivery.
        for i in range(flood):
            client.async_stream_infer(DECODER, _inputs(_arrays(PROMPT, FLOOD_TOKENS, streaming=False)),
                                      request_id=f"flood-{uuid.uuid4().hex}")
        errors: list[str] = []

        def refused():
            while not results.empty():
                err = results.get()
                if err is not None:
                    errors.append(str(err))
            return len(errors) >= flood - capacity

        wait_for(refused, timeout=60, what="the decoder refusing the flood")
        if decoder_mode(stack) == "gpu":
            assert any(f"Maximum queue size of {queue_size} has been reached, please try again later" in e
                       for e in errors), errors[:3]
        for _attempt in range(3):
            if hasattr(stack, "metrics_port"):
                # Queued requests move into the batch as it fills, freeing queue places: wait for a
                # full batch, then fill the queue again (the excess is refused).
                wait_for(lambda: stack.engine_stats()["num_running"] >= batch, timeout=60, what="a full batch")
                refused_before = len(errors)
                for _ in range(batch + 4):
                    client.async_stream_infer(DECODER, _inputs(_arrays(PROMPT, FLOOD_TOKENS, streaming=False)),
                                              request_id=f"flood-{uuid.uuid4().hex}")
                wait_for(lambda: refused() and len(errors) > refused_before, timeout=60, what="the queue full again")
            try:
                # A refusal is immediate; an accepted request waits behind the flood.
                status, body, _ = post_json(stack.base_url, "/v1/chat/completions",
                                            {"model": stack.model_name, "messages": USER, "max_tokens": 4}, timeout=15)
            except (TimeoutError, urllib.error.URLError):
                status, body = None, None
            if status not in (200, None):
                break
            # A place freed between the refill and this request (a batch finished, or a preempted
            # sequence was readmitted; a loaded machine can take that long): it was accepted. Fill
            # the queue again and ask again.
        assert status == 429, body
        assert body["error"]["code"] == "queue_full"
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()
    if hasattr(stack, "metrics_port"):
        wait_for(lambda: (lambda s: s["num_running"] == 0 and s["num_waiting"] == 0)(stack.engine_stats()),
                 timeout=60, what="the flood cancelled")


# ----------------------------------------------------------------------------- the GPU-mode decoder itself


class Collected:
    def __init__(self):
        self.responses: list = []
        self.errors: list = []
        self.finals = 0


def run_decoder(url: str, arrays: dict, *, outputs: tuple[str, ...] = (), request_id: str | None = None,
                empty_final: bool = True, timeout: float = 60.0) -> Collected:
    """One request on its own stream; returns when its final response (or an error) arrived."""
    got = Collected()
    done: queue.Queue = queue.Queue()

    def callback(result, error):
        if error is not None:
            got.errors.append(str(error))
            done.put(True)
            return
        resp = result.get_response()
        got.responses.append(result)
        if resp.parameters["triton_final_response"].bool_param:
            got.finals += 1
            done.put(True)

    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=callback)
    try:
        client.async_stream_infer(DECODER, _inputs(arrays), request_id=uuid.uuid4().hex if request_id is None else request_id,
                                  outputs=[grpcclient.InferRequestedOutput(n) for n in outputs] or None,
                                  enable_empty_final_response=empty_final)
        done.get(timeout=timeout)
    finally:
        client.stop_stream()
        client.close()
    return got


def ids_of(got: Collected) -> list[int]:
    return [int(t) for r in got.responses if r.as_numpy("output_ids") is not None
            for t in r.as_numpy("output_ids").reshape(-1)[: int(r.as_numpy("sequence_length").reshape(-1)[0])]]


def test_gpu_mode_absent_top_k_and_top_p_is_greedy(gpu_stack):
    """TensorRT-LLM: absent top_k and top_p are 0 and 0.0, which its top-k layer makes k = 1."""
    url = gpu_stack.grpc_url
    greedy = ids_of(run_decoder(url, _arrays(PROMPT, 12, runtime_top_k=np.int32(1)), outputs=("output_ids", "sequence_length")))
    for seed in (1, 2):
        plain = ids_of(run_decoder(url, _arrays(PROMPT, 12, temperature=np.float32(1.0), seed=np.uint64(seed)),
                                   outputs=("output_ids", "sequence_length")))
        assert plain == greedy
    sampled = {tuple(ids_of(run_decoder(url, _arrays(PROMPT, 12, runtime_top_k=np.int32(0), runtime_top_p=np.float32(1.0),
                                                      seed=np.uint64(seed)), outputs=("output_ids", "sequence_length"))))
               for seed in (1, 2)}
    assert len(sampled) == 2 and tuple(greedy) not in sampled


def test_gpu_mode_streamed_log_probs_are_cumulative_and_sequence_index_only_for_n_above_1(gpu_stack):
    got = run_decoder(gpu_stack.grpc_url, _arrays(PROMPT, 5, streaming=True, return_log_probs=True),
                      outputs=("output_ids", "sequence_length", "output_log_probs", "sequence_index"))
    with_ids = [r for r in got.responses if r.as_numpy("output_ids") is not None]
    assert [r.as_numpy("output_ids").size for r in with_ids] == [1] * 5
    assert [r.as_numpy("output_log_probs").size for r in with_ids] == [1, 2, 3, 4, 5]
    assert all(r.as_numpy("sequence_index") is None for r in with_ids)
    got = run_decoder(gpu_stack.grpc_url, _arrays(PROMPT, 3, streaming=True, num_return_sequences=np.int32(2),
                                                  runtime_top_k=np.int32(0), runtime_top_p=np.float32(1.0)),
                      outputs=("output_ids", "sequence_length", "sequence_index"))
    assert sorted({int(r.as_numpy("sequence_index").reshape(-1)[0]) for r in got.responses
                   if r.as_numpy("output_ids") is not None}) == [0, 1]
    assert got.finals == 1


def test_gpu_mode_return_perf_metrics(gpu_stack):
    """Finding 3: with return_perf_metrics the backend writes every perf output; the config must
    declare them all, and the KV-reuse counts are what cached_tokens is made of."""
    names = PERF_METRICS
    prompt = PROMPT * 4
    runs = [run_decoder(gpu_stack.grpc_url, _arrays(prompt, 2, return_perf_metrics=True),
                        outputs=("output_ids", "sequence_length") + names) for _ in range(2)]
    for got in runs:
        assert not got.errors, got.errors
        last = got.responses[-1]
        assert all(last.as_numpy(n) is not None for n in names), [n for n in names if last.as_numpy(n) is None]
    second = runs[1].responses[-1]
    reused = int(second.as_numpy("kv_cache_reused_blocks").reshape(-1)[0])
    total = int(second.as_numpy("kv_cache_alloc_total_blocks").reshape(-1)[0])
    assert 1 <= reused <= total
    assert int(second.as_numpy("kv_cache_alloc_new_blocks").reshape(-1)[0]) == total - reused
    times = [int(second.as_numpy(n).reshape(-1)[0]) for n in
             ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns")]
    assert times == sorted(times) and times[0] > 0


def test_gpu_mode_stop_request_gets_an_empty_final_response(gpu_stack):
    """tensorrtllm_backend answers a stop request with an empty response flagged final, which a
    client sees even without triton_enable_empty_final_response."""
    rid = f"long-{uuid.uuid4().hex}"
    long_results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(gpu_stack.grpc_url)
    client.start_stream(callback=lambda result, error: long_results.put((result, error)))
    try:
        client.async_stream_infer(DECODER, _inputs(_arrays(PROMPT, 900, streaming=True)), request_id=rid)
        long_results.get(timeout=60)        # it is generating
        stop = run_decoder(gpu_stack.grpc_url, {**_arrays([0], 1), "stop": np.ones((1, 1), np.bool_)},
                           request_id=rid, empty_final=False)
        assert not stop.errors and stop.finals == 1
        assert len(stop.responses) == 1 and not stop.responses[0].get_response().outputs
        no_id = run_decoder(gpu_stack.grpc_url, {**_arrays([0], 1), "stop": np.ones((1, 1), np.bool_)},
                            request_id="", empty_final=False)
        assert no_id.errors and "Trying to stop a request but request ID is not provided" in no_id.errors[0]
    finally:
        client.stop_stream(cancel_requests=True)
        client.close()


def test_gpu_mode_error_texts(gpu_stack):
    """Issue 22: the backend's texts (docs/GPU.md 5.3). Without input_ids, splitBatchInputsTensors
    throws before createRequestsFromInputTensors' own "input_ids or encoder_input_features ..."."""
    arrays = _arrays(PROMPT, 4)
    del arrays["input_ids"]
    got = run_decoder(gpu_stack.grpc_url, arrays)
    assert got.errors and "inputTokens or encoderInputFeatures tensor not provided" in got.errors[0], got.errors
    got = run_decoder(gpu_stack.grpc_url, _arrays(PROMPT * 100, 4))       # longer than max_seq_len
    assert got.errors and "Executor failed process requestId" in got.errors[0], got.errors
    assert "Encountered an error when fetching new request: Prompt length (1200) exceeds maximum input length" \
        in got.errors[0], got.errors
    got = run_decoder(gpu_stack.grpc_url, _arrays(PROMPT, 4, runtime_top_p=np.float32(1.5)))
    assert got.errors and "[TensorRT-LLM][ERROR] Assertion failed: topP.value() <= 1.f" in got.errors[0], got.errors


@pytest.mark.parametrize("outputs,missing", [(("output_ids",), "sequence_length"),
                                             (("sequence_length", "output_log_probs"), "output_ids")])
def test_gpu_mode_refuses_a_request_without_output_ids_and_sequence_length(gpu_stack, outputs, missing):
    """Issue 22: the C++ backend fails the first response of a request whose output list lacks
    output_ids or sequence_length, and that response is the last; asking for none means all."""
    got = run_decoder(gpu_stack.grpc_url, _arrays(PROMPT, 4), outputs=outputs)
    assert len(got.errors) == 1 and (f"Error encountered while populating response: {missing} tensor must be "
                                     "present in list of output tensors") in got.errors[0], got.errors
    assert not got.responses
    assert len(ids_of(run_decoder(gpu_stack.grpc_url, _arrays(PROMPT, 4)))) == 4
