"""Raw HTTP helpers for the integration tests (the official client covers the happy paths)."""
from __future__ import annotations

import json
import urllib.request


def post_json(base: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None,
              timeout: float = 120):
    """POST a JSON body (or raw bytes); returns (status, decoded JSON body or None, headers)."""
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null"), dict(e.headers)


def post_chat(base: str, body: dict):
    """POST /v1/chat/completions; returns (status, decoded JSON body)."""
    status, decoded, _ = post_json(base, "/v1/chat/completions", body)
    return status, decoded
