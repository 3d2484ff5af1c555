"""The one error envelope of the frontend: `{"error": {"message", "type", "param", "code"}}`.

Every failure a client can see goes through `APIError`: handlers raise it, one middleware turns it
into a JSON response with `status` and `headers`, and a stream that has already started sends
`sse_error_event(err)` followed by `data: [DONE]`.

`type` follows OpenAI's vocabulary (clients key retries on the HTTP status, humans on `type`);
`code` is a short machine-readable string or null; `param` names the offending request field with
the path syntax of `protocol.validation_error_to_envelope` (`messages[2].content`, `stop[3]`).
"""
from __future__ import annotations

from typing import Optional

import orjson

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


def unauthorized(message: str = "Missing or invalid API key: send 'Authorization: Bearer <key>'.") -> APIError:
    return APIError(401, message, AUTHENTICATION, None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def not_found_model(name: str) -> APIError:
    return APIError(404, f"The model '{name}' does not exist.", NOT_FOUND, "model", "model_not_found")


def not_found(path: str) -> APIError:
    return APIError(404, f"Unknown path: {path}", NOT_FOUND, None, "not_found")


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {method} is not allowed on {path}.", INVALID_REQUEST, None, "method_not_allowed")


def payload_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than the limit of {limit} bytes.", INVALID_REQUEST, None,
                    "payload_too_large")


def queue_full(retry_after: float) -> APIError:
    seconds = max(1, int(round(retry_after)))
    return APIError(429, "The server is at capacity; retry later.", RATE_LIMIT, None, "queue_full",
                    {"Retry-After": str(seconds)})


def not_ready(message: str = "The model is not ready yet; retry later.") -> APIError:
    return APIError(503, message, SERVER, None, "not_ready", {"Retry-After": "1"})


def internal(message: str = "Internal server error.") -> APIError:
    return APIError(500, message, SERVER, None, "internal_error")


def as_api_error(exc: BaseException) -> APIError:
    """`exc` itself when it is an APIError, else a generic 500 (callers log the original)."""
    return exc if isinstance(exc, APIError) else internal()


def sse_error_event(err: BaseException) -> bytes:
    """One SSE event carrying the envelope; the caller sends `data: [DONE]\\n\\n` after it."""
    return b"data: " + as_api_error(err).to_json() + b"\n\n"
