"""Request-scoped context and structured (JSON lines) logging of the frontend.

`RequestContext` is one HTTP request's record: its id (the service's `chatcmpl-...`/`cmpl-...`,
which is also the request id sent to Triton), route, hashed user, token counts and outcome. The
outermost middleware (frontend/http/middleware.py) creates it and puts it in the `current_request`
context variable; frontend/decoder/triton_client.py fills in the Triton request id and token counts;
the middleware logs one access line per request from it and sends the id back as `X-Request-Id`.

Logs are JSON lines by default (`--log-format text` for humans). Every record carries the
request id of the request it was logged under. Secrets stay out of logs: API keys are never
passed to a logger, and as a second line of defence `RedactSecrets` replaces any configured key
(and any `Bearer <token>`) that would still reach a record; keys appear only as their ids. `user` is
only ever logged and exported as a keyed hash (`hash_user`: HMAC-SHA-256 with the replica's secret,
so a label cannot be matched against a list of guessed users). Client-chosen names that reach a log
line (unknown fields, say) are cut to `errors.bounded`.
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Optional, Union

import orjson

from frontend.tenancy import Tenant

USER_HASH_CHARS = 16


def hash_user(user: Optional[str], secret: bytes) -> Optional[str]:
    """The first 16 hex digits of HMAC-SHA-256(secret, user): stable per replica, and without the
    secret not even a guessed `user` can be confirmed."""
    if user is None:
        return None
    return hmac.new(secret, user.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:USER_HASH_CHARS]


CLIENT_REQUEST_ID_MAX = 128
_CLIENT_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:/@+=-]")


def client_request_id(header: Optional[str]) -> Optional[str]:
    """A client's X-Request-Id as the service keeps it: at most 128 characters of
    `[A-Za-z0-9._:/@+=-]` (anything else becomes `_`), so it cannot forge log fields or header
    values. It is echoed and logged, never used as the Triton request id or the completion id."""
    if not header:
        return None
    value = _CLIENT_ID_UNSAFE.sub("_", header.strip()[:CLIENT_REQUEST_ID_MAX])
    return value or None


def new_request_id() -> str:
    """An id for requests that fail before the service names them (bad JSON, 401, 404 ...)."""
    return f"req-{uuid.uuid4().hex}"


@dataclass(eq=False)   # identity semantics: contexts live in sets
class RequestContext:
    method: str
    path: str
    route: str = "unmatched"
    started: float = field(default_factory=time.perf_counter)
    request_id: Optional[str] = None           # the service's id once known (also Triton's)
    triton_request_id: Optional[str] = None    # set by TritonDecoder.generate
    client_request_id: Optional[str] = None    # the client's X-Request-Id, sanitised (client_request_id())
    user_hash: Optional[str] = None
    tenant: Optional[Tenant] = None            # set by the auth middleware: the key's id and cache scope
    stream: bool = False
    status: Optional[int] = None
    outcome: str = "ok"                        # ok, error, timeout, client_disconnect, slow_client, shutdown
    error_code: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0                     # prompt tokens served from the prefix cache (usage's)
    finish_reasons: Optional[list] = None      # each choice's, once the decoder finished (service.events)
    ttft: Optional[float] = None
    cancel_reason: Optional[str] = None        # why the frontend itself cancelled the handler task
    done: bool = False
    task: Optional[asyncio.Task] = field(default=None, repr=False)
    tracer: Optional[object] = field(default=None, repr=False)          # set while tracing is on (tracing.py)
    trace_headers: Optional[dict] = field(default=None, repr=False)     # traceparent for Triton's request
    stamps: Optional[dict] = field(default=None, repr=False)    # TTFT time points, benchmark switch (ttft_stamps.py)

    @property
    def id(self) -> str:
        if self.request_id is None:
            self.request_id = self.triton_request_id or new_request_id()
        return self.request_id

    def cancel(self, reason: str) -> bool:
        """Cancels the handler task, remembering why (timeout, shutdown); once, and not after it ended."""
        if self.done or self.cancel_reason is not None or self.task is None or self.task.done():
            return False
        self.cancel_reason = reason
        self.task.cancel(msg=f"llama-triton: {reason}")
        return True

    def access_fields(self) -> dict:
        out = {"request_id": self.id, "method": self.method, "route": self.route, "status": self.status,
               "latency_ms": round((time.perf_counter() - self.started) * 1000, 2), "outcome": self.outcome}
        if self.tenant is not None:
            out["key_id"] = self.tenant.key_id
        if self.client_request_id is not None:
            out["client_request_id"] = self.client_request_id
        if self.user_hash is not None:
            out["user"] = self.user_hash
        if self.stream:
            out["stream"] = True
        if self.error_code:
            out["error_code"] = self.error_code
        if self.prompt_tokens or self.completion_tokens:
            out["prompt_tokens"] = self.prompt_tokens
            out["completion_tokens"] = self.completion_tokens
        if self.ttft is not None:
            out["ttft_ms"] = round(self.ttft * 1000, 2)
        return out


current_request: contextvars.ContextVar[Optional[RequestContext]] = contextvars.ContextVar(
    "llama_triton_request", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_request.get()
        if not hasattr(record, "request_id"):
            record.request_id = (ctx.request_id or ctx.triton_request_id) if ctx is not None else None
        if not hasattr(record, "client_request_id"):
            record.client_request_id = ctx.client_request_id if ctx is not None else None
        return True


class RedactSecrets(logging.Filter):
    """Replaces configured secrets and bearer tokens in a record's final message (and exception text)."""

    BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",;]+")

    def __init__(self, secrets: Union[Iterable[str], Callable[[], Iterable[str]]] = ()):
        super().__init__()
        # A callable is asked on every record: keys reloaded later are redacted too.
        self._source = secrets if callable(secrets) else None
        self._seen = None
        self.secrets = [] if callable(secrets) else self._sorted(secrets)

    @staticmethod
    def _sorted(secrets: Iterable[str]) -> list[str]:
        return sorted({s for s in secrets if s}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        if self._source is not None:
            current = self._source()
            if current is not self._seen:
                self._seen, self.secrets = current, self._sorted(current)
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return self.BEARER.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = self._scrub(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, pid, msg, request_id, plus a record's `fields`.

    `pid` tells the lines of several frontend workers (--frontend-workers) apart.
    """

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "pid": record.process, "msg": record.getMessage()}
        rid = getattr(record, "request_id", None)
        if rid:
            out["request_id"] = rid
        client_rid = getattr(record, "client_request_id", None)
        if client_rid:
            out["client_request_id"] = client_rid
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for k, v in fields.items():
                out.setdefault(k, v)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure(fmt: str = "json", level: int = logging.INFO,
              secrets: Union[Iterable[str], Callable[[], Iterable[str]]] = (), stream=None) -> None:
    """Root logging for the frontend process (idempotent: replaces earlier handlers)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
