"""The playground's static files: shipped as package data, small, self-contained, nothing inline."""
from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from frontend.http import playground

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "frontend" / "static"


def test_every_static_file_is_package_data():
    # A non-editable install (a wheel) carries only what package-data names.
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["frontend"]
    for f in STATIC.iterdir():
        rel = f.relative_to(ROOT / "frontend").as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), rel
    served = {name for name, _ in playground.FILES.values()}
    assert served == {f.name for f in STATIC.iterdir()}


def test_page_is_small_and_self_contained():
    assert playground.page_size() <= 100 * 1024
    html = (STATIC / "playground.html").read_text()
    # The CSP allows no inline script, style or handler: the page must not need any.
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/static/playground.js" defer>']
    assert "<style" not in html and not re.search(r"\son[a-z]+=", html) and " style=" not in html
    for f in STATIC.iterdir():
        text = f.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"{f.name} refers outside"
        assert "eval(" not in text and "new Function" not in text, f.name


def test_headers_are_strict():
    csp = dict(part.strip().split(" ", 1) for part in playground.CSP.split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert playground.HEADERS["X-Content-Type-Options"] == "nosniff"
