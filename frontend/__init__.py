"""aiohttp frontend: the OpenAI-compatible HTTP API in front of Triton (protocol, errors, OpenAPI, routes)."""
