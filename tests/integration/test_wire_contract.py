"""Issue 22, item 5: proof on the wire. A recording gRPC proxy (tests/integration/grpc_proxy.py)
sits between a second frontend process and the session's GPU-mode Triton; a spread of chat and
completions requests goes through it, and every `tensorrt_llm` request it saw is checked against
TensorRT-LLM 1.2.1's backend contract (llama_triton/trtllm/backend_contract.py): the outputs asked
for, each input a declared one with its data type, the guide type one the backend reads, and the
guide one the engine's xgrammar compiles.

Against LLAMA_TRITON_EXTERNAL_URL / _GRPC (build/gpu_smoke.sh on a GPU) the proxy sits in front of
the real C++ backend instead.
"""
from __future__ import annotations

import http.client
import json
import subprocess
import sys

import openai
import pytest

from llama_triton.contract import GUIDE_TYPES
from llama_triton.trtllm import backend_contract
from tests.engine_guides import engine_compile
from tests.integration.frontends import extra_frontend
from tests.integration.grpc_proxy import RecordingProxy, drop_output
from tests.integration.stack import ROOT, wait_for

USER = [{"role": "user", "content": "Tell me about the sea."}]
SCHEMA = {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "blue"]},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["color", "n"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"], "additionalProperties": False}}}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def compile_with_engine_xgrammar(tokenizer, guide_type: str, guide):
    """The one place that says "the engine's xgrammar compiles this guide": TensorRT-LLM 1.2.1's
    xgrammar (0.1.32) with the engine's guide-type dispatch (tests/engine_guides.py). A guide it
    refuses would fail every active request on a GPU."""
    engine_compile(guide_type, guide)


def _wire(stack, default_model_dir):
    """The stack's Triton behind a recording proxy, and a frontend that talks to it. The
    frontend's token cap is high enough for a generation that outlives the client's hang-up."""
    proxy = RecordingProxy(stack.grpc_url)
    try:
        with extra_frontend(str(default_model_dir), proxy.url, "--max-tokens-cap", "512",
                            "--max-context", "1024") as (base, _proc):
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
            yield proxy, base, client, stack.model_name
    finally:
        proxy.close()


@pytest.fixture(scope="module")
def wire(gpu_stack, default_model_dir):
    yield from _wire(gpu_stack, default_model_dir)


@pytest.fixture(scope="module")
def llmapi_wire(llmapi_stack, default_model_dir):
    """The same in front of the LLM-API decoder (issue 23), whose contract is its own declared config."""
    yield from _wire(llmapi_stack, default_model_dir)


def _hang_up_mid_stream(base: str, model: str) -> str:
    """A streamed request whose client goes away after the first event; returns its request id."""
    host, port = base.rsplit("/", 1)[1].split(":")
    body = json.dumps({"model": model, "messages": USER, "max_tokens": 500, "stream": True, "ignore_eos": True,
                       "temperature": 1.0, "seed": 1}).encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    rid = resp.getheader("X-Request-Id")
    while not resp.fp.readline().startswith(b"data: "):
        pass
    conn.sock.shutdown(2)
    conn.close()
    return rid


def _send_spread(proxy, base, client, model) -> tuple[dict[str, str], list]:
    """The spread of chat and completions requests; returns their ids and the hung-up stream's stop."""
    ids: dict[str, str] = {}        # what each request was -> its request id (the Triton request id)
    small = dict(model=model, max_tokens=6, temperature=1.0, seed=3)

    ids["chat"] = client.chat.completions.create(messages=USER, **small).id
    ids["chat stream"] = list(client.chat.completions.create(messages=USER, stream=True, **small))[0].id
    chunks = list(client.chat.completions.create(messages=USER, stream=True, n=2, logprobs=True, **small))
    ids["n=2 logprobs"] = chunks[0].id
    ids["no usage"] = list(client.chat.completions.create(
        messages=USER, stream=True, stream_options={"include_usage": False}, **small))[0].id
    ids["penalties"] = client.chat.completions.create(
        messages=USER, presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9,
        extra_body={"repetition_penalty": 1.1, "top_k": 20, "min_tokens": 2}, **small).id
    ids["stop strings"] = list(client.chat.completions.create(messages=USER, stream=True, stop=["e", "."],
                                                              **small))[0].id
    ids["ignore_eos"] = client.chat.completions.create(messages=USER, extra_body={"ignore_eos": True}, **small).id
    ids["completion"] = client.completions.create(prompt="Once upon a time", logprobs=0, stop=["."], **small).id
    ids["completion stream"] = list(client.completions.create(prompt="Once upon a time", stream=True,
                                                              **small))[0].id
    ids["json_object"] = client.chat.completions.create(messages=USER, response_format={"type": "json_object"},
                                                        **small).id
    ids["json_schema"] = client.chat.completions.create(
        messages=USER, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}},
        **small).id
    ids["regex"] = client.chat.completions.create(
        messages=USER, response_format={"type": "regex", "regex": "(yes|no)"}, **small).id
    for choice in ("auto", "required", NAMED):
        ids[f"tools {choice}"] = client.chat.completions.create(messages=USER, tools=TOOLS, tool_choice=choice,
                                                                **small).id
        ids[f"tools {choice} stream"] = list(client.chat.completions.create(
            messages=USER, tools=TOOLS, tool_choice=choice, stream=True, **small))[0].id
    ids["hang-up"] = _hang_up_mid_stream(base, model)
    stop = wait_for(lambda: [r for r in proxy.records() if r.is_stop and r.request_id == ids["hang-up"]],
                    timeout=60, what="the stop request for the hung-up stream")
    return ids, stop


def generation_requests(records, ids: dict[str, str]) -> dict:
    """The recorded decoder requests by id (stop requests apart); every id in `ids` reached it."""
    by_id = {r.request_id: r for r in records if not r.is_stop}
    assert set(ids.values()) <= set(by_id), sorted(set(ids.values()) - set(by_id))
    return by_id


def assert_guides_compile_on_the_engine(records, tokenizer) -> None:
    """Every guide the frontend sent compiles with the engine's xgrammar, and both kinds were seen:
    JSON guides (json_object, json_schema, tools, reasoning) go as our own EBNF, without the free
    whitespace the engine's `json`/`json_schema` compile would allow; regexes as `regex`."""
    guides = {(r.value("guided_decoding_guide_type"), r.value("guided_decoding_guide")) for r in records
              if r.value("guided_decoding_guide_type") is not None}
    for guide_type, guide in guides:
        compile_with_engine_xgrammar(tokenizer, guide_type, guide)
    assert {t for t, _ in guides} == {"ebnf_grammar", "regex"}
    assert {t for t, _ in guides} <= set(GUIDE_TYPES)


def test_every_request_to_the_decoder_keeps_the_backend_contract(wire, default_tokenizer):
    proxy, base, client, model = wire
    ids, stop = _send_spread(proxy, base, client, model)
    records = proxy.records()
    by_id = generation_requests(records, ids)

    # The contract, for every request the decoder got (health probes and stop requests included).
    problems = []
    for r in records:
        inputs = [(name, datatype, shape) for name, (datatype, shape, _) in r.inputs.items()]
        for p in backend_contract.request_problems(inputs, r.outputs, r.value("guided_decoding_guide_type")):
            problems.append(f"{r.request_id}: {p}")
    assert not problems, problems

    assert_guides_compile_on_the_engine(records, default_tokenizer)

    # What a few requests must carry on the wire.
    gen = {name: by_id[rid] for name, rid in ids.items()}
    assert all(r.value("streaming") is True for r in gen.values())
    assert gen["n=2 logprobs"].value("num_return_sequences") == 2
    assert {"sequence_index", "output_log_probs"} <= set(gen["n=2 logprobs"].outputs)
    assert gen["n=2 logprobs"].value("return_log_probs") is True
    assert gen["ignore_eos"].value("end_id") == -1 and gen["ignore_eos"].value("min_tokens") == 0
    assert gen["penalties"].value("min_tokens") == 2 and gen["penalties"].value("end_id") >= 0
    assert gen["chat"].value("return_perf_metrics") is True          # non-streamed replies report usage
    assert gen["no usage"].value("return_perf_metrics") is None      # ... a stream without usage does not ask
    assert stop[0].value("stop") is True


def declared_problems(cfg: dict, inputs, outputs) -> list[str]:
    """One request against a served config (Triton's ModelConfig as JSON): every input declared,
    with its declared data type; every requested output declared; output_ids asked for."""
    declared_in = {i["name"]: backend_contract.WIRE_DATATYPE[i["data_type"]] for i in cfg["input"]}
    declared_out = {o["name"] for o in cfg["output"]}
    problems = [f"input '{name}' is not declared" for name, _, _ in inputs if name not in declared_in]
    problems += [f"input '{name}' is {datatype}, the config declares {declared_in[name]}"
                 for name, datatype, _ in inputs if name in declared_in and datatype != declared_in[name]]
    if outputs is not None:
        problems += [f"output '{name}' is not declared" for name in outputs if name not in declared_out]
        if "output_ids" not in outputs:
            problems.append("output_ids is not asked for")
    return problems


def test_every_request_to_the_llmapi_decoder_keeps_its_declared_contract(llmapi_wire, default_tokenizer):
    """Issue 23: the same spread in front of the LLM-API decoder, checked against the config it
    serves (the CPU decoder's tensor list, so min_p and top-N log-probs go on the wire too)."""
    import tritonclient.grpc as grpcclient
    proxy, base, client, model = llmapi_wire
    ids, stop = _send_spread(proxy, base, client, model)
    ids["min_p top_logprobs"] = client.chat.completions.create(
        model=model, messages=USER, max_tokens=4, temperature=1.0, seed=3, logprobs=True, top_logprobs=3,
        extra_body={"min_p": 0.05}).id
    cfg = grpcclient.InferenceServerClient(proxy.upstream).get_model_config("tensorrt_llm", as_json=True)["config"]
    records = proxy.records()
    by_id = generation_requests(records, ids)
    problems = []
    for r in records:
        inputs = [(name, datatype, shape) for name, (datatype, shape, _) in r.inputs.items()]
        problems += [f"{r.request_id}: {p}" for p in declared_problems(cfg, inputs, r.outputs)]
    assert not problems, problems
    assert_guides_compile_on_the_engine(records, default_tokenizer)
    gen = {name: by_id[rid] for name, rid in ids.items()}
    assert gen["min_p top_logprobs"].value("min_p") == pytest.approx(0.05)
    assert gen["min_p top_logprobs"].value("num_top_log_probs") == 3
    assert {"top_log_probs", "top_log_prob_ids"} <= set(gen["min_p top_logprobs"].outputs)
    assert gen["ignore_eos"].value("end_id") == -1
    assert all(r.value("return_perf_metrics") is None for r in gen.values())   # not declared here
    assert stop[0].value("stop") is True


def test_a_served_config_that_breaks_the_contract_is_refused(gpu_stack, default_model_dir):
    """Start-up refuses to serve, naming the tensor, when the served config lacks sequence_length
    (here a proxy drops it from Triton's ModelConfig answer)."""
    proxy = RecordingProxy(gpu_stack.grpc_url, config_rewrite=drop_output("sequence_length"))
    try:
        cmd = [sys.executable, "-m", "frontend", "--model-dir", str(default_model_dir), "--triton-grpc", proxy.url,
               "--port", "0", "--log-format", "text"]
        run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        proxy.close()
    assert run.returncode != 0
    assert "refusing to serve" in run.stderr + run.stdout
    assert "output 'sequence_length' is not declared" in run.stderr + run.stdout
