"""The CPU decoder rendered with TensorRT-LLM's input list refuses exactly what a GPU deployment
cannot honour: a 400 naming the field, never a silently dropped parameter."""

import pytest

from tests.integration.http_helpers import post_chat as post

USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def gpu_io_stack(gpu_stack):
    return gpu_stack      # the session's GPU-mode stack (tests/integration/conftest.py)


@pytest.mark.parametrize("extra,param", [
    ({"min_p": 0.1}, "min_p"),
    ({"logprobs": True, "top_logprobs": 3}, "top_logprobs"),
])
def test_fields_the_gpu_decoder_lacks_are_400(gpu_io_stack, extra, param):
    status, body = post(gpu_io_stack.base_url, {"model": gpu_io_stack.model_name, "messages": USER,
                                                "max_tokens": 2, **extra})
    assert status == 400
    assert body["error"]["param"] == param
    assert body["error"]["code"] == "unsupported_parameter"


def test_everything_else_still_works(gpu_io_stack):
    status, body = post(gpu_io_stack.base_url, {"model": gpu_io_stack.model_name, "messages": USER, "max_tokens": 3,
                                                "min_p": 0, "logprobs": True, "top_k": 5, "top_p": 0.9,
                                                "repetition_penalty": 1.2, "seed": 3})
    assert status == 200, body
    assert len(body["choices"][0]["logprobs"]["content"]) == 3
    assert body["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
