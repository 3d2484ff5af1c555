"""The GPU smoke test's probes (build/gpu_smoke.sh): one function per finding, each PASS or FAIL.

    python3 build/gpu_probes.py list
    python3 build/gpu_probes.py run --url http://127.0.0.1:8080 --grpc 127.0.0.1:8001 --model-dir DIR [--only a,b]

`run` tries every probe (or those named) against a running stack and prints one line each; it exits 1
when any failed. A probe is a function registered with `@probe("name", "what it shows")` that
raises (an AssertionError says why) when the stack is wrong; add one the same way. `list` needs
nothing but Python: the heavy imports happen inside the probes. The probes also run against the CPU
decoder in GPU mode (`llama-triton serve --decoder-io gpu`), which answers as the C++ backend does.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
PROBES: dict[str, tuple[str, str, Callable]] = {}      # name -> (issue, description, function)


def probe(name: str, issue: str, description: str):
    def register(fn):
        PROBES[name] = (issue, description, fn)
        return fn
    return register


@dataclass
class Stack:
    url: str            # the frontend, http://host:port
    grpc: str           # Triton's gRPC endpoint
    model_dir: str      # the checkpoint (tokenizer) the stack serves

    @property
    def model(self) -> str:
        with urllib.request.urlopen(f"{self.url}/v1/models", timeout=30) as r:
            return json.load(r)["data"][0]["id"]

    def post(self, body: dict, path: str = "/v1/chat/completions", url: str | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"{url or self.url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def chat(self, messages=None, url: str | None = None, **body) -> tuple[int, str]:
        messages = messages or [{"role": "user", "content": "Say yes or no."}]
        return self.post(dict(model=self.model, messages=messages, **body), url=url)

    def config(self) -> dict:
        import tritonclient.grpc as grpcclient
        return grpcclient.InferenceServerClient(self.grpc).get_model_config("tensorrt_llm", as_json=True)["config"]


def _ok(status: int, body: str) -> dict:
    assert status == 200, f"HTTP {status}: {body[:300]}"
    return json.loads(body)


def _events(body: str) -> list[dict]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]


# ---- straight at tensorrt_llm -----------------------------------------------------------------

def _tensor(name, arr):
    import numpy as np
    import tritonclient.grpc as grpcclient
    dtype = {np.int32: "INT32", np.bool_: "BOOL", np.object_: "BYTES", np.uint64: "UINT64"}[arr.dtype.type]
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def _decoder_request(stack: Stack, ids: list[int], max_tokens: int, *, outputs=None, timeout=120, **extra):
    """One request to tensorrt_llm on its own stream: (responses, errors)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    inputs = [_tensor("input_ids", np.array([ids], np.int32)), _tensor("input_lengths", np.array([[len(ids)]], np.int32)),
              _tensor("request_output_len", np.array([[max_tokens]], np.int32))]
    inputs += [_tensor(k, np.array([[v]], dtype=object if isinstance(v, bytes) else type(v))) for k, v in extra.items()]
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(stack.grpc)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    responses, errors = [], []
    try:
        client.async_stream_infer("tensorrt_llm", inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True,
                                  outputs=[grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None)
        while True:
            result, error = got.get(timeout=timeout)
            if error is not None:
                errors.append(str(error))
                break
            responses.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return responses, errors


def _prompt(stack: Stack, text: str) -> list[int]:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(stack.model_dir)(text)["input_ids"]


# ---- issue 22 ---------------------------------------------------------------------------------

@probe("served_config_contract", "22", "the served tensorrt_llm config keeps TensorRT-LLM 1.2.1's backend contract")
def served_config_contract(stack: Stack):
    sys.path.insert(0, str(ROOT))
    from llama_triton.trtllm.backend_contract import config_problems
    problems = config_problems(stack.config())
    assert not problems, problems


@probe("requested_outputs", "22", "a request without sequence_length fails as the backend's; with both it streams")
def requested_outputs(stack: Stack):
    ids = _prompt(stack, "Tell me about the sea.")
    _, errors = _decoder_request(stack, ids, 4, outputs=["output_ids"], streaming=True)
    assert errors and "sequence_length tensor must be present in list of output tensors" in errors[0], errors
    print(f"    only output_ids: {errors[0].splitlines()[0][:160]}")
    responses, errors = _decoder_request(stack, ids, 4, outputs=["output_ids", "sequence_length"], streaming=True)
    assert not errors and responses, errors


@probe("streamed_chat", "22", "a streamed chat completion equals the non-streamed one (the frontend's own requests)")
def streamed_chat(stack: Stack):
    full = _ok(*stack.chat(max_tokens=16, seed=1))["choices"][0]["message"]["content"]
    status, body = stack.chat(max_tokens=16, seed=1, stream=True)
    assert status == 200 and body.rstrip().endswith("data: [DONE]"), body[-300:]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in _events(body) if c.get("choices"))
    assert streamed == full, (streamed, full)


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}]


@probe("tools", "22", "tool_choice required and auto, streamed and not: the tool guide compiles on the engine")
def tools(stack: Stack):
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    body = _ok(*stack.chat(msgs, tools=TOOLS, tool_choice="required", max_tokens=40, seed=2))
    calls = body["choices"][0]["message"].get("tool_calls") or []
    assert calls and calls[0]["function"]["name"] == "get_weather", body
    if body["choices"][0]["finish_reason"] == "tool_calls":
        assert json.loads(calls[0]["function"]["arguments"])["city"] in ("Paris", "Rome"), calls
    for choice in ("auto", "required"):
        status, text = stack.chat(msgs, tools=TOOLS, tool_choice=choice, max_tokens=40, seed=2, stream=True)
        assert status == 200 and "data: [DONE]" in text and '"error"' not in text, text[-400:]


@probe("nullable_schema", "22", "a json_schema with a nullable type compiles on the engine and is honoured")
def nullable_schema(stack: Stack):
    schema = {"type": "object", "properties": {"name": {"type": ["string", "null"], "maxLength": 8},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["name", "n"], "additionalProperties": False}
    body = _ok(*stack.chat(max_tokens=40, seed=3, response_format={
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}))
    choice = body["choices"][0]
    if choice["finish_reason"] == "stop":
        value = json.loads(choice["message"]["content"])
        assert value["name"] is None or (isinstance(value["name"], str) and len(value["name"]) <= 8), value
        assert isinstance(value["n"], int) and 0 <= value["n"] <= 9, value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@probe("reasoning_guide", "22", "a reasoning template's guide (reasoning prefix, then the schema) compiles on the engine")
def reasoning_guide(stack: Stack):
    """A second frontend on the same Triton, with the served tokenizer and a chat template that
    opens <think>: the frontend then builds the reasoning-prefixed guide, which the engine compiles."""
    work = Path(tempfile.mkdtemp(prefix="smoke-reasoning-"))
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "special_tokens_map.json"):
        if (Path(stack.model_dir) / name).exists():
            shutil.copy(Path(stack.model_dir) / name, work / name)
    (work / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant: <think>\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "frontend", "--model-dir", str(work), "--triton-grpc", stack.grpc,
                             "--port", str(port), "--max-tokens-cap", "64"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except Exception:
                time.sleep(0.5)
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                  "additionalProperties": False}
        status, body = stack.post({"model": work.name, "messages": [{"role": "user", "content": "ok?"}],
                                   "max_tokens": 40, "seed": 4,
                                   "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}},
                                  url=url)
        _ok(status, body)
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


@probe("cached_tokens_within_prompt", "22", "a repeated prompt reports cached tokens, never more than the prompt less one")
def cached_tokens_within_prompt(stack: Stack):
    # 7 x 29 + the template: a prompt length that is no multiple of the KV block
    msgs = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "lorem ipsum dolor sit amet " * 29}]
    usages = [_ok(*stack.chat(msgs, max_tokens=1))["usage"] for _ in range(2)]
    cached, prompt = usages[1]["prompt_tokens_details"]["cached_tokens"], usages[1]["prompt_tokens"]
    print(f"    repeated {prompt}-token prompt: {cached} cached")
    assert 0 < cached <= prompt - 1, usages


@probe("queue_full_429_pp", "22", "overload is 429, never 5xx; the gate admits PP x max_batch_size + queue first")
def queue_full_429_pp(stack: Stack):
    import concurrent.futures
    cfg = stack.config()
    params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
    if params.get("max_queue_size", "").isdigit():       # the CPU decoder
        pp, batch, queue_size = 1, int(params["max_batch_size"]), int(params["max_queue_size"])
    else:
        pp = int(params.get("pipeline_parallel_size") or 1)
        batch, queue_size = int(cfg["max_batch_size"]), int(cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"])
    capacity = pp * batch + queue_size
    msgs = [{"role": "user", "content": "Go on and on."}]
    with concurrent.futures.ThreadPoolExecutor(capacity + 16) as pool:
        statuses = list(pool.map(lambda _: stack.chat(msgs, max_tokens=48, ignore_eos=True)[0], range(capacity + 16)))
    counts = {s: statuses.count(s) for s in set(statuses)}
    print(f"    PP {pp} x batch {batch} + queue {queue_size} = {capacity}; {capacity + 16} at once: {counts}")
    assert set(counts) <= {200, 429}, counts
    assert counts.get(429, 0) >= 1 and counts.get(200, 0) >= min(capacity, pp * batch), counts


# ---- issue 11 ---------------------------------------------------------------------------------

@probe("refusals", "11", "min_p and top_logprobs are a 400 naming the field")
def refusals(stack: Stack):
    for field, extra in (("min_p", {"min_p": 0.1}), ("top_logprobs", {"logprobs": True, "top_logprobs": 2})):
        status, body = stack.chat(max_tokens=4, **extra)
        assert status == 400 and json.loads(body)["error"]["param"] == field, body


@probe("guided_direct", "11", "guided decoding straight at tensorrt_llm (regex yes|no): engine plus tokenizer info")
def guided_direct(stack: Stack):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(stack.model_dir)
    ids = tok("[INST] Say yes or no. [/INST]")["input_ids"]
    import numpy as np
    responses, errors = _decoder_request(stack, ids, 8, outputs=["output_ids", "sequence_length"],
                                         end_id=np.int32(tok.eos_token_id), pad_id=np.int32(tok.eos_token_id),
                                         guided_decoding_guide_type=b"regex", guided_decoding_guide=b"(yes|no)")
    assert not errors, errors
    out = []
    for r in responses:
        if r.as_numpy("output_ids") is not None:
            n = int(r.as_numpy("sequence_length").reshape(-1)[0])
            out += [t for t in r.as_numpy("output_ids").reshape(-1)[:n].tolist() if t != tok.eos_token_id]
    assert tok.decode(out).strip() in ("yes", "no"), tok.decode(out)


@probe("guided_response_format", "11", "response_format regex through the OpenAI API")
def guided_response_format(stack: Stack):
    answer = _ok(*stack.chat(max_tokens=8, response_format={"type": "regex", "regex": "(yes|no)"}))
    assert answer["choices"][0]["message"]["content"].strip() in ("yes", "no"), answer


@probe("n2_differ", "11", "seeded n=2 at temperature 1 gives two different choices")
def n2_differ(stack: Stack):
    body = _ok(*stack.chat([{"role": "user", "content": "Tell me a story about a fox."}], n=2, temperature=1.0,
                           seed=11, max_tokens=16))
    texts = [c["message"]["content"] for c in body["choices"]]
    assert texts[0] != texts[1], texts


@probe("streamed_logprobs", "11", "streamed log-probs equal the non-streamed ones")
def streamed_logprobs(stack: Stack):
    msgs = [{"role": "user", "content": "Tell me a story about a fox."}]
    kw = dict(temperature=1.0, seed=3, max_tokens=12, logprobs=True)
    full = [(t["token"], t["logprob"]) for t in _ok(*stack.chat(msgs, **kw))["choices"][0]["logprobs"]["content"]]
    status, body = stack.chat(msgs, stream=True, **kw)
    assert status == 200, body
    streamed = [(t["token"], t["logprob"]) for c in _events(body) for ch in c.get("choices", [])
                for t in ((ch.get("logprobs") or {}).get("content") or [])]
    assert [t for t, _ in streamed] == [t for t, _ in full], (streamed, full)
    assert all(abs(a - b) <= 1e-4 for (_, a), (_, b) in zip(streamed, full)), (streamed, full)


@probe("perf_metrics", "11", "return_perf_metrics answers all ten perf outputs, with reused blocks on a repeat")
def perf_metrics(stack: Stack):
    perf = ["kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", "arrival_time_ns",
            "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns", "acceptance_rate",
            "total_accepted_draft_tokens", "total_draft_tokens"]
    prompt = list(range(100, 300))
    for _ in range(2):
        responses, errors = _decoder_request(stack, prompt, 2, outputs=["output_ids", "sequence_length"] + perf,
                                             return_perf_metrics=True)
        assert not errors, errors
        values = {n: responses[0].as_numpy(n).reshape(-1)[0].item() for n in perf
                  if responses[0].as_numpy(n) is not None}
        assert set(values) == set(perf), set(perf) - set(values)
    assert values["kv_cache_reused_blocks"] >= 1, values


# ---- driver -----------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="name, issue and description of every probe")
    run = sub.add_parser("run", help="run the probes against a stack")
    run.add_argument("--url", default=os.environ.get("SMOKE_URL", "http://127.0.0.1:8080"))
    run.add_argument("--grpc", default=os.environ.get("SMOKE_GRPC", "127.0.0.1:8001"))
    run.add_argument("--model-dir", default=os.environ.get("SMOKE_MODEL_DIR", "var/models/llama2-tiny"))
    run.add_argument("--only", default="", help="comma-separated probe names")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for name, (issue, description, _) in PROBES.items():
            print(f"probe {name:30s} issue {issue:3s} {description}")
        return 0
    names = [n for n in a.only.split(",") if n] or list(PROBES)
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        p.error(f"unknown probe(s): {', '.join(unknown)}")
    stack = Stack(a.url.rstrip("/"), a.grpc, a.model_dir)
    failed = []
    for name in names:
        t0 = time.monotonic()
        try:
            PROBES[name][2](stack)
            print(f"PASS {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except Exception as e:      # a probe's failure is reported, the others still run
            failed.append(name)
            print(f"FAIL {name} ({time.monotonic() - t0:.1f} s): {type(e).__name__}: {str(e)[:500]}", flush=True)
            traceback.print_exc(limit=3)
    print(f"{len(names) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
