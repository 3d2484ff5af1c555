"""The launcher does not load torch: its command line, the checks before anything starts (the
checkpoint's files among them, llama_triton/llama/checkpoint.py) and its supervisor import without
torch or the model code, now that llama_triton.llama and .engine export nothing lazily.

Runs in a fresh interpreter: this test process itself has torch loaded by other tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LAUNCHER = """
import json, sys
from llama_triton.llama.checkpoint import inspect_checkpoint
from llama_triton.serve.launcher import build_parser
from llama_triton.serve.supervisor import Supervisor

args = build_parser().parse_args(["serve", "--model-dir", sys.argv[1]])
Supervisor(args)
inspect_checkpoint(args.model_dir)      # the launcher's check of the checkpoint's files
print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "model": sorted(m for m in sys.modules if m.startswith(("llama_triton.engine.",
                                                                           "llama_triton.llama.model")))}))
"""


def test_the_launcher_never_imports_torch(default_model_dir: Path):
    out = subprocess.run([sys.executable, "-c", LAUNCHER, str(default_model_dir)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["torch"] == [], f"the launcher loaded torch: {seen['torch'][:5]}"
    assert seen["model"] == []
