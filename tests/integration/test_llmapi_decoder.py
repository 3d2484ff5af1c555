"""Issue 23: the LLM-API decoder (TensorRT-LLM's LLM behind the decoder model) on the session's
llmapi stack, its CPU stand-in behind the real adapter: what works now that a GPU deployment on
the engine path refuses (min_p, top_logprobs), the per-token contract straight at `tensorrt_llm`,
1.2.1's request validation reaching the client, and a dead executor healed by the launcher.

The modules parametrized over DECODER_MODES run the rest of the suite in this mode too.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid

import aiohttp
import numpy as np
import psutil
import pytest

from tests.integration.frontends import extra_frontend
from tests.integration.stack import openai_client_for, wait_for
from tests.integration.test_faults import SSEClient, chat_body, health, http, triton_process
from tests.integration.test_gpu_fidelity import PROMPT, _arrays, run_decoder

USER = [{"role": "user", "content": "Tell me a story about a fox."}]


@pytest.fixture(scope="module")
def stack(llmapi_stack):
    return llmapi_stack


@pytest.fixture(scope="module")
def client(stack):
    return openai_client_for(stack)


def test_min_p_is_honoured(stack, client):
    """min_p 1.0 keeps only the most likely token: sampling with any seed is then greedy. The
    engine path refuses min_p; silently dropping it would leave the seeds' samples apart."""
    kwargs = dict(model=stack.model_name, messages=USER, max_tokens=12, temperature=1.0)
    greedy = client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=12,
                                            temperature=0).choices[0].message.content
    plain = {client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (1, 2)}
    assert len(plain) == 2 and greedy not in plain
    kept = {client.chat.completions.create(seed=s, extra_body={"min_p": 1.0}, **kwargs).choices[0].message.content
            for s in (1, 2)}
    assert kept == {greedy}


def test_top_logprobs_are_the_decoders_alternatives(stack, client):
    r = client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=5)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for t in content:
        alts = [a.logprob for a in t.top_logprobs]
        assert len(alts) == 5 and alts == sorted(alts, reverse=True)
        # greedy: the chosen token is the best alternative, with the same log-prob
        assert t.top_logprobs[0].token == t.token and abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5


def test_greedy_n2_is_two_equal_choices(stack, client):
    """The LLM API refuses n > 1 at temperature 0 unless TLLM_ALLOW_N_GREEDY_DECODING is set;
    the OpenAI API allows it, and the decoder sets it."""
    r = client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=8, temperature=0, n=2)
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content


def test_streamed_responses_carry_only_new_tokens_and_their_log_probs(stack):
    """Our per-token contract at `tensorrt_llm`: the LLM API's results are cumulative; each
    response carries only the new ids and their own log-probs (the engine path's C++ backend
    sends every log-prob so far)."""
    got = run_decoder(stack.grpc_url, _arrays(PROMPT, 5, streaming=True, return_log_probs=True, end_id=np.int32(-1)),
                      outputs=("output_ids", "sequence_length", "output_log_probs"))
    assert not got.errors, got.errors
    with_ids = [r for r in got.responses if r.as_numpy("output_ids") is not None]
    assert [r.as_numpy("output_ids").size for r in with_ids] == [1] * 5
    assert [r.as_numpy("output_log_probs").size for r in with_ids] == [1] * 5
    assert got.finals == 1


def test_sampling_params_validation_reaches_the_client(stack):
    """1.2.1's SamplingParams refuses what our tensor parsing lets through, with its own text."""
    got = run_decoder(stack.grpc_url, _arrays(PROMPT, 4, runtime_top_p=np.float32(1.5)))
    assert got.errors and "require 0 <= top_p <= 1, got top_p=1.5" in got.errors[0], got.errors


def test_stop_for_an_unknown_id_is_an_empty_final_response(stack):
    """The frontend's reach probe, as it sends it: our decoder model answers a stop request itself
    (upstream's LLM-API model.py would answer a CANCELLED error, even for an unknown id)."""
    stop = run_decoder(stack.grpc_url, {**_arrays([0], 1), "stop": np.ones((1, 1), np.bool_)},
                       request_id=f"nobody-{uuid.uuid4().hex}", empty_final=True)
    assert not stop.errors and stop.finals == 1 and not stop.responses[0].get_response().outputs


def test_another_keys_repeated_prompt_gets_no_cached_tokens(stack, default_model_dir):
    """Cache isolation on the LLM-API path (issue 25): each key's salt goes to the LLM as its
    `cache_salt`, so key A's repeated prompt is served from A's cached blocks and key B, sending
    the same prompt, gets none of them. A frontend with two keys against the stack's Triton."""
    if not hasattr(stack, "proc"):
        pytest.skip("starts a frontend of its own against the stack's Triton")
    import openai
    keys = {"tenant-a": "sk-llmapi-salt-A1b2C3d4E5f6", "tenant-b": "sk-llmapi-salt-G7h8I9j0K1l2"}
    prompt = [{"role": "user", "content": "Summarise, in the fewest words you can, why the sky over "
                                          "the sea looks blue on a clear afternoon in early summer."}]
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        env={"API_KEYS": ",".join(f"{i}:{k}" for i, k in keys.items())}) as (base, _proc):
        def cached(key):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)
            r = client.chat.completions.create(model=stack.model_name, messages=prompt, max_tokens=2, temperature=0)
            return r.usage.prompt_tokens_details.cached_tokens, r.usage.prompt_tokens
        a_first, prompt_tokens = cached(keys["tenant-a"])
        a_again, _ = cached(keys["tenant-a"])
        b_first, _ = cached(keys["tenant-b"])
        b_again, _ = cached(keys["tenant-b"])
    assert prompt_tokens >= 32 and a_first == 0
    assert a_again >= 16, a_again              # A's own repeat: its whole blocks come from the cache
    assert b_first == 0, b_first               # nothing of A's reaches B
    assert b_again >= 16, b_again              # B's own repeat hits B's blocks


def executor_process(stack) -> psutil.Process:
    workers = [c for stub in stack.processes()["python_stubs"] for c in stub.children()
               if "llama_triton.backend.llmapi_worker" in " ".join(c.cmdline())]
    assert len(workers) == 1, workers
    return workers[0]


@pytest.mark.timeout(600)
@pytest.mark.skipif(bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")), reason="kills a process of its own stack")
def test_a_dead_executor_is_found_and_the_replica_heals(stack):
    """The executor dies while Triton still calls the model ready (the GPU case: a failed
    executor). Open streams end with an error event, new requests get 503, the frontend reports
    the decoder broken and the launcher restarts tritonserver. Runs last in this module and waits
    for the recovery, so the session stack serves the modules after it."""
    triton = triton_process(stack)
    worker = executor_process(stack)
    clients = [SSEClient(stack.base_url, chat_body(stack.model_name, 1000, seed=i)) for i in range(2)]

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            tasks = [asyncio.create_task(c.run(session)) for c in clients]
            deadline = time.monotonic() + 60
            while not all(c.chunks >= 3 for c in clients):
                assert time.monotonic() < deadline, "streams flowing"
                await asyncio.sleep(0.05)
            os.kill(worker.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
    asyncio.run(scenario())
    killed = time.monotonic()
    for c in clients:
        assert c.status == 200 and c.error is None, (c.status, c.error)
        found = c.error_event()
        assert found is not None, c.events[-3:]
        assert found[1]["type"] == "server_error", found
        assert c.events[-1][1] == b"[DONE]"

    def served():
        status, raw, headers = http(stack.base_url, "/v1/chat/completions", chat_body(stack.model_name, 4, stream=False))
        assert status in (200, 503), (status, raw)          # never a 4xx: not the client's fault
        if status == 503:
            assert "Retry-After" in headers and json.loads(raw)["error"]["code"] == "model_not_ready"
        return status == 200
    wait_for(served, timeout=180, interval=0.5, what="chat 200 again")
    assert "a frontend reported the decoder broken" in stack.log_path.read_text(errors="replace")
    assert triton_process(stack).pid != triton.pid and executor_process(stack).pid != worker.pid
    wait_for(lambda: health(stack.base_url) == 200, timeout=30, interval=0.2, what="/health 200 again")
    print(f"\nexecutor killed: chat 200 again {time.monotonic() - killed:.1f} s after the streams ended")
