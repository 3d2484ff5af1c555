"""A client that goes away cancels its Triton request, and the decoder slot frees at the next step."""
import http.client
import json
import time

import pytest

from tests.integration.conftest import DECODER_MODES
from tests.integration.stack import wait_for

pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)


def idle(stack):
    stats = stack.engine_stats()
    return stats if stats.get("num_running") == 0 and stats.get("num_waiting") == 0 else None


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_frees_the_decoder_slot(stack, stream):
    before = wait_for(lambda: idle(stack))
    body = json.dumps({"model": stack.model_name, "messages": [{"role": "user", "content": "Go on forever"}],
                       "max_tokens": 3000, "stream": stream, "temperature": 1.0, "seed": 1}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    if stream:
        resp = conn.getresponse()
        assert resp.status == 200
        chunks = 0
        while chunks < 4:
            line = resp.fp.readline()
            if line.startswith(b"data: "):
                chunks += 1
    else:
        # Wait until the decoder is generating for this request, then hang up.
        wait_for(lambda: stack.engine_stats().get("num_running", 0) >= 1)
    started = stack.engine_stats()
    assert started["num_running"] >= 1
    t0 = time.monotonic()
    conn.sock.shutdown(2)
    conn.close()
    after = wait_for(lambda: (lambda s: s if s["num_cancelled"] > before["num_cancelled"] and s["num_running"] == 0
                              else None)(stack.engine_stats()))
    print(f"slot freed {time.monotonic() - t0:.3f} s after the disconnect; "
          f"cancel latency {after['last_cancel_latency_steps']:.0f} step(s)")
    assert after["last_cancel_latency_steps"] <= 1
    # It was cancelled, not finished: far fewer tokens than asked were generated.
    assert after["num_generated_tokens"] - before["num_generated_tokens"] < 3000
