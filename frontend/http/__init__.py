"""The HTTP side: the aiohttp application (middlewares, routes, SSE writing, start-up and drain), the
OpenAPI document, the playground page and the operator and Responses routes.

The top of the frontend's groups: it depends on openai, decoder, telemetry, tenancy and settings,
and nothing in them depends on it."""
from frontend.http.app import create_app, main
from frontend.http.app_keys import SERVICE, SETTINGS

__all__ = ["SERVICE", "SETTINGS", "create_app", "main"]
