"""Reasoning models: which they are, where their reply starts, and thinking turned off in the prompt.
The splitting of a reply into reasoning and answer is the model's reasoning parser
(frontend/openai/parsers/, `deepseek_r1`).

Which models. A model is a *reasoning model* when a reasoning-parser family fits it
(`reasoning_parser_for`): for `deepseek_r1`, its chat template or its vocabulary has both `<think>` and `</think>`
(DeepSeek-R1 distills, QwQ, Qwen3). For every other model the request
fields `reasoning_effort`, `reasoning` and `chat_template_kwargs.enable_thinking` are accepted
no-ops: they reach the chat template as the `reasoning_effort` / `enable_thinking` kwargs (a
template that does not read them ignores them), the reply has no `reasoning_content`, and the
text is split no further.

Where the reasoning starts. Some templates open the reasoning block in the generation prompt
(DeepSeek-R1-Distill ends it with `<｜Assistant｜><think>\\n`): the output then starts *inside*
the reasoning part (`prompt_opens_reasoning`: the prompt ends with `<think>` and whitespace).
Otherwise a reply that starts with `<think>` (after optional whitespace) opens it; a reply that
does not is all answer.

The reply has `message.reasoning_content` (streamed: `delta.reasoning_content`) whenever a
reasoning part was opened, "" when it was empty; `content` is null when the reply ended inside
the reasoning (finish_reason "length"). `usage.completion_tokens_details.reasoning_tokens` is not
reported.

Thinking turned off. When the request turns thinking off (`reasoning_effort: "none"`,
`reasoning.enabled: false`, or `chat_template_kwargs.enable_thinking: false`) and the template
still opens a reasoning block (it ignores `enable_thinking`, as DeepSeek-R1-Distill's does), the
frontend closes the block in the prompt (`</think>\\n\\n`, the empty reasoning these models are
trained on), so the reply is all answer. Templates that honour `enable_thinking` (Qwen3) close it
themselves and the frontend then has nothing to do.

Splitting (deepseek_r1). Everything before the first `</think>` is reasoning, everything after
it is the answer (`content`) with its leading whitespace dropped; the markers never appear in
either field, also when one is spelled across chunks or tokens. For any split of a text into
chunks the concatenated outputs are the same, so the streamed `delta.reasoning_content` /
`delta.content` concatenate to the non-streamed `message.reasoning_content` / `message.content`.

Structured outputs on reasoning models. A response_format or tool grammar constrains the
answer, not the reasoning: the guide is prefixed with "any text without `</think>`, then
`</think>`" (plus at most two whitespace characters; llama_triton/text/guide_forms.py), so the
model reasons freely and the constrained part starts after the reasoning.
"""
from __future__ import annotations

from frontend.openai.parsers import THINK_END, THINK_START

CLOSED_REASONING = THINK_END + "\n\n"


def prompt_opens_reasoning(prompt: str) -> bool:
    """Does the generation prompt open a `<think>` block (it ends with `<think>` and whitespace), so
    that the model's reply starts inside it? A `<think>` earlier in the prompt (quoted by a user,
    say) does not count."""
    return prompt.rstrip().endswith(THINK_START)


def thinking_disabled(template_kwargs: dict) -> bool:
    return template_kwargs.get("enable_thinking") is False


def close_reasoning(prompt: str) -> str:
    """The prompt with its open reasoning block closed (the model answers directly)."""
    return prompt + CLOSED_REASONING
