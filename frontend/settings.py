"""Frontend configuration: everything comes from the command line or the environment, never from a request."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from frontend.tenancy import KEY_ID, KeyRing, KeysInvalid, hash_secret, parse_share_groups
from llama_triton import defaults


@dataclass
class Settings:
    model_dir: str
    served_model_name: str
    triton_grpc: str = f"127.0.0.1:{defaults.TRITON_GRPC_PORT}"
    triton_metrics: Optional[str] = None    # Triton's Prometheus host:port (vllm:kv_cache_usage_perc)
    otlp_traces_endpoint: Optional[str] = None  # OTLP/HTTP traces URL; None: no tracing
    host: str = defaults.HOST
    port: int = defaults.PORT
    max_tokens_cap: int = defaults.MAX_TOKENS_CAP   # the seed's cap for max_tokens: null
    max_context: Optional[int] = None       # default: the decoder's max_seq_len, else the model's
    max_body_bytes: int = 8 * 1024 * 1024
    api_keys: KeyRing = field(default_factory=KeyRing)     # clients' keys, reloaded when the file changes
    metrics_keys: frozenset[str] = frozenset()  # who may read /metrics on the API port when keys are on
    metrics_port: Optional[int] = None      # a second listener serving only /metrics (no key; firewall it)
    keepalive_timeout: float = 75.0         # seconds an idle keep-alive connection is kept open
    # A prompt without tools of at most this many characters is templated and tokenized on the event
    # loop, a longer one in a worker thread. 0 (the default): always in a thread. The thread's
    # hand-off and return cost 30-100 ms of TTFT on a busy loop, yet with 2048 the c=64 TTFT came out
    # worse in every alternated pair of bench-ttft's committed run: a lever to measure, not a default.
    inline_prompt_chars: int = 0
    # keys cache salts and user hashes ($LLAMA_TRITON_HASH_SECRET: one per replica, from the launcher)
    hash_secret: bytes = field(default_factory=hash_secret, repr=False)
    cors_origins: tuple[str, ...] = ()
    request_timeout: float = 600.0          # seconds; the Triton request is cancelled after it
    shutdown_grace: float = defaults.SHUTDOWN_GRACE_S   # seconds in-flight requests get on SIGTERM
    write_timeout: float = 30.0             # seconds one SSE write may wait on a client that does not read
    log_format: str = "json"                # json (one object per line) or text
    reuse_port: bool = False                # one of several workers on the same port (SO_REUSEPORT)
    ready_file: Optional[str] = None        # touched once listening (the launcher waits for every worker)
    decoder_failure_file: Optional[str] = None  # where to tell the launcher the decoder is broken
    liveness_timeout: float = 900.0         # /health/live fails once the decoder has been down this long
    # Stored responses (/v1/responses, frontend/openai/responses/store.py): where, how long, how big
    responses_store: Optional[str] = None   # sqlite:PATH or postgresql://...; None: SQLite in memory
    responses_ttl: float = 30 * 24 * 3600.0
    responses_max_bytes: int = 16 * 1024 * 1024
    responses_max_per_key: int = 10_000
    admission_file: Optional[str] = None    # the 429 gate's count shared by workers (frontend/tenancy/admission.py)
    admission_slot: int = 0                 # this worker's counter in it
    # Fair share per key (frontend/tenancy/fair_share.py): how long a key under its share waits for a place
    fair_share_wait: float = 600.0
    key_max_concurrent: dict[str, int] = field(default_factory=dict)   # key id -> open requests allowed
    key_max_tokens_per_s: dict[str, float] = field(default_factory=dict)   # key id -> tokens per second


def _default(name: str):
    """`Settings`' default for a field: the flags below read theirs from it, so they cannot drift apart."""
    return next(f.default for f in fields(Settings) if f.name == name)


RESPONSES_STORE_ENV = "LLAMA_TRITON_RESPONSES_STORE"


def responses_store_url(option: Optional[str], env: Optional[str]) -> Optional[str]:
    """--responses-store, else $LLAMA_TRITON_RESPONSES_STORE. A URL with a password is refused on the
    command line (every process listing shows it): it belongs in the variable or PGPASSWORD."""
    if option:
        from urllib.parse import urlsplit
        if urlsplit(option).password:
            raise ValueError(f"--responses-store must not carry a password (the process list shows it); put the "
                             f"URL in ${RESPONSES_STORE_ENV}, or the password in PGPASSWORD or a pgpass file")
        return option
    return env or None


def load_api_keys(env_value: Optional[str], keys_file: Optional[str],
                  share_groups: Optional[dict[str, str]] = None) -> KeyRing:
    """$API_KEYS and the keys file (frontend/tenancy/tenants.py has the format)."""
    return KeyRing(env_value, keys_file, share_groups)


def load_secret_list(env_value: Optional[str], path: Optional[str]) -> frozenset[str]:
    """Comma-separated values from the environment plus one per line from a file (`#` comments)."""
    values = {v.strip() for v in (env_value or "").split(",") if v.strip()}
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                values.add(line)
    return frozenset(values)


def parse_key_caps(specs: list[str], option: str = "--key-max-concurrent") -> dict[str, int]:
    """key id -> a positive whole number, from `KEY_ID=N` items (--key-max-concurrent,
    --key-max-tokens-per-s)."""
    out: dict[str, int] = {}
    for spec in specs:
        key_id, sep, n = spec.partition("=")
        key_id, n = key_id.strip(), n.strip()
        if not sep or not KEY_ID.match(key_id) or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{option} {spec!r}: expected KEY_ID=N with N >= 1")
        out[key_id] = int(n)
    return out


def env_items(name: str) -> list[str]:
    """`;`-separated items of an environment variable."""
    return [c for c in os.environ.get(name, "").split(";") if c.strip()]


def parse_args(argv: Optional[list[str]] = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m frontend", description="OpenAI-compatible HTTP frontend for Triton")
    p.add_argument("--model-dir", required=True, help="checkpoint dir with the tokenizer and chat template")
    p.add_argument("--served-model-name", default=None, help="model name clients use (default: directory name)")
    p.add_argument("--triton-grpc", default=_default("triton_grpc"))
    p.add_argument("--triton-http", default=f"127.0.0.1:{defaults.TRITON_HTTP_PORT}",
                   help="unused: the frontend reaches Triton over gRPC alone (accepted so that existing command "
                        "lines still start)")
    p.add_argument("--otlp-traces-endpoint", default=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                   help="OpenTelemetry traces over OTLP/HTTP to this URL (e.g. http://collector:4318/v1/traces); "
                        "default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else no tracing")
    p.add_argument("--triton-metrics", default=_default("triton_metrics"),
                   help="Triton's Prometheus endpoint host:port, read for vllm:kv_cache_usage_perc (the launcher "
                        "passes it)")
    p.add_argument("--host", default=_default("host"))
    p.add_argument("--port", type=int, default=_default("port"))
    p.add_argument("--max-tokens-cap", type=int, default=_default("max_tokens_cap"))
    p.add_argument("--max-context", type=int, default=_default("max_context"))
    p.add_argument("--max-body-bytes", type=int, default=_default("max_body_bytes"))
    p.add_argument("--api-keys-file", default=os.environ.get("API_KEYS_FILE"),
                   help="file with one API key per line (also: API_KEYS env, comma-separated)")
    p.add_argument("--cache-share-group", action="append", default=[], metavar="NAME=KEY_ID,...",
                   help="these keys share cached prompt prefixes (repeatable; also $CACHE_SHARE_GROUPS, "
                        "';'-separated); every other key has a prefix cache scope of its own")
    p.add_argument("--metrics-keys-file", default=os.environ.get("METRICS_KEYS_FILE"),
                   help="file with the bearer tokens that may read /metrics on the API port when API keys are "
                        "on (also: METRICS_KEYS env); client keys may not")
    p.add_argument("--metrics-port", type=int, default=_default("metrics_port"),
                   help="also serve /metrics, and only it, without a key on this port (for Prometheus; keep it "
                        "off the public network)")
    p.add_argument("--keepalive-timeout", type=float, default=_default("keepalive_timeout"),
                   help="seconds an idle keep-alive connection stays open")
    p.add_argument("--inline-prompt-chars", type=int, default=_default("inline_prompt_chars"),
                   help="prompts without tools of at most this many characters (messages, tool calls, template "
                        "arguments) are templated and tokenized on the event loop, longer ones in a worker "
                        "thread; 0 (default): always in a thread (benchmarks/README.md, TTFT by segment)")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    p.add_argument("--request-timeout", type=float, default=_default("request_timeout"),
                   help="seconds a request may take in all; then its Triton request is cancelled (504)")
    p.add_argument("--shutdown-grace", type=float, default=_default("shutdown_grace"),
                   help="seconds in-flight requests get to finish on SIGTERM before they are cancelled")
    p.add_argument("--write-timeout", type=float, default=_default("write_timeout"),
                   help="seconds a streamed write may wait on a client that stopped reading; then the "
                        "request is cancelled and the connection closed")
    p.add_argument("--log-format", choices=("json", "text"), default=os.environ.get("LOG_FORMAT", _default("log_format")))
    p.add_argument("--reuse-port", action="store_true",
                   help="bind with SO_REUSEPORT, for several worker processes on one port")
    p.add_argument("--ready-file", default=_default("ready_file"), help="file created once the frontend is listening")
    p.add_argument("--decoder-failure-file", default=_default("decoder_failure_file"),
                   help="file written when the decoder fails its work probe while Triton calls it ready "
                        "(the launcher watches it and restarts tritonserver)")
    p.add_argument("--liveness-timeout", type=float, default=_default("liveness_timeout"),
                   help="seconds the decoder may stay down (the launcher restarting it, a GPU engine "
                        "loading) before GET /health/live answers 503 (docs/OPERATIONS.md)")
    p.add_argument("--responses-store", default=None,
                   help="where /v1/responses keeps stored responses: sqlite:PATH (the launcher passes a file in "
                        "its work dir) or postgresql://user@host:port/db for a cluster (no password here: use "
                        f"${RESPONSES_STORE_ENV} or PGPASSWORD); default: ${RESPONSES_STORE_ENV}, else SQLite in "
                        "memory (this process only)")
    p.add_argument("--responses-ttl", type=float, default=_default("responses_ttl"),
                   help="seconds a stored response is kept (OpenAI: 30 days)")
    p.add_argument("--responses-max-bytes", type=int, default=_default("responses_max_bytes"),
                   help="largest stored response (input items + response JSON); a larger one is not stored")
    p.add_argument("--responses-max-per-key", type=int, default=_default("responses_max_per_key"),
                   help="stored responses kept per API key; the oldest go first")
    p.add_argument("--admission-file", default=_default("admission_file"),
                   help="with several workers: the file holding every worker's count of open decoder "
                        "requests, so the 429 gate admits the decoder's capacity across all of them "
                        "(the launcher makes it)")
    p.add_argument("--admission-slot", type=int, default=_default("admission_slot"), help="this worker's counter in --admission-file")
    p.add_argument("--fair-share-wait", type=float, default=None,
                   help="seconds a key below its fair share of a full decoder waits for a place before it "
                        "gets 429 (default: --request-timeout); a key at or over its share gets 429 at once")
    p.add_argument("--key-max-concurrent", action="append", default=[], metavar="KEY_ID=N",
                   help="at most N open requests for this key id (repeatable; also $KEY_MAX_CONCURRENT, "
                        "';'-separated); the next gets 429")
    p.add_argument("--key-max-tokens-per-s", action="append", default=[], metavar="KEY_ID=N",
                   help="at most N prompt + completion tokens per second for this key id, per frontend worker, "
                        "with 10 s of burst (repeatable; also $KEY_MAX_TOKENS_PER_S, ';'-separated); "
                        "over it, 429 until the key's budget refills")
    a = p.parse_args(argv)
    try:
        store = responses_store_url(a.responses_store, os.environ.get(RESPONSES_STORE_ENV))
    except ValueError as e:
        p.error(str(e))
    for name in ("responses_ttl", "responses_max_bytes", "responses_max_per_key"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("request_timeout", "write_timeout", "liveness_timeout", "keepalive_timeout"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if a.inline_prompt_chars < 0:
        p.error("--inline-prompt-chars must be >= 0")
    if a.fair_share_wait is not None and a.fair_share_wait <= 0:
        p.error("--fair-share-wait must be positive")
    try:
        key_caps = parse_key_caps(a.key_max_concurrent + env_items("KEY_MAX_CONCURRENT"))
        key_rates = parse_key_caps(a.key_max_tokens_per_s + env_items("KEY_MAX_TOKENS_PER_S"), "--key-max-tokens-per-s")
    except ValueError as e:
        p.error(str(e))
    if a.shutdown_grace < 0:
        p.error("--shutdown-grace must be >= 0")
    groups = a.cache_share_group + [g for g in os.environ.get("CACHE_SHARE_GROUPS", "").split(";") if g.strip()]
    try:
        api_keys = load_api_keys(os.environ.get("API_KEYS"), a.api_keys_file, parse_share_groups(groups))
        metrics_keys = load_secret_list(os.environ.get("METRICS_KEYS"), a.metrics_keys_file)
    except (OSError, KeysInvalid) as e:
        p.error(str(e))
    return Settings(model_dir=a.model_dir, served_model_name=a.served_model_name or Path(a.model_dir).name,
                    triton_grpc=a.triton_grpc, triton_metrics=a.triton_metrics,
                    otlp_traces_endpoint=a.otlp_traces_endpoint or None,
                    host=a.host, port=a.port,
                    max_tokens_cap=a.max_tokens_cap, max_context=a.max_context, max_body_bytes=a.max_body_bytes,
                    api_keys=api_keys, metrics_keys=metrics_keys, metrics_port=a.metrics_port,
                    keepalive_timeout=a.keepalive_timeout, inline_prompt_chars=a.inline_prompt_chars,
                    cors_origins=tuple(a.cors_origin), request_timeout=a.request_timeout,
                    shutdown_grace=a.shutdown_grace, write_timeout=a.write_timeout, log_format=a.log_format,
                    reuse_port=a.reuse_port, ready_file=a.ready_file,
                    decoder_failure_file=a.decoder_failure_file, liveness_timeout=a.liveness_timeout,
                    responses_store=store, responses_ttl=a.responses_ttl, responses_max_bytes=a.responses_max_bytes,
                    responses_max_per_key=a.responses_max_per_key,
                    admission_file=a.admission_file, admission_slot=a.admission_slot,
                    fair_share_wait=a.fair_share_wait or a.request_timeout, key_max_concurrent=key_caps,
                    key_max_tokens_per_s={k: float(v) for k, v in key_rates.items()})
