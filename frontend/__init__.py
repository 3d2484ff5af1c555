"""aiohttp frontend: the OpenAI-compatible HTTP API in front of Triton (wire models, errors, OpenAPI, routes)."""
