"""The chat playground: one static page (HTML, one JS file, one CSS file) served by the frontend.

No build step and nothing fetched from outside (deployments are often offline). The files are read
once at start-up from `frontend/static/` (package data, so a wheel carries them) and served with
strict headers: a Content-Security-Policy that allows only this origin's own script, style and
API calls (no inline script, no eval), no framing, no referrer, no MIME sniffing.

The page itself needs no API key (its paths are in `PUBLIC_PATHS`, which the auth middleware lets
through); the key the user types is kept in the browser's sessionStorage and sent as a Bearer
header on the API calls only. Parameter ranges and defaults come from GET /openapi.json.
"""
from __future__ import annotations

from importlib import resources

from aiohttp import web

STATIC = resources.files("frontend") / "static"
# path -> (file under static/, content type)
FILES = {
    "/": ("playground.html", "text/html; charset=utf-8"),
    "/playground": ("playground.html", "text/html; charset=utf-8"),
    "/static/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/static/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
PUBLIC_PATHS = frozenset(FILES)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    # Small files that change with every release: revalidate rather than serve a stale page.
    "Cache-Control": "no-cache",
}


def load_files() -> dict[str, tuple[bytes, str]]:
    return {path: ((STATIC / name).read_bytes(), ctype) for path, (name, ctype) in FILES.items()}


def add_routes(app: web.Application) -> None:
    files = load_files()

    def handler(body: bytes, ctype: str):
        async def serve_file(_request: web.Request) -> web.Response:
            return web.Response(body=body, headers={**HEADERS, "Content-Type": ctype})
        return serve_file

    for path, (body, ctype) in files.items():
        app.router.add_get(path, handler(body, ctype))


def page_size() -> int:
    """Bytes of the page and everything it loads (the HTML once)."""
    return sum(len((STATIC / name).read_bytes()) for name in {name for name, _ in FILES.values()})
