"""Messages -> prompt text with the model's own chat template.

The seed API allows message orders the Llama-2 template refuses (a system message anywhere,
`tool` turns, consecutive user turns). For templates without native tool support we rewrite the
conversation onto what the template can express, always the same documented way:

1. every system message is merged, in order, into one leading system message;
2. an assistant message with `tool_calls` becomes assistant text holding the calls as JSON;
3. a `tool` message becomes a user turn: `[tool result for call <tool_call_id>]\n<content>`;
4. consecutive turns of the same role are joined with a blank line;
5. a conversation that starts with an assistant turn gets an empty user turn before it.

Templates that know tool calls (Llama-3.x, DeepSeek-R1) get the messages as they are, except that
text-part arrays become plain text, an assistant message with `tool_calls` always has `content`
(null when it had none), and, for templates that render the tool list themselves (Llama-3.1: they
read `tools`), each call's `arguments` is handed over as an object (the template writes it with
`tojson`) and a message with several calls becomes one assistant message per call (the template
takes one call per message).

Tool instructions. Templates that render the tool list get `tools` (OpenAI's shape). For the
others `frontend.tools` writes the instructions as text (`tool_prompt`), appended to the system
prompt (a new system message when there is none). Any template error is a 400.

Control tokens come only from the template: everything the request supplied reaches it marked
(`frontend.literal_text`), so that `encode_prompt` encodes a control token's spelling typed in a
message, a tool definition or a template kwarg as text. The template itself, and the special
tokens it writes (`bos_token`, `eos_token`), come from the server's configuration only.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional

import jinja2

from frontend.errors import bad_request, bounded
from frontend.openai.literal_text import mark_request_values
from llama_triton.text.tokenization import Tokenizer


def text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def template_knows_tools(template: Optional[str]) -> bool:
    return bool(template) and ("tool_calls" in template or "ipython" in template)


def template_renders_tools(template: Optional[str]) -> bool:
    """Does the template render the request's tool list (it reads the `tools` variable)?"""
    return bool(template) and re.search(r"\btools\b", template) is not None


def _arguments_object(arguments: Any) -> Any:
    if isinstance(arguments, str) and _is_json(arguments):
        return json.loads(arguments)
    return arguments


def normalize_for_tool_template(messages: list[dict], renders_tools: bool) -> list[dict]:
    out: list[dict] = []
    for m in messages:
        m = dict(m)
        if "content" in m or m["role"] == "assistant":
            m["content"] = text_of(m.get("content")) if m.get("content") is not None else None
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if renders_tools:
                calls = [dict(c, function=dict(c["function"], arguments=_arguments_object(c["function"]["arguments"])))
                         for c in calls]
                for i, call in enumerate(calls):
                    out.append(dict(m, content=m["content"] if i == 0 else None, tool_calls=[call]))
                continue
            m["tool_calls"] = calls
        out.append(m)
    return out


def with_system_text(messages: list[dict], text: str) -> list[dict]:
    """`text` appended to the last system message, or a new leading system message."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "system":
            current = text_of(messages[i].get("content"))
            merged = dict(messages[i], content=(current + "\n\n" + text) if current else text)
            return messages[:i] + [merged] + messages[i + 1:]
    return [{"role": "system", "content": text}, *messages]


def rewrite_for_plain_template(messages: list[dict]) -> list[dict]:
    system = [text_of(m.get("content")) for m in messages if m["role"] == "system"]
    # Each turn's texts are collected and joined once at the end: appending to a string per merged
    # message copied the whole turn each time (quadratic in a run of same-role messages).
    turns: list[dict] = []          # {"role", "content": list of texts}
    for m in messages:
        role = m["role"]
        if role == "system":
            continue
        if role == "tool":
            role, content = "user", f"[tool result for call {m.get('tool_call_id', '')}]\n{text_of(m.get('content'))}"
        elif role == "assistant" and m.get("tool_calls"):
            calls = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"] or "{}")
                      if _is_json(c["function"]["arguments"]) else c["function"]["arguments"]}
                     for c in m["tool_calls"]]
            prefix = text_of(m.get("content"))
            content = (prefix + "\n" if prefix else "") + json.dumps(calls[0] if len(calls) == 1 else calls)
        else:
            content = text_of(m.get("content"))
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].append(content)
        else:
            turns.append({"role": role, "content": [content]})
    turns = [{"role": t["role"], "content": "\n\n".join(t["content"])} for t in turns]
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    if system:
        turns.insert(0, {"role": "system", "content": "\n\n".join(system)})
    return turns


def _is_json(s: Any) -> bool:
    try:
        json.loads(s)
        return True
    except (TypeError, ValueError):
        return False


# What chat_template_kwargs may set: the switches chat templates read, nothing else (an allowlist:
# a denylist let Llama-3.1's `custom_tools` through, which its template renders as `tools`, past the
# frontend's tool handling). Documented in README ("chat_template_kwargs"). A template that does not
# read one ignores it, as every other server does.
TEMPLATE_KWARGS = {
    "enable_thinking": "reasoning on or off (Qwen3, DeepSeek-R1-style templates)",
    "thinking": "reasoning on or off (Granite, DeepSeek-V3.1)",
    "reasoning_effort": "low, medium or high (gpt-oss)",
    "date_string": "today's date as the system prompt states it (Llama-3.1, 3.2)",
    "tools_in_user_message": "where the tool list goes (Llama-3.1, 3.2)",
}
# apply_chat_template's own parameters: passed through chat_template_kwargs they would let a
# request swap the configured template (and run its Jinja here) or change what we get back.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "chat_template", "tokenize", "return_dict", "continue_final_message", "add_generation_prompt", "tools",
    "documents", "padding", "truncation", "max_length", "return_tensors", "tokenizer_kwargs",
    "return_assistant_tokens_mask", "conversation", "messages", "sanitize_control_tokens"})
# The template variables apply_chat_template fills from the tokenizer: set by a request they would
# put the request's text where the template writes BOS/EOS.
SPECIAL_TOKEN_VARIABLES = frozenset({
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
    "additional_special_tokens", "extra_special_tokens"})


def render_prompt(tokenizer: Tokenizer, messages: list[dict], *, tools: Optional[list[dict]] = None,
                  tool_prompt: Optional[str] = None, template_kwargs: Optional[dict] = None) -> str:
    """`tools` reach templates that render them; `tool_prompt` is added to the system prompt.

    The text comes back with the request's spellings of control tokens marked: encode it with
    `frontend.literal_text.encode_prompt` (`plain_text` for the text alone)."""
    template = tokenizer.chat_template
    knows_tools = template_knows_tools(template)
    renders_tools = template_renders_tools(template)
    if tool_prompt:
        messages = with_system_text(messages, tool_prompt)
    msgs = normalize_for_tool_template(messages, renders_tools) if knows_tools else rewrite_for_plain_template(messages)
    kwargs = dict(template_kwargs or {})
    for key in kwargs:
        if key in RESERVED_TEMPLATE_KWARGS or key in SPECIAL_TOKEN_VARIABLES or key in tokenizer.hf.special_tokens_map:
            raise bad_request(f"chat_template_kwargs may not set '{key}': the chat template and how it is "
                              f"applied come from the server's configuration.", f"chat_template_kwargs.{key}")
        if key not in TEMPLATE_KWARGS:
            raise bad_request(f"chat_template_kwargs may set only {', '.join(sorted(TEMPLATE_KWARGS))}; "
                              f"'{bounded(key)}' is not one of them.", f"chat_template_kwargs.{bounded(key)}",
                              "unsupported_parameter")
    msgs, tools, kwargs = mark_request_values((msgs, tools if renders_tools else None, kwargs), tokenizer)
    try:
        return tokenizer.apply_chat_template(msgs, tools=tools, add_generation_prompt=True, **kwargs)
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        raise bad_request(f"The chat template cannot render these messages: {e}", "messages") from None
