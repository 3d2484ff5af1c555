"""Prefix reuse reaches the API: usage.prompt_tokens_details.cached_tokens counts reused prompt tokens."""

SYSTEM = "You are a careful assistant. " * 12   # well over one 16-token KV block


def ask(client, stack, question, **extra):
    return client.chat.completions.create(
        model=stack.model_name, max_tokens=2, seed=1,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}], **extra)


def test_shared_prefix_is_reported_as_cached(stack, openai_client):
    first = ask(openai_client, stack, "First question about apples?", prompt_cache_key="tenant-a", user="alice")
    second = ask(openai_client, stack, "Second question about pears?", prompt_cache_key="tenant-a", user="alice")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 16 and cached % 16 == 0            # whole KV blocks of the shared system prompt
    assert cached < second.usage.prompt_tokens           # never the block holding the last prompt token
    assert first.usage.prompt_tokens_details.cached_tokens <= cached


def test_streamed_usage_reports_cached_tokens(stack, openai_client):
    ask(openai_client, stack, "Warm the cache")
    chunks = list(openai_client.chat.completions.create(
        model=stack.model_name, max_tokens=2, seed=1, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Warm the cache, again"}]))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens >= 16
