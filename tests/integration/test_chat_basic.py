"""The skeleton through its public faces: HTTP with the official client and raw HTTP."""
import json
import urllib.request

import pytest

from tests.integration.conftest import DECODER_MODES

pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)


def post(stack, path, body, headers=None):
    req = urllib.request.Request(f"{stack.base_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello in Chinese: 你好 😀"}]


def test_health_and_models(stack, openai_client):
    with urllib.request.urlopen(f"{stack.base_url}/health") as r:
        assert r.status == 200
    models = openai_client.models.list()
    assert [m.id for m in models.data] == [stack.model_name]


def test_non_streamed_chat_is_openai_shaped(stack, openai_client):
    r = openai_client.chat.completions.create(model=stack.model_name, messages=MESSAGES, max_tokens=12, seed=7)
    assert r.id.startswith("chatcmpl-")
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason == "length"     # a random model does not hit EOS in 12 tokens
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


@pytest.mark.parametrize("seed", [1, 2, 3, 11, 12])
def test_stream_concatenates_to_non_stream(stack, openai_client, seed):
    kwargs = dict(model=stack.model_name, messages=MESSAGES, max_tokens=40, seed=seed, temperature=1.0)
    full = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert finals[0].usage is not None and finals[0].usage.completion_tokens == 40


def test_raw_sse_framing(stack):
    status, body = post(stack, "/v1/chat/completions", {"model": stack.model_name, "messages": MESSAGES,
                                                        "max_tokens": 5, "stream": True, "seed": 3})
    assert status == 200
    events = body.decode().split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    for e in events[:-2]:
        assert e.startswith("data: ")
        json.loads(e[len("data: "):])


def test_curl_style_request_returns_200(stack):
    status, body = post(stack, "/v1/chat/completions",
                        {"model": stack.model_name, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 200
    data = json.loads(body)
    assert data["choices"][0]["message"]["content"] is not None
    assert data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["usage"]["completion_tokens"] <= 48    # the test server's max_tokens cap


def test_unknown_model_is_404(stack):
    status, body = post(stack, "/v1/chat/completions", {"model": "nope", "messages": MESSAGES})
    assert status == 404
    assert json.loads(body)["error"]["param"] == "model"
