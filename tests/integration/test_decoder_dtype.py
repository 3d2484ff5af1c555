"""--dtype through the real stack: the suite's stacks run float32; a bf16 stack serves and repeats seeds."""
from __future__ import annotations

import pytest

from tests.integration.stack import TEST_LIMITS, openai_client_for, start_stack, wait_for


def decoder_line(stack) -> str:
    line = wait_for(lambda: next((ln for ln in stack.log_path.read_text(errors="replace").splitlines()
                                  if "llama-triton CPU decoder: dtype" in ln), None), what="the decoder's dtype line")
    return line


def test_suite_stack_runs_float32(stack):
    if not hasattr(stack, "log_path"):
        pytest.skip("an external stack (LLAMA_TRITON_EXTERNAL_URL) has no log here")
    line = decoder_line(stack)
    assert "dtype float32, 1 torch thread(s)" in line   # tests/conftest.py pins float32
    # the linear layers' kernels reached the served decoder: `auto` timed one per weight shape
    plan = line.split("matmul auto: ", 1)[1]
    assert plan.count("rows)") == 2 * plan.count("x") and {"swapped", "linear"} & set(plan.replace(",", " ").split())


@pytest.fixture(scope="module")
def bf16_stack(default_model_dir, tmp_path_factory):
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("bf16"), *TEST_LIMITS,
                    "--max-num-tokens", "4096", "--dtype", "bfloat16")
    yield s
    s.stop()


def test_bfloat16_stack_serves_and_repeats_seeds(bf16_stack):
    assert "dtype bfloat16, 1 torch thread(s)" in decoder_line(bf16_stack)
    client = openai_client_for(bf16_stack)

    def complete(seed):
        return client.completions.create(model=bf16_stack.model_name, prompt="Once upon a time", max_tokens=12,
                                         temperature=1.0, seed=seed).choices[0].text

    first = complete(11)
    assert first and complete(11) == first
    assert client.completions.create(model=bf16_stack.model_name, prompt="Once upon a time", max_tokens=12,
                                     temperature=0.0).choices[0].text
