"""One source of every default (llama_triton/defaults.py): the launcher's flags, the rendered
repository, the CPU decoder's `EngineConfig` and its Triton parameter fallbacks, the frontend's
flags and `Settings` agree on each value they share."""
from __future__ import annotations

from dataclasses import fields

import pytest

from frontend.settings import Settings, parse_args
from llama_triton import defaults
from llama_triton.backend.engine_setup import build_engine
from llama_triton.engine.config import EngineConfig
from llama_triton.serve.launcher import build_parser
from llama_triton.serve.repository import RepositorySettings

# Variables that would stand in for a flag's default (each is documented with its flag).
FLAG_ENV = ("LLAMA_TRITON_DTYPE", "PORT", "FRONTEND_WORKERS", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "LLAMA_TRITON_RESPONSES_STORE", "API_KEYS", "API_KEYS_FILE", "METRICS_KEYS", "METRICS_KEYS_FILE",
            "CACHE_SHARE_GROUPS", "KEY_MAX_CONCURRENT", "KEY_MAX_TOKENS_PER_S")


@pytest.fixture
def clean_env(monkeypatch):
    for name in FLAG_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def serve_args(clean_env):
    return build_parser().parse_args(["serve"])


def test_the_cpu_decoder_limits_are_one_value_from_the_flag_to_the_engine(serve_args, default_model_dir):
    """Finding: max_num_tokens was 16384 in EngineConfig and 65536 in the launcher and the
    decoder's parameter fallback."""
    a, rendered, engine = serve_args, RepositorySettings(model_dir="m").values(), EngineConfig()
    # what the decoder builds when config.pbtxt leaves a parameter out
    fallback = build_engine({"model_dir": str(default_model_dir), "decoder_kind": "zero_cost"}).config
    assert a.max_num_tokens == rendered["max_num_tokens"] == engine.max_num_tokens == fallback.max_num_tokens
    assert a.max_seq_len == rendered["max_seq_len"] == fallback.max_seq_len
    assert a.max_batch_size == rendered["max_batch_size"] == engine.max_batch_size == fallback.max_batch_size
    assert a.max_queue_size == rendered["max_queue_size"] == engine.max_queue_size == fallback.max_queue_size
    assert a.dtype == rendered["dtype"] == fallback.dtype == defaults.DTYPE
    # (EngineConfig's own dtype differs on purpose: defaults.ENGINE_CONFIG_DTYPE says why)
    assert rendered["prefill_chunk_size"] == engine.prefill_chunk_size == fallback.prefill_chunk_size
    assert rendered["tokens_per_block"] == engine.block_size == fallback.block_size


def test_the_defaults_users_had_stay(serve_args, capsys):
    """Where the values disagreed, the one in effect for users was kept: the launcher's flags (and
    so the rendered config.pbtxt). A change here is a user-visible change (CLI --help, config.pbtxt)."""
    a = serve_args
    assert (a.max_num_tokens, a.max_seq_len, a.max_tokens_cap, a.dtype) == (65536, 4096, 16384, "auto")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "KV cache capacity in tokens (default: 65536)" in help_text


def test_the_launcher_and_the_frontend_agree(serve_args, clean_env):
    a, s = serve_args, parse_args(["--model-dir", "m"])
    assert s.max_tokens_cap == a.max_tokens_cap
    assert s.shutdown_grace == a.shutdown_grace
    assert (s.host, s.port) == (a.host, a.port)
    assert s.triton_grpc == f"127.0.0.1:{a.triton_grpc_port}"


def test_the_frontend_flags_read_their_defaults_from_settings(clean_env):
    parsed = parse_args(["--model-dir", "m"])
    built = Settings(model_dir="m", served_model_name="m")
    # api_keys: a key ring object per instance (empty in both); hash_secret: random per instance
    compared = [f.name for f in fields(Settings) if f.name not in ("api_keys", "hash_secret")]
    assert {n: getattr(parsed, n) for n in compared} == {n: getattr(built, n) for n in compared}


def test_postprocessing_keeps_a_stream_as_long_as_the_rendered_config_says(default_tokenizer):
    from llama_triton.backend.text_steps import StreamDetokenizers
    rendered = RepositorySettings(model_dir="m").values()
    assert StreamDetokenizers(default_tokenizer).idle_seconds == rendered["stream_state_idle_seconds"]
