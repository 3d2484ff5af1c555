# Two set-up commands on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8080
MODEL_DIR ?= var/models/llama2-tiny
PYTEST_ARGS ?=

.PHONY: serve test venv model unit integration clean bench engine plan

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

test: venv model
	@echo ">> running the whole test suite (unit + integration against a real tritonserver)"
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest $(PYTEST_ARGS)

unit: venv model
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: venv model
	LLAMA_TRITON_MODEL_DIR=$(MODEL_DIR) $(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf var/run var/test_repo*
