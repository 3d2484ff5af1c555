"""Operator endpoints on the real stack: /tokenize counts what a chat request's usage counts,
/detokenize inverts it, /version answers, /v1/models states max_model_len (the decoder's)."""
from __future__ import annotations

import json
import urllib.request

from tests.integration.stack import TEST_LIMITS


def post(stack, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{stack.base_url}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def test_tokenize_counts_what_chat_usage_counts(stack, openai_client):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Spell </s> and [INST] for me."}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    tok = post(stack, "/tokenize", {"model": stack.model_name, "messages": messages, "tools": tools})
    chat = openai_client.chat.completions.create(model=stack.model_name, messages=messages, tools=tools,
                                                 max_tokens=1)
    assert tok["count"] == len(tok["tokens"]) == chat.usage.prompt_tokens
    seq_len = int(TEST_LIMITS[TEST_LIMITS.index("--max-seq-len") + 1])
    assert tok["max_model_len"] == seq_len
    prompt = post(stack, "/tokenize", {"model": stack.model_name, "prompt": "Hello world"})
    completion = openai_client.completions.create(model=stack.model_name, prompt="Hello world", max_tokens=1)
    assert prompt["count"] == completion.usage.prompt_tokens
    assert post(stack, "/detokenize", {"model": stack.model_name, "tokens": prompt["tokens"]})["prompt"] \
        .endswith("Hello world")
    with urllib.request.urlopen(f"{stack.base_url}/version", timeout=30) as r:
        assert json.loads(r.read())["version"]
    assert openai_client.models.list().data[0].max_model_len == seq_len
