"""Shared fixtures: the tiny checkpoints from build/make_default_model.py and their tokenizers.

Checkpoints are built on first use into var/models/ (Llama-2: ~20 s; the 128k-token Llama-3
vocabularies: ~1 min each on two cores) and reused afterwards; the build script returns at once
when a checkpoint with the same options is already there.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "var" / "models"
MODEL_DIR_ENV = "LLAMA_TRITON_MODEL_DIR"
# Every stack the suite starts serves the tiny models in float32 (the launcher's --dtype default
# comes from this variable; `auto` would pick bf16 on CPUs that have it): integration tests compare
# the decoder with transformers' float32 logits to ~1e-6. bf16 parity has its own unit tests.
os.environ.setdefault("LLAMA_TRITON_DTYPE", "float32")


def load_build_script(name: str) -> ModuleType:
    """Import `build/<name>.py`: build/ holds command-line scripts run by path (make targets), not a package."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "build" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def make_default_model() -> ModuleType:
    return load_build_script("make_default_model")


@pytest.fixture(scope="session")
def llama_cpp_vocab_dir(make_default_model: ModuleType) -> Path:
    """llama.cpp's GGUF vocabularies, test vectors and chat templates (downloaded once)."""
    return make_default_model.ensure_vocab()


@pytest.fixture(scope="session")
def default_model_dir(make_default_model: ModuleType) -> Path:
    """The embedded default model (Llama-2 vocab and chat template), or $LLAMA_TRITON_MODEL_DIR.

    An existing directory named by the variable is used as it is; a missing one is built there.
    """
    configured = os.environ.get(MODEL_DIR_ENV)
    if configured and Path(configured).is_dir():
        return Path(configured)
    return make_default_model.build_model(Path(configured) if configured else MODELS_DIR / "llama2-tiny")


@pytest.fixture(scope="session")
def llama3_model_dir(make_default_model: ModuleType) -> Path:
    """Llama-3 vocabulary with Llama-3.1's special tokens and chat template."""
    return make_default_model.build_model(MODELS_DIR / "llama3-tiny", vocab="llama-bpe", template="llama-3.1")


@pytest.fixture(scope="session")
def reasoning_model_dir(make_default_model: ModuleType) -> Path:
    """DeepSeek-R1-Distill-Llama layout: Llama-3 vocabulary, <think> tokens, its chat template."""
    return make_default_model.build_model(
        MODELS_DIR / "deepseek-r1-distill-tiny", vocab="llama-bpe", template="deepseek-r1-distill"
    )


# ----------------------------------------------------------------------------- tokenizers


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir: Path):
    from llama_triton.text.tokenization import Tokenizer

    return Tokenizer.from_dir(default_model_dir)


@pytest.fixture(scope="session")
def llama3_tokenizer(llama3_model_dir: Path):
    from llama_triton.text.tokenization import Tokenizer

    return Tokenizer.from_dir(llama3_model_dir)


@pytest.fixture(scope="session")
def reasoning_tokenizer(reasoning_model_dir: Path):
    from llama_triton.text.tokenization import Tokenizer

    return Tokenizer.from_dir(reasoning_model_dir)


# ----------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (tests/postgres_server.py): the response store's
    tests and the cluster's shared store. Without Debian's postgresql package this fails, naming it."""
    from tests.postgres_server import start_postgres

    server = start_postgres()
    yield server
    server.stop()
