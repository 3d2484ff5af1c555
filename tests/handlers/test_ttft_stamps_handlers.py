"""The frontend's TTFT stamps (frontend/telemetry/ttft_stamps.py, benchmark switch LLAMA_TRITON_TTFT_STAMPS)
through the real app: one record per request, in the order its phases run, keyed by the decoder
request id the decoder's own record carries; nothing at all while the switch is off."""
from __future__ import annotations

import json

from frontend.telemetry import ttft_stamps as frontend_stamps
from llama_triton import ttft_stamps
from tests.handlers.conftest import Harness

ORDER = ["handler", "body_read", "validated", "render_start", "rendered", "encoded", "on_loop", "guide_done",
         "first_write"]


def test_a_streamed_request_leaves_its_time_points_in_order(default_model_dir, default_tokenizer, tmp_path,
                                                            monkeypatch):
    monkeypatch.setattr(frontend_stamps, "ENABLED", True)
    monkeypatch.setattr(ttft_stamps, "DIRECTORY", str(tmp_path))
    h = Harness(default_model_dir, default_tokenizer)
    try:
        h.decoder.says("Hello world")
        status, _, events = h.chat({"stream": True})
        assert status == 200 and events[-1] == "[DONE]"
        rid = h.decoder.requests[0][0]
    finally:
        h.close()
    files = list(tmp_path.glob("frontend-*.jsonl"))
    assert len(files) == 1
    rec, = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert rec["rid"] == rid and rec["status"] == 200
    points = [rec[name] for name in ORDER]
    assert points == sorted(points)
    # The gRPC stamps belong to the Triton client, which this harness replaces by a scripted decoder.
    assert "grpc_start" not in rec


def test_switched_off_no_record_is_written(harness: Harness, tmp_path, monkeypatch):
    monkeypatch.setattr(ttft_stamps, "DIRECTORY", str(tmp_path))
    assert not frontend_stamps.ENABLED
    harness.decoder.says("Hello world")
    status, _, _ = harness.chat({"stream": True})
    assert status == 200
    assert list(tmp_path.iterdir()) == []
