"""aiohttp frontend: the OpenAI-compatible HTTP API in front of Triton, grouped by concern (http,
openai, decoder, telemetry, tenancy; docs/ARCHITECTURE.md, "Code map")."""
