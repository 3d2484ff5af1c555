"""Frontend configuration: everything comes from the command line or the environment, never from a request."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


@dataclass
class Settings:
    model_dir: str
    served_model_name: str
    triton_grpc: str = "127.0.0.1:8001"
    triton_http: str = "127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8080
    max_tokens_cap: int = 16384             # the seed's cap for max_tokens: null
    max_context: Optional[int] = None       # default: the decoder's max_seq_len, else the model's
    max_body_bytes: int = 8 * 1024 * 1024
    api_keys: frozenset[str] = field(default_factory=frozenset)
    cors_origins: tuple[str, ...] = ()
    request_timeout: float = 600.0          # seconds; the Triton request is cancelled after it
    shutdown_grace: float = 30.0            # seconds in-flight requests get on SIGTERM
    write_timeout: float = 30.0             # seconds one SSE write may wait on a client that does not read
    log_format: str = "json"                # json (one object per line) or text
    reuse_port: bool = False                # one of several workers on the same port (SO_REUSEPORT)
    ready_file: Optional[str] = None        # touched once listening (the launcher waits for every worker)
    decoder_failure_file: Optional[str] = None  # where to tell the launcher the decoder is broken
    liveness_timeout: float = 900.0         # /health/live fails once the decoder has been down this long
    admission_file: Optional[str] = None    # the 429 gate's count shared by several workers (frontend/admission.py)
    admission_slot: int = 0                 # this worker's counter in it


def load_api_keys(env_value: Optional[str], keys_file: Optional[str]) -> frozenset[str]:
    keys = {k.strip() for k in (env_value or "").split(",") if k.strip()}
    if keys_file:
        for line in Path(keys_file).read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(line)
    return frozenset(keys)


def parse_args(argv: Optional[list[str]] = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m frontend", description="OpenAI-compatible HTTP frontend for Triton")
    p.add_argument("--model-dir", required=True, help="checkpoint dir with the tokenizer and chat template")
    p.add_argument("--served-model-name", default=None, help="model name clients use (default: directory name)")
    p.add_argument("--triton-grpc", default="127.0.0.1:8001")
    p.add_argument("--triton-http", default="127.0.0.1:8000")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-tokens-cap", type=int, default=16384)
    p.add_argument("--max-context", type=int, default=None)
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--api-keys-file", default=os.environ.get("API_KEYS_FILE"),
                   help="file with one API key per line (also: API_KEYS env, comma-separated)")
    p.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take in all; then its Triton request is cancelled (504)")
    p.add_argument("--shutdown-grace", type=float, default=30.0,
                   help="seconds in-flight requests get to finish on SIGTERM before they are cancelled")
    p.add_argument("--write-timeout", type=float, default=30.0,
                   help="seconds a streamed write may wait on a client that stopped reading; then the "
                        "request is cancelled and the connection closed")
    p.add_argument("--log-format", choices=("json", "text"), default=os.environ.get("LOG_FORMAT", "json"))
    p.add_argument("--reuse-port", action="store_true",
                   help="bind with SO_REUSEPORT, for several worker processes on one port")
    p.add_argument("--ready-file", default=None, help="file created once the frontend is listening")
    p.add_argument("--decoder-failure-file", default=None,
                   help="file written when the decoder fails its work probe while Triton calls it ready "
                        "(the launcher watches it and restarts tritonserver)")
    p.add_argument("--liveness-timeout", type=float, default=900.0,
                   help="seconds the decoder may stay down (the launcher restarting it, a GPU engine "
                        "loading) before GET /health/live answers 503 (docs/OPERATIONS.md)")
    p.add_argument("--admission-file", default=None,
                   help="with several workers: the file holding every worker's count of open decoder "
                        "requests, so the 429 gate admits the decoder's capacity across all of them "
                        "(the launcher makes it)")
    p.add_argument("--admission-slot", type=int, default=0, help="this worker's counter in --admission-file")
    a = p.parse_args(argv)
    for name in ("request_timeout", "write_timeout", "liveness_timeout"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if a.shutdown_grace < 0:
        p.error("--shutdown-grace must be >= 0")
    return Settings(model_dir=a.model_dir, served_model_name=a.served_model_name or Path(a.model_dir).name,
                    triton_grpc=a.triton_grpc, triton_http=a.triton_http, host=a.host, port=a.port,
                    max_tokens_cap=a.max_tokens_cap, max_context=a.max_context, max_body_bytes=a.max_body_bytes,
                    api_keys=load_api_keys(os.environ.get("API_KEYS"), a.api_keys_file),
                    cors_origins=tuple(a.cors_origin), request_timeout=a.request_timeout,
                    shutdown_grace=a.shutdown_grace, write_timeout=a.write_timeout, log_format=a.log_format,
                    reuse_port=a.reuse_port, ready_file=a.ready_file,
                    decoder_failure_file=a.decoder_failure_file, liveness_timeout=a.liveness_timeout,
                    admission_file=a.admission_file, admission_slot=a.admission_slot)
