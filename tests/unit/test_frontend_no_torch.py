"""A frontend worker does not load torch: it imports the app, loads the tokenizer, builds the
application and prepares an ordinary chat request, all without torch or the CPU engine's model code.
(Guided requests do not load it either: xgrammar, which imports torch, runs only in the guide
compile worker processes, frontend/openai/compile_pool.py.)

Runs in a fresh interpreter: this test process itself has torch loaded by other tests.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

WORKER = """
import json, sys
import frontend.http.app                 # what `python -m frontend` (one worker) imports, via frontend/__main__.py
from frontend.http import SERVICE, create_app
from frontend.settings import parse_args
from frontend.openai.chat_prompt import render_prompt

app = create_app(parse_args(["--model-dir", sys.argv[1]]))
service = app[SERVICE]
prompt = render_prompt(service.tokenizer, [{"role": "user", "content": "hi"}])
print(json.dumps({"prompt_tokens": len(service.tokenizer.encode(prompt)),
                  "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "engine": sorted(m for m in sys.modules if m in ("llama_triton.engine.engine",
                                                                   "llama_triton.llama"))}))
"""


def test_frontend_worker_never_imports_torch(default_model_dir: Path):
    out = subprocess.run([sys.executable, "-c", WORKER, str(default_model_dir)], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["prompt_tokens"] > 3                  # the tokenizer and the chat template really ran
    assert seen["torch"] == [], f"a frontend worker loaded torch: {seen['torch'][:5]}"
    assert seen["engine"] == []
