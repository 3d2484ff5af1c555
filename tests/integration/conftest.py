import pytest

from tests.integration.stack import start_stack


@pytest.fixture(scope="session")
def stack(default_model_dir, tmp_path_factory):
    """The real stack on the default model, with a low max_tokens cap as CI budgets require."""
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("stack"),
                    "--max-tokens-cap", "48", "--max-seq-len", "1024", "--max-num-tokens", "32768")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def openai_client(stack):
    import openai
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
