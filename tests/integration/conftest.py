import json
import os
import urllib.request

import pytest

from tests.integration.cluster_fixtures import cluster  # noqa: F401  (the cluster tests' session cluster)
from tests.integration.stack import TEST_LIMITS, openai_client_for, start_stack


class ExternalStack:
    """A stack someone else started (e.g. the GPU smoke script inside the NGC image)."""

    def __init__(self, base_url: str, grpc_url: str):
        self.base_url = base_url.rstrip("/")
        self.grpc_url = grpc_url
        with urllib.request.urlopen(f"{self.base_url}/v1/models", timeout=30) as r:
            self.model_name = json.loads(r.read())["data"][0]["id"]
        self.port = int(self.base_url.rsplit(":", 1)[1])

    def engine_stats(self):
        pytest.skip("engine counters are the CPU reference decoder's; not available on an external stack")

    def stop(self):
        pass


@pytest.fixture(scope="session")
def stack(default_model_dir, tmp_path_factory):
    """The real stack on the default model, with a low max_tokens cap as CI budgets require.

    LLAMA_TRITON_EXTERNAL_URL / LLAMA_TRITON_EXTERNAL_GRPC point the suite at a running stack
    instead (docs/GPU.md).
    """
    external = os.environ.get("LLAMA_TRITON_EXTERNAL_URL")
    if external:
        yield ExternalStack(external, os.environ.get("LLAMA_TRITON_EXTERNAL_GRPC", "127.0.0.1:8001"))
        return
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("stack"),
                    *TEST_LIMITS, "--max-num-tokens", "32768")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def openai_client(stack):
    return openai_client_for(stack, os.environ.get("LLAMA_TRITON_API_KEY", "unused"))
