"""The one error envelope of the frontend: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can see goes through `APIError`: handlers raise it, one middleware turns it
into a JSON response with `status` and `headers`, and a stream that has already started sends
`sse_error_event(err)` followed by `data: [DONE]`.

`type` follows OpenAI's vocabulary (clients key retries on the HTTP status, humans on `type`);
`code` is a short machine-readable string or null; `param` names the offending request field with
the path syntax of `validation_error_to_envelope` (below) (`messages[2].content`, `stop[3]`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import orjson
from pydantic import BaseModel, ValidationError

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"


class APIError(Exception):
    """An error with its HTTP status and its envelope fields; `headers` go on the HTTP response."""

    def __init__(self, status: int, message: str, type: str = INVALID_REQUEST, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def to_json(self) -> bytes:
        return orjson.dumps(self.body())

    def __repr__(self) -> str:
        return (f"APIError({self.status}, {self.message!r}, type={self.type!r}, param={self.param!r}, "
                f"code={self.code!r})")


def error_body(message: str, type: str = INVALID_REQUEST, param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> APIError:
    return APIError(400, message, INVALID_REQUEST, param, code)


def unsupported(param: str, message: str) -> APIError:
    """A field or value that is valid OpenAI but that this deployment cannot honour."""
    return APIError(400, message, INVALID_REQUEST, param, "unsupported_parameter")


def context_length_exceeded(prompt_tokens: int, limit: int, param: str = "messages") -> APIError:
    return APIError(400, f"This model's maximum context length is {limit} tokens, but the prompt has "
                         f"{prompt_tokens} tokens. Shorten the prompt.",
                    INVALID_REQUEST, param, "context_length_exceeded")


def bounded(text: str, limit: int = 64) -> str:
    """A client-chosen string (a model name, a path, a field name) as an error message or a log line
    may echo it: at most `limit` characters, and the length it had."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def forbidden(message: str, code: str) -> APIError:
    return APIError(403, message, "permission_error", None, code)


def text_exceeds_context(chars: int, limit: int, most: int, param: str = "messages") -> APIError:
    return APIError(400, f"This model's maximum context length is {limit} tokens, and the {param} hold {chars} "
                         f"characters: more than any prompt of {limit} tokens can (at most {most}). Shorten the "
                         f"{param}.", INVALID_REQUEST, param, "context_length_exceeded")


def unauthorized(message: str = "Missing or invalid API key: send 'Authorization: Bearer <key>'.") -> APIError:
    return APIError(401, message, AUTHENTICATION, None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def not_found_model(name: str) -> APIError:
    return APIError(404, f"The model '{bounded(name)}' does not exist.", NOT_FOUND, "model", "model_not_found")


def not_found(path: str) -> APIError:
    return APIError(404, f"Unknown path: {bounded(path)}", NOT_FOUND, None, "not_found")


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {bounded(method, 16)} is not allowed on {bounded(path)}.", INVALID_REQUEST, None,
                    "method_not_allowed")


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than the limit of {limit} bytes.", INVALID_REQUEST, None,
                    "payload_too_large")


def queue_full(retry_after: float, why: str = "") -> APIError:
    seconds = max(1, int(round(retry_after)))
    message = f"The server is busy: {why}; retry later." if why else "The server is at capacity; retry later."
    return APIError(429, message, RATE_LIMIT, None, "queue_full",
                    {"Retry-After": str(seconds)})


def internal(message: str = "Internal server error.") -> APIError:
    return APIError(500, message, SERVER, None, "internal_error")


def as_api_error(exc: BaseException) -> APIError:
    """`exc` itself when it is an APIError, else a generic 500 (callers log the original)."""
    return exc if isinstance(exc, APIError) else internal()


def sse_error_event(err: BaseException) -> bytes:
    """One SSE event carrying the envelope; the caller sends `data: [DONE]\\n\\n` after it."""
    return b"data: " + as_api_error(err).to_json() + b"\n\n"


class ParamError(ValueError):
    """A validation failure that names its parameter.

    `param` is relative to where the validator runs: a model validator of the request gives
    `"top_logprobs"`, one of a message gives `"content"` (the formatter prefixes `messages[i]`), a
    field validator of `stop` gives `"[3]"` (-> `stop[3]`) or None (-> `stop`).
    """

    def __init__(self, message: str, param: Optional[str] = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


# ----------------------------------------------------------------------------------------------------
# Validation errors -> the error envelope

class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def _join(path: str, part: Union[str, int]) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


def _param_path(loc: Sequence[Union[str, int]]) -> str:
    """('messages', 0, '<user>', 'content', '<array>', 1) -> 'messages[0].content[1]'."""
    path = ""
    for part in loc:
        if isinstance(part, str) and (part.startswith("<") or part == "[key]"):
            continue  # union tags and pydantic's dict-key marker
        path = _join(path, part)
    return path


def _shown(value: Any) -> str:
    """A short JSON rendering of a scalar input for error messages; "" for anything else."""
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value[:60] + ("..." if len(value) > 60 else "")).decode()
    return ""


_COMPARISONS = {"greater_than": ("gt", "greater than"), "greater_than_equal": ("ge", "at least"),
                "less_than": ("lt", "less than"), "less_than_equal": ("le", "at most")}
_TAG_ERRORS = {"invalid_role": "role", "invalid_part_type": "type", "invalid_response_format": "type"}


def _describe(err: dict) -> tuple[Optional[str], str, str]:
    """One pydantic error -> (param, message, code)."""
    kind = err["type"]
    loc = err.get("loc", ())
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, ParamError):
        param = _param_path(loc)
        if cause.param:
            param = _join(param, cause.param)
        return param or None, cause.message, cause.code
    if kind == "json_invalid":
        return None, f"The request body is not valid JSON: {err.get('ctx', {}).get('error', err['msg'])}.", \
            "invalid_json"
    param = _param_path(loc)
    if not param:
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return None, "The request body must be a JSON object.", "invalid_type"
        return None, err["msg"], "invalid_value"
    if kind == "missing":
        return param, f"Missing required parameter: '{param}'.", "missing_required_parameter"
    value = err.get("input")
    if kind in _TAG_ERRORS:
        field = _TAG_ERRORS[kind]
        param = _join(param, field)
        value = value.get(field) if isinstance(value, dict) else None
    if loc and loc[-1] == "[key]":
        return param, f"Invalid '{param}': keys must be token ids (non-negative integers), got {_shown(loc[-2])}.", \
            "invalid_value"
    ctx = err.get("ctx") or {}
    if kind in _COMPARISONS and _COMPARISONS[kind][0] in ctx:
        key, phrase = _COMPARISONS[kind]
        limit = ctx[key]
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        msg = f"must be {phrase} {limit!r}"  # pydantic's own text prints 2**64 as a float
    else:
        msg = err["msg"].replace(" after validation", "")
        msg = msg[0].lower() + msg[1:] if msg[:1].isupper() and msg[1:2].islower() else msg
    shown = _shown(value)
    got = f" (got {shown})" if shown and value is not None else ""
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) and kind not in _TAG_ERRORS else "invalid_value"
    return param, f"Invalid '{param}': {msg}{got}.", code


def validation_error_to_envelope(exc: ValidationError) -> ErrorBody:
    """The first problem of `exc` as an `invalid_request_error` whose `param` is the field's path."""
    errors = exc.errors(include_url=False)
    param, message, code = _describe(errors[0])
    others = {(_describe(e)[0]) for e in errors[1:]} - {param}
    if others:
        message = message.rstrip(".") + f"; also invalid: {', '.join(sorted(p or '<body>' for p in others)[:5])}" \
            + (", ..." if len(others) > 5 else "") + "."
    return ErrorBody(message=message, type="invalid_request_error", param=param, code=code)


def validation_error_to_api_error(exc: ValidationError) -> APIError:
    body = validation_error_to_envelope(exc)
    return APIError(400, body.message, body.type, body.param, body.code)
