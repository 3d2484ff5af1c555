"""A guide compile worker: one process that builds and compiles guides for the frontend, and can be killed.

xgrammar cannot be interrupted, and a pathological schema compiles for minutes; in a thread it
would hold a core (and its pool slot) long after the request gave up. So the frontend compiles in
a small pool of these processes (frontend/openai/compile_pool.py) and kills one whose job passes its
deadline. The worker also keeps xgrammar (and the torch it imports) out of the frontend process.

Protocol: JSON lines. The first line in is the tokenizer payload (grammar.tokenizer_info_payload)
plus `cache_limit_bytes`; the worker answers `{"ready": true}`. Then per job: in
`{"job": <guide_forms job>}`, out `{"progress": <param>}` before each part it compiles (so a
timeout can blame the part at fault), then `{"ok": [guide_type, guide]}` or
`{"error": <message>, "param": <param>}`. Every guide is compiled as the engine compiles what it
is sent (grammar.compile_like_engine), with the engine's xgrammar version, over a TokenizerInfo
built as the engine builds it.

Run as `python -m llama_triton.text.compile_worker`; stdout carries only the protocol.
"""
from __future__ import annotations

import json
import os
import sys

from llama_triton.text.grammar import clean_error, compile_like_engine, tokenizer_info_from_payload
from llama_triton.text.guide_forms import engine_form, plain_form

WHAT = {"json": "JSON grammar", "json_schema": "JSON schema", "regex": "regex", "ebnf_grammar": "EBNF grammar"}


def run_job(compiler, job: dict, say) -> dict:
    param = job["param"]
    try:
        for param, guide_type, guide in job.get("checks", ()):
            say({"progress": param})
            compile_like_engine(compiler, *plain_form(guide_type, guide))
        param = job["param"]
        say({"progress": param})
        guide_type, guide = engine_form(job)
        compile_like_engine(compiler, guide_type, guide)
        return {"ok": [guide_type, guide]}
    except Exception as e:  # noqa: BLE001 - xgrammar's conversion and compile errors
        what = WHAT.get(job.get("guide_type"), "grammar") if param == job["param"] else "JSON schema"
        return {"error": f"invalid {what}: {clean_error(e)}", "param": param}


NICE = 10      # compiles yield the CPU to decoding (the frontend and a CPU decoder share the cores)


def main() -> int:
    try:
        os.nice(NICE)
    except OSError:
        pass
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)           # anything else printed goes to stderr, not into the protocol
    import xgrammar as xgr

    def say(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")

    first = sys.stdin.readline()
    if not first:
        return 0
    setup = json.loads(first)
    info = tokenizer_info_from_payload(setup)
    compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True,
                                   cache_limit_bytes=int(setup.get("cache_limit_bytes", 64 << 20)))
    say({"ready": True})
    for line in sys.stdin:
        say(run_job(compiler, json.loads(line)["job"], say))
    proto.flush()
    os._exit(0)     # stdin closed: the frontend is gone; skip the bindings' leak report at teardown


if __name__ == "__main__":
    sys.exit(main())
