"""build/gpu_smoke.sh's LLM-API section: its dry run lists the steps and every issue 23 probe
(build/llmapi_probes.py), and the probes' registry is separate from the engine path's."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ISSUE_23_PROBES = {"llmapi_config", "llmapi_streamed_chat", "llmapi_tools", "llmapi_json_schema", "llmapi_min_p",
                   "llmapi_top_logprobs", "llmapi_cancel", "llmapi_queue_full_429"}


def dry_run(**env):
    run = subprocess.run(["bash", str(ROOT / "build" / "gpu_smoke.sh"), "--dry-run"], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PY=sys.executable, **env))
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_the_dry_run_lists_the_llmapi_steps_and_probes():
    out = dry_run()
    assert "step llmapi render: llama-triton serve --decoder-io llmapi --llm-api tensorrt_llm" in out
    assert "--dry-run (model.yaml, no engine)" in out and "step llmapi probes:" in out
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("probe ")]
    assert ISSUE_23_PROBES <= set(listed) and len(listed) == len(set(listed))
    assert not any(p.startswith("llmapi_") for p in [
        line.split()[1] for line in dry_run(SKIP_LLMAPI="1").splitlines() if line.startswith("probe ")])


def test_the_engine_paths_probes_do_not_include_these():
    engine = subprocess.run([sys.executable, str(ROOT / "build" / "gpu_probes.py"), "list"], capture_output=True,
                            text=True, timeout=60, check=True).stdout
    assert not any(f"probe {name} " in engine for name in ISSUE_23_PROBES)
