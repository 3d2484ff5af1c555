"""The HTTP side: the aiohttp application (middlewares, routes, SSE writing, start-up and drain), the
OpenAPI document, the playground page and the operator endpoints."""
