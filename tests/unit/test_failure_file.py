"""The frontend's callback for a broken decoder (llama_triton/failure_file.py): it writes the report
the launcher's supervisor reads, and a failed write never reaches the frontend's probe task."""
from __future__ import annotations

import logging
import time

from llama_triton.failure_file import failure_report, reporter


def test_the_callback_writes_the_report_the_supervisor_reads(tmp_path):
    path = tmp_path / "decoder-failed"
    report = reporter(str(path))
    report("the decoder cannot generate: CUDA error")
    assert "the decoder cannot generate: CUDA error" in failure_report(path, time.time() - 60)


def test_no_file_means_no_callback():
    assert reporter(None) is None and reporter("") is None


def test_a_failed_write_is_logged_not_raised(tmp_path, caplog):
    report = reporter(str(tmp_path / "no-such-dir" / "decoder-failed"))
    with caplog.at_level(logging.ERROR, logger="llama_triton.failure_file"):
        report("broken")
    assert "could not report the broken decoder to the launcher" in caplog.text
