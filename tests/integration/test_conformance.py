"""Every range of the seed contract through raw HTTP and the official client: the edge is accepted,
just past it is a 400 naming the field, with one error envelope for every failure.

Checks of the frontend alone (bad bodies, the stop count, the stream usage options, the context limit,
the OpenAPI document) run once, in tests/handlers/test_errors_handlers.py and test_usage_handlers.py,
not once per decoder mode here."""
import json
import urllib.request

import openai
import pytest

from tests.integration.conftest import DECODER_MODES, decoder_mode
from tests.integration.frontends import extra_frontend
from tests.integration.http_helpers import post_json as post

pytestmark = pytest.mark.parametrize("stack", DECODER_MODES, indirect=True)

USER = [{"role": "user", "content": "Hi"}]


def assert_envelope(body, param=None):
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param, err


BOUNDARIES = [
    # field, accepted edge values, rejected values just past the edge
    ("temperature", [0, 2], [-0.001, 2.001]),
    ("top_p", [1e-6, 1], [0, 1.001]),
    ("min_p", [0, 1], [-0.001, 1.001]),
    ("top_k", [0, 999], [-1, 1000]),
    ("n", [1, 4], [0, 5]),
    ("presence_penalty", [-2, 2], [-2.001, 2.001]),
    ("frequency_penalty", [-2, 2], [-2.001, 2.001]),
    ("repetition_penalty", [0.01, 5], [0.0099, 5.001]),
    ("seed", [-(2 ** 63), 2 ** 64 - 1], [-(2 ** 63) - 1, 2 ** 64]),
    ("max_tokens", [0, 1_000_000], [-1, 1_000_001]),
    ("max_completion_tokens", [0, 1_000_000], [-1, 1_000_001]),
]


@pytest.mark.parametrize("field,good,bad", BOUNDARIES, ids=[b[0] for b in BOUNDARIES])
def test_range_edges(stack, field, good, bad):
    for value in good:
        body = {"model": stack.model_name, "messages": USER, "max_tokens": 2, field: value}
        if field in ("max_tokens", "max_completion_tokens"):
            # A sampled </s> (id 2) would end the reply before the context does: ban it, so the
            # clamping is what ends it.
            body["logit_bias"] = {"2": -100}
        status, resp, _ = post(stack.base_url, "/v1/chat/completions", body)
        if field == "min_p" and value and decoder_mode(stack) == "gpu":
            # TensorRT-LLM has no min_p: a 400 naming it, never a silently dropped field.
            assert status == 400, (field, value, resp)
            assert_envelope(resp, field)
            continue
        assert status == 200, (field, value, resp)
        assert len(resp["choices"]) == (value if field == "n" else 1)
        if field in ("max_tokens", "max_completion_tokens") and value:
            # Within the seed's range, then clamped to what the context allows: finish_reason length.
            usage = resp["usage"]
            assert usage["prompt_tokens"] + usage["completion_tokens"] == 1024
            assert resp["choices"][0]["finish_reason"] == "length"
    for value in bad:
        status, resp, _ = post(stack.base_url, "/v1/chat/completions",
                               {"model": stack.model_name, "messages": USER, "max_tokens": 2, field: value})
        assert status == 400, (field, value, resp)
        assert_envelope(resp, field)


def test_top_logprobs_edges(stack):
    ok = post(stack.base_url, "/v1/chat/completions", {"model": stack.model_name, "messages": USER, "max_tokens": 2,
                                                      "logprobs": True, "top_logprobs": 20})
    if decoder_mode(stack) == "gpu":
        # TensorRT-LLM returns no alternatives per token: top_logprobs > 0 is a 400 naming it.
        assert ok[0] == 400
        assert_envelope(ok[1], "top_logprobs")
        return
    assert ok[0] == 200
    content = ok[1]["choices"][0]["logprobs"]["content"]
    assert len(content) == 2 and all(len(t["top_logprobs"]) == 20 for t in content)
    for t in content:
        assert set(t) == {"token", "logprob", "bytes", "top_logprobs"}
        assert t["top_logprobs"][0]["logprob"] >= t["top_logprobs"][-1]["logprob"]
    status, body, _ = post(stack.base_url, "/v1/chat/completions", {"model": stack.model_name, "messages": USER,
                                                                   "logprobs": True, "top_logprobs": 21})
    assert status == 400
    assert_envelope(body, "top_logprobs")


def test_max_tokens_zero_returns_empty_completion_with_usage(stack, openai_client):
    r = openai_client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=0)
    assert r.choices[0].message.content == ""
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 0 and r.usage.prompt_tokens > 0


def test_max_completion_tokens_wins(stack, openai_client):
    r = openai_client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=9,
                                              max_completion_tokens=3, seed=1)
    assert r.usage.completion_tokens == 3


def test_null_max_tokens_uses_the_server_cap(stack):
    status, body, _ = post(stack.base_url, "/v1/chat/completions",
                           {"model": stack.model_name, "messages": USER, "max_tokens": None, "seed": 4})
    assert status == 200 and body["usage"]["completion_tokens"] == 48   # the test server's cap


def test_n_choices_are_indexed_and_usage_sums(stack, openai_client):
    r = openai_client.chat.completions.create(model=stack.model_name, messages=USER, n=3, max_tokens=5, seed=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 15
    assert len({c.message.content for c in r.choices}) > 1
    chunks = list(openai_client.chat.completions.create(model=stack.model_name, messages=USER, n=3, max_tokens=5,
                                                        seed=2, stream=True))
    for i in range(3):
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
        assert streamed == r.choices[i].message.content


def test_stop_strings_are_never_emitted(stack, openai_client):
    base = openai_client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=30, seed=5)
    text = base.choices[0].message.content
    stop = text[10:13]
    cut = text.index(stop)
    for stream in (False, True):
        kwargs = dict(model=stack.model_name, messages=USER, max_tokens=30, seed=5, stop=[stop])
        if stream:
            chunks = list(openai_client.chat.completions.create(stream=True, **kwargs))
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            r = openai_client.chat.completions.create(**kwargs)
            got, reason = r.choices[0].message.content, [r.choices[0].finish_reason]
        assert got == text[:cut]
        assert reason == ["stop"]


def test_completions_endpoint(stack, openai_client):
    if decoder_mode(stack) == "gpu":
        # logprobs=2 asks for two alternatives per token, which TensorRT-LLM cannot return.
        with pytest.raises(openai.BadRequestError, match="top_logprobs"):
            openai_client.completions.create(model=stack.model_name, prompt="Once upon", max_tokens=4, seed=3,
                                             logprobs=2, echo=True)
    r = openai_client.completions.create(model=stack.model_name, prompt="Once upon", max_tokens=4, seed=3,
                                         logprobs=0 if decoder_mode(stack) == "gpu" else 2, echo=True)
    assert r.choices[0].text.startswith("Once upon")
    assert len(r.choices[0].logprobs.tokens) == 4
    ids = openai_client.completions.create(model=stack.model_name, prompt=[1, 9038, 2501], max_tokens=3, seed=3)
    assert ids.usage.prompt_tokens == 3
    for alias in ("/v1/openai/completions", "/v1/openai/chat/completions"):
        body = {"model": stack.model_name, "max_tokens": 1}
        body.update({"prompt": "x"} if alias.endswith("/completions") and "chat" not in alias else {"messages": USER})
        assert post(stack.base_url, alias, body)[0] == 200
    with urllib.request.urlopen(f"{stack.base_url}/v1/openai/models") as r:
        assert json.loads(r.read())["data"][0]["id"] == stack.model_name


def test_unknown_fields_are_ignored_not_422(stack):
    status, body, _ = post(stack.base_url, "/v1/chat/completions",
                           {"model": stack.model_name, "messages": USER, "max_tokens": 1, "store": False,
                            "some_future_field": {"x": 1}, "metadata": {"a": "b"}})
    assert status == 200


def test_unknown_route_and_method(stack):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{stack.base_url}/v1/nothing")
    assert e.value.code == 404
    assert_envelope(json.loads(e.value.read()))


def test_auth_and_limits(stack, default_model_dir):
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--max-body-bytes", "4096",
                        "--served-model-name", stack.model_name, env={"API_KEYS": "k1,k2"}) as (base, _):
        body = {"model": stack.model_name, "messages": USER, "max_tokens": 1}
        status, resp, headers = post(base, "/v1/chat/completions", body)
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
        assert_envelope(resp)
        assert post(base, "/v1/chat/completions", body, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(base, "/v1/chat/completions", body, {"Authorization": "Bearer k2"})[0] == 200
        with urllib.request.urlopen(f"{base}/health") as r:       # /health stays open
            assert r.status == 200
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="k1", max_retries=0)
        assert client.chat.completions.create(model=stack.model_name, messages=USER, max_tokens=1).choices
        status, resp, _ = post(base, "/v1/chat/completions",
                               {"model": stack.model_name, "messages": [{"role": "user", "content": "x" * 10000}]},
                               {"Authorization": "Bearer k1"})
        assert status == 413
        assert_envelope(resp)


def test_decoder_down_is_503(stack, default_model_dir):
    from llama_triton.serve.common import free_port
    with extra_frontend(str(default_model_dir), f"127.0.0.1:{free_port()}", "--served-model-name",
                        stack.model_name, expect_healthy=False) as (base, _):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{base}/health")
        assert e.value.code == 503
        status, resp, _ = post(base, "/v1/chat/completions", {"model": stack.model_name, "messages": USER})
        assert status == 503
        assert_envelope(resp)
