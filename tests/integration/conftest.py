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
        # Which decoder mode's runs it serves: gpu (the C++ backend) or llmapi (the LLM API).
        self.decoder_io = os.environ.get("LLAMA_TRITON_EXTERNAL_DECODER", "gpu")

    def engine_stats(self):
        pytest.skip("engine counters are the CPU reference decoder's; not available on an external stack")

    def stop(self):
        pass


# The decoder modes the frontend's suites run against (issue 11): the CPU reference decoder, the
# same decoder rendered with TensorRT-LLM's tensor list, where it behaves like the C++ backend
# (llama_triton/backend/trtllm_emulation.py), and (issue 23) the LLM-API decoder: the adapter for
# TensorRT-LLM's LLM (llama_triton/backend/llmapi_engine.py) over its CPU stand-in. A module opts in with
#     pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)
# and its tests then run once per mode, each mode's stack shared by the whole session.
DECODER_MODES = ("cpu", "gpu", "llmapi")
# The GPU-mode and LLM-API stacks' decoders hold 8 running sequences and 8 queued requests, small
# enough for the overload test to fill them with a handful of requests.
SMALL_DECODER_LIMITS = ("--max-batch-size", "8", "--max-queue-size", "8")
GPU_MODE_LIMITS = ("--decoder-io", "gpu", *SMALL_DECODER_LIMITS)
LLMAPI_MODE_LIMITS = ("--decoder-io", "llmapi", *SMALL_DECODER_LIMITS)


def _external():
    url = os.environ.get("LLAMA_TRITON_EXTERNAL_URL")
    return ExternalStack(url, os.environ.get("LLAMA_TRITON_EXTERNAL_GRPC", "127.0.0.1:8001")) if url else None


@pytest.fixture(scope="session")
def cpu_stack(default_model_dir, tmp_path_factory):
    """The real stack on the default model, with a low max_tokens cap as CI budgets require.

    LLAMA_TRITON_EXTERNAL_URL / LLAMA_TRITON_EXTERNAL_GRPC point the suite at a running stack
    instead (docs/GPU.md).
    """
    external = _external()
    if external:
        yield external
        return
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("stack"),
                    *TEST_LIMITS, "--max-num-tokens", "32768")
    s.decoder_io = "cpu"
    yield s
    s.stop()


@pytest.fixture(scope="session")
def gpu_stack(default_model_dir, tmp_path_factory):
    """The CPU decoder in GPU mode: TensorRT-LLM's tensors, defaults, responses and errors."""
    external = _external()
    if external:
        yield external          # a real GPU deployment (build/gpu_smoke.sh)
        return
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("gpu-stack"),
                    *TEST_LIMITS, *GPU_MODE_LIMITS, "--max-num-tokens", "32768")
    s.decoder_io = "gpu"
    yield s
    s.stop()


@pytest.fixture(scope="session")
def llmapi_stack(default_model_dir, tmp_path_factory):
    """The LLM-API decoder (TensorRT-LLM's LLM shape) with its CPU stand-in behind it."""
    external = _external()
    if external:
        yield external          # a real GPU deployment of the LLM API (build/gpu_smoke.sh)
        return
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("llmapi-stack"),
                    *TEST_LIMITS, *LLMAPI_MODE_LIMITS, "--max-num-tokens", "32768")
    s.decoder_io = "llmapi"
    yield s
    s.stop()


@pytest.fixture(scope="module")
def stack(request):
    """The CPU stack, or the stack of the decoder mode a module is parametrized with."""
    mode = getattr(request, "param", "cpu")
    external = _external() if hasattr(request, "param") else None
    if external is not None and mode != external.decoder_io:
        pytest.skip(f"the external stack is a {external.decoder_io} deployment: its runs are the "
                    f"[{external.decoder_io}] ones")
    return request.getfixturevalue(f"{mode}_stack")


def decoder_mode(stack) -> str:
    """"cpu", "gpu" or "llmapi": which tensor list (and behaviour) the stack's decoder has."""
    return getattr(stack, "decoder_io", "cpu")


@pytest.fixture(scope="module")
def openai_client(stack):
    return openai_client_for(stack, os.environ.get("LLAMA_TRITON_API_KEY", "unused"))
