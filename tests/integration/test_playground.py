"""The chat playground (GET /) in a real headless browser against the real stack.

Debian's `chromium` package, driven by Playwright's Python API through `executable_path`
(Playwright's own browser download is not reachable; `.ci/run` installs the apt package). A machine
without it fails here with the install command, it does not skip.

The session stack caps max_tokens at 48 when a request leaves it unset: the Stop test sets
max_tokens itself so that the stream is still running when Stop is pressed, and the tool-call and
json_schema schemas are bounded so a random model finishes inside the cap.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from frontend.http import playground
from tests.integration.frontends import extra_frontend
from tests.integration.stack import ROOT, wait_for

CHROMIUM = os.environ.get("LLAMA_TRITON_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "var" / "test-artifacts"      # ignored by git (var/)
PAGE_BUDGET = 100 * 1024
WEATHER = {"type": "object",
           "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                          "unit": {"type": "string", "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                           "parameters": WEATHER}}]
COLOUR = {"type": "object",
          "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                         "n": {"type": "integer", "minimum": 0, "maximum": 9}},
          "required": ["color", "n"], "additionalProperties": False}


def get(url: str, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def frontend_cancellations(stack) -> float:
    _, body, _ = get(f"{stack.base_url}/metrics")
    m = re.search(rb'^llama_triton_cancellations_total\{reason="client_disconnect"\} (\S+)$', body, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"the playground test needs Debian's chromium at {CHROMIUM}; install it with "
                    "`apt-get update && apt-get install -y chromium` (or set LLAMA_TRITON_CHROMIUM)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playground test needs playwright: `make venv` installs the test extra", pytrace=False)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1500, "height": 1000})
        yield context
        context.close()


def open_page(browser, base_url: str):
    page = browser.new_page()
    problems: list[str] = []
    # Script errors, CSP violations, requests leaving the server; a 4xx answer the page shows is fine.
    page.on("console", lambda m: problems.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("request", lambda r: problems.append(f"outside request {r.url}")
            if not r.url.startswith(base_url) else None)
    page.goto(base_url + "/")
    page.wait_for_selector("body[data-ready='1']")
    page.problems = problems
    return page


@pytest.fixture
def page(browser, stack):
    page = open_page(browser, stack.base_url)
    yield page
    problems = list(page.problems)
    page.close()
    assert not problems, problems     # no CSP violation, script error or request leaving the server


def set_param(page, name: str, value: str) -> None:
    page.fill(f"#p-{name}", value)


def send(page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def wait_state(page, state: str, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector(f"#replies[data-state='{state}']", timeout=timeout_ms)


def test_page_headers_size_and_parameters(stack, page):
    status, html, headers = get(stack.base_url + "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert b"<script>" not in html and b" on" + b"click=" not in html     # nothing inline for the CSP to block
    total = 0
    for path in ("/", "/static/playground.js", "/static/playground.css"):
        s, body, h = get(stack.base_url + path)
        assert s == 200 and h["X-Content-Type-Options"] == "nosniff", path
        total += len(body)
    assert total == playground.page_size() and total <= PAGE_BUDGET, total
    assert get(stack.base_url + "/playground")[1] == html
    # Ranges and defaults come from /openapi.json: compare with the document itself.
    doc = json.loads(get(stack.base_url + "/openapi.json")[1])
    props = doc["components"]["schemas"]["ChatCompletionRequest"]["properties"]
    temperature = next(b for b in props["temperature"]["anyOf"] if b.get("type") != "null")
    assert float(page.get_attribute("#p-temperature", "max")) == temperature["maximum"]
    assert page.get_attribute("#p-temperature", "placeholder") == "1"
    for name in ("temperature", "top_p", "min_p", "top_k", "max_tokens", "stop", "n", "presence_penalty",
                 "frequency_penalty", "repetition_penalty", "seed", "logprobs", "top_logprobs",
                 "reasoning_effort", "prompt_cache_key"):
        assert page.locator(f"#p-{name}").count() == 1, name
    efforts = page.eval_on_selector_all("#p-reasoning_effort option", "os => os.map(o => o.value)")
    assert set(efforts) == {""} | set(next(b for b in props["reasoning_effort"]["anyOf"] if "enum" in b)["enum"])
    formats = page.eval_on_selector_all("#rf-type option", "os => os.map(o => o.value)")
    assert {"json_object", "json_schema", "regex"} <= set(formats)
    assert "up to 48" in page.inner_text("#params")       # the session stack's cap, from /v1/models


def throttle_downloads(page, bytes_per_s: int) -> None:
    """Chromium's own network throttling: the stream's events then reach the page spread over
    seconds, so its incremental rendering is observable however loaded the machine is (on a busy
    machine a fast stream can otherwise arrive in one read)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0,
                                                  "downloadThroughput": bytes_per_s, "uploadThroughput": -1})


def test_streamed_multi_turn_chat_with_usage_and_logprobs(stack, page):
    throttle_downloads(page, 8000)
    # Record every state the reply's text goes through, as the browser renders it.
    page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const c = document.querySelector('#replies .reply .content');
            if (c && c.textContent !== window.seen[window.seen.length - 1]) window.seen.push(c.textContent);
        }).observe(document.getElementById('replies'), {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#system", "You are terse.")
    set_param(page, "seed", "7")
    page.check("#p-logprobs")
    set_param(page, "top_logprobs", "3")
    send(page, "Tell me a story")
    wait_state(page, "done")
    final = page.text_content("#replies .reply .content")
    seen = page.evaluate("window.seen")
    assert final and seen[-1] == final
    partial = [s for s in seen if s and s != final]
    assert len(set(partial)) >= 3, seen                 # streamed: several partial states, not just the end
    assert all(final.startswith(s) for s in partial)
    usage = page.inner_text("#usage")
    m = re.search(r"prompt_tokens (\d+) \(cached_tokens (\d+)\) · completion_tokens (\d+)", usage)
    assert m and int(m.group(1)) > 0 and int(m.group(3)) > 0, usage
    stats = page.inner_text("#replies .reply .stats")
    assert "finish_reason length" in stats and "TTFT" in stats and "tokens/s" in stats, stats
    assert f"tokens {m.group(3)}" in stats
    # Log-probs: one shaded span per token, the alternatives on hover.
    tokens = page.locator("#replies .reply .content .tok")
    assert tokens.count() == int(m.group(3))
    tokens.nth(1).hover()
    page.wait_for_selector("#tip:not([hidden]) tr")
    assert page.locator("#tip tr").count() == 3
    # Second turn: earlier turns are editable, the reply joins the conversation; a new reply streams.
    page.fill("#turns .turn.user textarea", "Tell me a tale")
    send(page, "Again, shorter")
    wait_state(page, "done")
    assert page.locator("#turns .turn").count() == 3   # user, assistant, user
    assert page.input_value("#turns .turn.assistant textarea") == final
    # The same request the page would make, copied for openai-python, runs as it is.
    page.click("#copy-python")
    code = page.inner_text("#copied")
    assert '"role": "assistant"' in code and "top_logprobs=3" in code and '"Tell me a tale"' in code
    assert "Tell me a story" not in code and '"content": "You are terse."' in code
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENAI_API_KEY": "unused"})
    assert run.returncode == 0 and "completion_tokens=" in run.stdout, run.stderr[-2000:]
    page.click("#copy-curl")
    curl = page.inner_text("#copied")
    assert curl.startswith(f"curl -sN {stack.base_url}/v1/chat/completions") and '"stream": true' in curl
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-chat.png"), full_page=True)


def test_out_of_range_temperature_shows_the_400(stack, page):
    set_param(page, "temperature", "3")
    send(page, "Hi")
    page.wait_for_selector("#error:not([hidden])")
    status, body, _ = get_post(stack, {"model": stack.model_name, "messages": [{"role": "user", "content": "Hi"}],
                                       "temperature": 3, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 400
    envelope = json.loads(body)
    assert page.inner_text("#error-status") == "HTTP 400"
    assert json.loads(page.inner_text("#error-body")) == envelope       # as the API returned it
    assert envelope["error"]["param"] == "temperature"


def get_post(stack, body: dict):
    req = urllib.request.Request(f"{stack.base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_stop_aborts_the_stream_and_the_server_cancels(stack, page):
    engine_before = stack.engine_stats()["num_cancelled"]
    frontend_before = frontend_cancellations(stack)
    set_param(page, "max_tokens", "900")     # far past the session stack's default cap of 48
    set_param(page, "seed", "3")
    send(page, "Go on forever")
    page.wait_for_function("() => (document.querySelector('#replies .reply .content') || {}).textContent"
                           "?.length > 20")
    page.click("#stop")
    wait_state(page, "stopped")
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    shown = len(page.inner_text("#replies .reply .content"))
    wait_for(lambda: stack.engine_stats()["num_cancelled"] > engine_before, what="the decoder cancelled the request")
    wait_for(lambda: frontend_cancellations(stack) > frontend_before, what="the frontend counted a client disconnect")
    assert 0 < shown
    assert "finish_reason …" in page.inner_text("#replies .reply .stats")   # it never finished


def test_tool_call_and_json_schema_replies_render(stack, page):
    page.fill("#tools", json.dumps(TOOLS))
    page.select_option("#tool-choice", "required")
    set_param(page, "seed", "3")
    set_param(page, "n", "2")
    send(page, "What is the weather in Paris?")
    wait_state(page, "done")
    assert page.locator("#replies .reply").count() == 2                   # n choices side by side
    for i in range(2):
        column = page.locator("#replies .reply").nth(i)
        call = column.locator(".call").first
        assert call.locator(".fn").inner_text() == "get_weather"
        assert call.locator(".id").inner_text().startswith("call_")
        args = json.loads(call.locator(".args").inner_text())
        assert args["city"] in ("Paris", "Rome") and args["unit"] in ("c", "f")
        assert "finish_reason tool_calls" in column.locator(".stats").inner_text()
        assert column.locator(".content").inner_text() == ""
    first, second = (page.locator("#replies .reply").nth(i).bounding_box() for i in range(2))
    assert second["x"] >= first["x"] + first["width"] - 1 and abs(first["y"] - second["y"]) < 2   # side by side
    # json_schema: a new chat, the schema editor's content constrains the reply.
    page.click("#clear")
    page.fill("#tools", "")
    page.select_option("#tool-choice", "")
    set_param(page, "n", "1")
    set_param(page, "seed", "1")
    page.select_option("#rf-type", "json_schema")
    page.fill("#rf-schema", json.dumps(COLOUR))
    send(page, "Describe a colour as JSON.")
    wait_state(page, "done")
    assert "finish_reason stop" in page.inner_text("#replies .reply .stats")
    value = json.loads(page.inner_text("#replies .reply .content"))
    assert value["color"] in ("red", "green", "blue") and 0 <= value["n"] <= 9
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground-json-schema.png"), full_page=True)


def test_page_needs_no_key_and_keeps_the_key_in_session_storage(stack, browser, default_model_dir):
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        env={"API_KEYS": "k-playground-1"}) as (base, _):
        for path in ("/", "/static/playground.js", "/static/playground.css", "/openapi.json"):
            assert get(base + path)[0] == 200, path
        assert get(base + "/v1/models")[0] == 401
        page = open_page(browser, base)
        try:
            assert "needs an API key" in page.inner_text("#server-info")
            page.fill("#api-key", "k-playground-1")
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("() => document.getElementById('model').options.length > 0")
            send(page, "Hi")
            wait_state(page, "done")
            assert page.evaluate("sessionStorage.getItem('llama-triton.api-key')") == "k-playground-1"
            assert page.evaluate("localStorage.length") == 0
            assert "k-playground-1" not in page.evaluate("document.cookie")
            assert not page.problems, page.problems
        finally:
            page.close()


def test_reasoning_apart_and_an_in_stream_error_render(stack, page):
    # The session's model has no reasoning parser and never fails mid-stream: these events, in the
    # shape the service writes them, are given to the page in place of the server's answer.
    def event(body):
        return "data: " + json.dumps(body) + "\n\n"
    head = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": stack.model_name}
    error = {"error": {"message": "The request did not finish within the server's time limit of 5 s and was "
                                  "cancelled.", "type": "server_error", "param": None, "code": "request_timeout"}}
    sse = "".join([
        event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}),
        event({**head, "choices": [{"index": 0, "delta": {"reasoning_content": "Thinking it over."},
                                    "finish_reason": None}]}),
        event({**head, "choices": [{"index": 0, "delta": {"content": "The answer."}, "finish_reason": None}]}),
        event(error), "data: [DONE]\n\n"])
    page.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=sse))
    send(page, "Think first")
    wait_state(page, "error")
    assert page.inner_text("#replies .reply .reasoning").endswith("Thinking it over.")
    assert page.inner_text("#replies .reply .content") == "The answer."
    assert json.loads(page.inner_text("#error-body")) == error


def test_responses_mode_and_long_ranges_fit_the_panel(stack, page):
    # seed's range is 20-digit numbers: shown exactly, and wrapped inside the panel's content box
    # (the unbreakable text once widened its row into the panel's padding)
    geometry = page.evaluate("""() => {
        const panel = document.getElementById('params');
        const row = document.querySelector('#p-seed').closest('.param');
        const style = getComputedStyle(panel);
        const inner = panel.getBoundingClientRect().right - parseFloat(style.paddingRight) - parseFloat(style.borderRightWidth);
        return {overflow: Math.max(...[row, ...row.children].map(e => e.getBoundingClientRect().right)) - inner,
                hint: row.querySelector('.hint').textContent};
    }""")
    assert geometry["hint"].startswith("[-9223372036854775808, 18446744073709551616)"), geometry
    assert geometry["overflow"] <= 0.5, geometry
    posted: list[str] = []
    page.on("request", lambda r: posted.append(r.url) if r.method == "POST" else None)
    page.select_option("#api-mode", "responses")
    assert page.is_disabled("#p-n") and page.is_disabled("#p-logprobs")
    page.fill("#system", "You are terse.")
    set_param(page, "max_tokens", "6")
    send(page, "Tell me a story")
    wait_state(page, "done")
    assert posted[-1] == stack.base_url + "/v1/responses"
    text = page.text_content("#replies .reply .content")
    assert text
    stats = page.inner_text("#replies .reply .stats")
    assert "finish_reason length" in stats and "tokens 6" in stats, stats
    m = re.search(r"prompt_tokens (\d+) \(cached_tokens (\d+)\) · completion_tokens 6", page.inner_text("#usage"))
    assert m and int(m.group(1)) > 0
    # a second turn sends the conversation as input items; the copied code runs with the SDK
    send(page, "Shorter")
    wait_state(page, "done")
    page.click("#copy-python")
    code = page.inner_text("#copied")
    assert "client.responses.create(" in code and "instructions=" in code and "max_output_tokens=6" in code
    assert '"role": "assistant"' in code and json.dumps(text, ensure_ascii=False)[1:-1] in code
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENAI_API_KEY": "unused"})
    assert run.returncode == 0 and "output_tokens=" in run.stdout, run.stderr[-2000:]
    page.select_option("#api-mode", "chat")
    assert not page.is_disabled("#p-n")
