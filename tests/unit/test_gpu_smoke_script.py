"""build/gpu_smoke.sh cannot run without a GPU; CI checks what it can: its syntax, and that its
dry run lists the steps for the targeted release and every probe of issues 11 and 22."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "build" / "gpu_smoke.sh"
ISSUE_22_PROBES = ("served_config_contract", "requested_outputs", "streamed_chat", "tools", "nullable_schema",
                   "reasoning_guide", "cached_tokens_within_prompt", "queue_full_429_pp")


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_dry_run_lists_the_steps_and_every_probe():
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PY=sys.executable, PP="2"))
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "TensorRT-LLM v1.2.1" in out and "nvcr.io/nvidia/tritonserver:26.07-trtllm-python-py3" in out
    assert "--branch v1.2.1" in out and "--pp 2" in out
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("probe ")]
    assert set(ISSUE_22_PROBES) <= set(listed), listed
    assert {"refusals", "guided_direct", "n2_differ", "streamed_logprobs", "perf_metrics"} <= set(listed)
    assert len(listed) == len(set(listed))
