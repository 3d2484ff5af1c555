"""X-Request-Id from the client: bounded, sanitised, echoed and logged; never the Triton request id
or the completion id, which stay server-made and unique."""
from __future__ import annotations

import logging

import orjson

from tests.handlers.conftest import Harness


def post_with_id(h: Harness, path: str, body: dict, rid: str):
    async def go():
        resp = await h.client.post(path, data=orjson.dumps(body),
                                   headers={"Content-Type": "application/json", "X-Request-Id": rid})
        return resp.status, resp.headers.get("X-Request-Id"), await resp.read()
    return h.loop.run_until_complete(go())


def test_client_request_id_is_echoed_and_logged_but_never_the_triton_id(harness: Harness, caplog):
    harness.decoder.says("Hello")
    body = {"model": harness.model, "messages": [{"role": "user", "content": "Hi"}]}
    with caplog.at_level(logging.INFO, logger="frontend.access"):
        a = post_with_id(harness, "/v1/chat/completions", body, "trace-42")
        b = post_with_id(harness, "/v1/chat/completions", body, "trace-42")
    assert a[1] == b[1] == "trace-42"
    ids = [rid for rid, _ in harness.decoder.requests]
    assert len(set(ids)) == 2 and "trace-42" not in ids            # two requests, two Triton ids
    assert [orjson.loads(x[2])["id"] for x in (a, b)] == ids       # the completion id is Triton's
    access = [r for r in caplog.records if r.name == "frontend.access"]
    assert [r.fields["client_request_id"] for r in access] == ["trace-42", "trace-42"]
    assert [r.fields["request_id"] for r in access] == ids


def test_client_request_id_is_bounded_and_sanitised(harness: Harness):
    harness.decoder.says("Hello")
    body = {"model": harness.model, "input": "Hi"}
    status, echoed, _ = post_with_id(harness, "/v1/responses", body, 'x"y z{}' + "a" * 500)
    assert status == 200
    assert echoed == "x_y_z__" + "a" * 121 and len(echoed) == 128
    status, echoed, raw = post_with_id(harness, "/v1/responses", body, "   ")
    assert echoed == orjson.loads(raw)["id"]                        # nothing usable: the service's id
