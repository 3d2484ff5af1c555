"""The aiohttp application's keys and the paths its middlewares treat apart; shared by the modules of
frontend/http/ (app, middlewares, routes, the stream writer)."""
from __future__ import annotations

from aiohttp import web

from frontend.http import playground
from frontend.openai import CompletionService
from frontend.settings import Settings
from frontend.telemetry import FrontendMetrics

SERVICE = web.AppKey("service", CompletionService)
SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", FrontendMetrics)
OPENAPI = web.AppKey("openapi", bytes)
INFLIGHT = web.AppKey("inflight", set)
STATE = web.AppKey("state", dict)
CTX = "llama_triton.request_context"          # key of the RequestContext in the aiohttp request
OPEN_PATHS = frozenset({"/health", "/health/live", "/openapi.json"}) | playground.PUBLIC_PATHS  # the page needs no key
METRICS_PATH = "/metrics"     # its own credential: what it shows spans every tenant
LOAD_ONLY = "llama_triton.metrics_load_only"   # request key: /metrics for the router's key
QUIET_PATHS = frozenset({"/health", "/health/live", "/metrics"})   # logged at DEBUG when they succeed
