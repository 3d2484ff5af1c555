"""OpenTelemetry across the stack: a stack serving with --otlp-traces-endpoint exports the
frontend's spans and Triton's own (its OpenTelemetry trace mode) to a local OTLP/HTTP receiver,
in the client's trace. This module starts its own stack: tracing changes what every request of
a stack does (spans, exports), which the shared stacks must not."""
from __future__ import annotations

import json
import os
import urllib.request

import pytest

from tests.integration.stack import TEST_LIMITS, start_stack, wait_for
from tests.otlp_receiver import OTLPReceiver

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def traced_stack(default_model_dir, tmp_path_factory):
    if os.environ.get("LLAMA_TRITON_EXTERNAL_URL"):
        pytest.skip("starts a stack of its own; the suite targets an external stack")
    receiver = OTLPReceiver().start()
    stack = start_stack(str(default_model_dir), tmp_path_factory.mktemp("traced"), *TEST_LIMITS,
                        "--otlp-traces-endpoint", receiver.url)
    yield stack, receiver
    stack.stop()
    receiver.stop()


def test_one_trace_from_the_client_through_triton(traced_stack):
    stack, receiver = traced_stack
    req = urllib.request.Request(
        f"{stack.base_url}/v1/chat/completions",
        data=json.dumps({"model": stack.model_name, "messages": [{"role": "user", "content": "Hi"}],
                         "max_tokens": 3}).encode(),
        headers={"Content-Type": "application/json", "traceparent": f"00-{TRACE_ID}-{PARENT}-01"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200

    def complete():
        spans = receiver.trace(TRACE_ID)
        names = {(s.service, s.name) for s in spans}
        frontend = {"POST /v1/chat/completions", "validate", "template", "decode", "queue"}
        ok = frontend <= {n for svc, n in names if svc == "llama-triton-frontend"} and \
            any(svc == "llama-triton-tritonserver" for svc, _ in names)
        return spans if ok else None

    spans = wait_for(complete, timeout=60, interval=0.5, what="frontend and Triton spans in one trace")
    by_name = {s.name: s for s in spans if s.service == "llama-triton-frontend"}
    root = by_name["POST /v1/chat/completions"]
    assert root.parent_id == PARENT                          # the client's context, continued
    decode = by_name["decode"]
    triton = [s for s in spans if s.service == "llama-triton-tritonserver"]
    top = [s for s in triton if s.parent_id == decode.span_id]
    assert top, f"no Triton span under the frontend's decode span: {triton}"
    assert {s.name for s in triton} >= {"InferRequest"}
