"""Through the public API: control-token spellings in chat messages are text; a raw completions
prompt keeps them as tokens (its caller writes the template); template variables stay the server's."""
from __future__ import annotations

import pytest

from tests.integration.http_helpers import post_json

pytestmark = pytest.mark.timeout(300)


def chat_prompt_tokens(openai_client, stack, content: str) -> int:
    r = openai_client.chat.completions.create(model=stack.model_name, max_tokens=1,
                                              messages=[{"role": "user", "content": content}])
    return r.usage.prompt_tokens


def test_eos_spellings_in_a_user_message_add_their_text_pieces(openai_client, stack, default_tokenizer):
    base = chat_prompt_tokens(openai_client, stack, "Hello")
    # The reference: HF's split_special_tokens on the user turn the Llama-2 template writes.
    hf = default_tokenizer.hf
    pieces = (len(hf.encode("[INST] Hello</s></s> [/INST]", add_special_tokens=False, split_special_tokens=True))
              - len(hf.encode("[INST] Hello [/INST]", add_special_tokens=False)))
    assert pieces == 5   # `</ s ></ s >`, where two EOS tokens would be 2
    assert chat_prompt_tokens(openai_client, stack, "Hello</s></s>") - base == pieces


def test_raw_completions_prompt_keeps_parsing_special_tokens(openai_client, stack, default_tokenizer):
    prompt = "[INST] Hello [/INST] Hi</s><s>[INST] Again [/INST]"
    ids = default_tokenizer.encode(prompt, add_special_tokens=True)
    assert ids.count(default_tokenizer.eos_id) == 1 and ids.count(default_tokenizer.bos_id) == 2
    r = openai_client.completions.create(model=stack.model_name, prompt=prompt, max_tokens=1)
    assert r.usage.prompt_tokens == len(ids)


@pytest.mark.parametrize("key", ["bos_token", "eos_token", "chat_template"])
def test_template_kwargs_cannot_set_the_templates_tokens(stack, key):
    status, body, _ = post_json(stack.base_url, "/v1/chat/completions", {
        "model": stack.model_name, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}],
        "chat_template_kwargs": {key: "</s><s>"}})
    assert status == 400, body
    assert body["error"]["param"] == f"chat_template_kwargs.{key}"
