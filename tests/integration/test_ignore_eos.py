"""`ignore_eos` through the real stack, in both decoder modes: the frontend sends end_id -1 and the
decoder (CPU, or in GPU mode as TensorRT-LLM does) then never ends on </s>.

`logit_bias` {"2": 100} makes </s> (id 2) all but certain at every step, so without ignore_eos a
reply ends at once, and with it every token is </s>: no text, but counted, to max_tokens.
"""
import pytest

from tests.integration.conftest import DECODER_MODES
from tests.integration.http_helpers import post_json
from tests.integration.stack import TEST_LIMITS

pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)

MESSAGES = [{"role": "user", "content": "Count to ten."}]
EOS = 2
FORCE_EOS = {str(EOS): 100}
MAX_TOKENS_CAP = int(TEST_LIMITS[TEST_LIMITS.index("--max-tokens-cap") + 1])


def test_forced_end_token_stops_at_once_unless_ignore_eos(stack, openai_client):
    kwargs = dict(model=stack.model_name, messages=MESSAGES, max_tokens=6, seed=3, logit_bias=FORCE_EOS)
    stopped = openai_client.chat.completions.create(**kwargs)
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens in (0, 1)
    ignored = openai_client.chat.completions.create(**kwargs, extra_body={"ignore_eos": True})
    assert ignored.choices[0].finish_reason == "length"
    assert ignored.usage.completion_tokens == 6
    assert ignored.choices[0].message.content == ""               # </s> has no text


def test_ignore_eos_runs_to_the_cap_with_max_tokens_null_and_honours_min_tokens(stack):
    base = {"model": stack.model_name, "prompt": "Once upon a time", "logit_bias": FORCE_EOS, "ignore_eos": True}
    status, body, _ = post_json(stack.base_url, "/v1/completions", {**base, "max_tokens": None})
    assert status == 200, body
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == MAX_TOKENS_CAP   # the server's cap, not a hang
    # aiperf's recipe: min_tokens == max_tokens with ignore_eos
    status, body, _ = post_json(stack.base_url, "/v1/completions", {**base, "max_tokens": 5, "min_tokens": 5})
    assert status == 200, body
    assert (body["choices"][0]["finish_reason"], body["usage"]["completion_tokens"]) == ("length", 5)


def test_streamed_equals_non_streamed_with_end_tokens_inside(stack, openai_client):
    # A milder bias: </s> comes now and then between ordinary tokens.
    kwargs = dict(model=stack.model_name, messages=MESSAGES, max_tokens=12, n=2, seed=11, temperature=1.0,
                  logit_bias={str(EOS): 10}, logprobs=True, extra_body={"ignore_eos": True})
    full = openai_client.chat.completions.create(**kwargs)
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    assert full.usage.completion_tokens == 24
    end_tokens = 0
    for choice in full.choices:
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks
                           if c.choices and c.choices[0].index == choice.index)
        assert streamed == choice.message.content
        assert choice.finish_reason == "length"
        assert len(choice.logprobs.content) == 12
        end_tokens += sum(1 for e in choice.logprobs.content if e.bytes == [])   # special: no bytes
    assert 0 < end_tokens < 24, "the bias should put some </s> between ordinary tokens"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length", "length"]


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "Hi"}),
])
def test_a_non_bool_ignore_eos_is_a_400_naming_it(stack, path, body):
    status, resp, _ = post_json(stack.base_url, path, {"model": stack.model_name, "max_tokens": 2,
                                                        "ignore_eos": "yes", **body})
    assert status == 400
    assert resp["error"]["param"] == "ignore_eos", resp
