"""The TTFT stamp switch (llama_triton/ttft_stamps.py) on the decoder's side, and the benchmark's
segment table (benchmarks/ttft_segments.py) that joins the frontend's stamps with the decoder's."""
from __future__ import annotations

import json

import numpy as np
import pytest

from llama_triton import ttft_stamps
from tests.unit.test_decoder_model import CONFIG, FINAL, RecordingEngine, _fake_pb_utils, _generate


def _model():
    from llama_triton.backend.decoder_model import DecoderModel
    engine = RecordingEngine()
    return DecoderModel(_fake_pb_utils(), CONFIG, engine_factory=lambda params: engine), engine


def _stream_two_tokens(model, engine, rid):
    from llama_triton.engine.types import SequenceOutput
    request = _generate(rid)
    model.execute([request])
    (_, callback), = engine.submitted
    callback(SequenceOutput(rid, 0, [5]))
    callback(SequenceOutput(rid, 0, [6], finished=True, finish_reason="length"))
    model.pump.close()              # sends what is queued, then stops
    return request


def test_switched_off_the_decoder_keeps_no_stamps_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(ttft_stamps, "DIRECTORY", str(tmp_path))    # a directory, but the switch is off
    assert not ttft_stamps.ENABLED
    model, engine = _model()
    try:
        request = _stream_two_tokens(model, engine, "off-1")
        assert model.stamps is None
        assert [flags for _, flags in request.sender.sent] == [0, FINAL]
    finally:
        model.finalize()
    assert list(tmp_path.iterdir()) == []


def test_switched_on_the_decoder_writes_one_ordered_record_at_the_first_response(tmp_path, monkeypatch):
    monkeypatch.setattr(ttft_stamps, "ENABLED", True)
    monkeypatch.setattr(ttft_stamps, "DIRECTORY", str(tmp_path))
    model, engine = _model()
    try:
        request = _stream_two_tokens(model, engine, "on-1")
        # the responses are the ones the unstamped decoder sends
        assert [flags for _, flags in request.sender.sent] == [0, FINAL]
        assert [r.output_tensors[0].value.reshape(-1).tolist() for r, _ in request.sender.sent] == [[5], [6]]
    finally:
        model.finalize()
    files = list(tmp_path.glob("decoder-*.jsonl"))
    assert len(files) == 1
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert len(records) == 1                    # the first response only
    rec = records[0]
    assert rec["rid"] == "on-1"
    assert rec["exec"] <= rec["submitted"] <= rec["first_out"] <= rec["send"] <= rec["sent"]


def _frontend(rid, t0, steps, status=200):
    names = ["first_byte", "body_read", "validated", "render_start", "rendered", "encoded", "on_loop",
             "guide_done", "grpc_start"]
    rec = {"rid": rid, "status": status, "handler": t0}
    t = t0
    for name, step in zip(names, steps):
        t += step
        rec[name] = t
    return rec


def test_segment_table_joins_on_the_request_id_and_its_segments_add_up(monkeypatch):
    from benchmarks.ttft_segments import SEGMENTS, segment_table
    ms = 1_000_000
    frontend, decoder = [], []
    for i, rid in enumerate(("a", "b", "c")):
        f = _frontend(rid, 1000 * ms + i * ms, [0, 1 * ms, 2 * ms, 3 * ms, 1 * ms, 1 * ms, 4 * ms, 0, 2 * ms])
        d = {"rid": rid, "exec": f["grpc_start"] + 5 * ms, "submitted": f["grpc_start"] + 6 * ms}
        d["first_out"] = d["submitted"] + (50 + 10 * i) * ms
        d["send"] = d["first_out"] + 3 * ms
        d["sent"] = d["send"] + 1 * ms
        f["grpc_first"] = d["send"] + 2 * ms
        f["first_write"] = f["grpc_first"] + 1 * ms
        frontend.append(f)
        decoder.append(d)
    frontend.append(_frontend("late", 5000 * ms, [0] * 9))              # after the window
    frontend.append({**_frontend("no-decoder", 1001 * ms, [0] * 9), "grpc_first": 1, "first_write": 2})
    frontend.append({**frontend[0], "rid": "error", "status": 429})
    t = segment_table(frontend, decoder, [(900 * ms, 2000 * ms)])
    assert t["requests"] == 3
    assert t["skipped"] == {"outside window": 1, "incomplete": 2}
    by_name = {s["segment"]: s for s in t["segments"]}
    assert [s["segment"] for s in t["segments"]] == [name for name, *_ in SEGMENTS]
    assert by_name["queue and prefill"]["mean"] == pytest.approx(60.0)
    assert by_name["tokenize"]["mean"] == pytest.approx(1.0)
    # the segments telescope: their means sum to the mean first byte -> first write
    total = sum(s["mean"] for s in t["segments"])
    assert total == pytest.approx(t["server_ttft_ms"]["mean"], abs=0.01)
    expected = np.mean([(f["first_write"] - f["first_byte"]) / ms for f in frontend[:3]])
    assert t["server_ttft_ms"]["mean"] == pytest.approx(expected, abs=0.01)
