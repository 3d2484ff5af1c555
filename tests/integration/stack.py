"""Starts the real stack (tritonserver + frontend, through the launcher) for integration tests."""
from __future__ import annotations

import time
from pathlib import Path

from tests.served_stack import ServedStack, start_served_stack

ROOT = Path(__file__).resolve().parents[2]
# The suite's stacks serve with low caps (CI budgets: short completions, small contexts).
TEST_LIMITS = ("--max-tokens-cap", "48", "--max-seq-len", "1024")


def openai_client_for(stack, api_key: str = "unused"):
    """The official client on a stack's OpenAI API, with no retries hiding a failure."""
    import openai
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=api_key, max_retries=0, timeout=120)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.02, what: str = "condition"):
    """Polls `predicate` until it returns something truthy; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def start_stack(model_dir: str, work_dir: Path, *extra: str, frontend_args: tuple[str, ...] = (),
                timeout: float = 300.0, env: dict | None = None) -> ServedStack:
    return start_served_stack(model_dir, work_dir, *extra, frontend_args=frontend_args, timeout=timeout,
                              env=env, cwd=ROOT)
