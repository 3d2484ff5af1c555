"""OpenAI semantics over the decoder: request and response models, prompts, guides and tools,
reasoning, generation and the SSE chunk encoding, the chat and completions service, and the
Responses API (`responses/`)."""
