"""Security properties: keys never logged, users hashed, no request-chosen files, loopback Triton by
default, `--expose-triton` with Triton's restricted protocols, CORS off unless configured."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from llama_triton.serve import launcher, triton_launch
from llama_triton.serve.common import free_port
from llama_triton.serve.supervisor import Supervisor
from llama_triton.serve.tritonserver import ADMIN_HEADER, GRPC_ADMIN_METADATA, find_tritonserver, restricted_args, \
    server_command
from tests.integration.frontends import extra_frontend

pytestmark = pytest.mark.timeout(300)

USER = [{"role": "user", "content": "Hi"}]
AUTH = {"Authorization": f"Bearer {os.environ['LLAMA_TRITON_API_KEY']}"} if os.environ.get("LLAMA_TRITON_API_KEY") else {}


def local_only(stack):
    if not hasattr(stack, "proc"):
        pytest.skip("needs the stack's processes; the suite targets an external stack")


def request(base, path, body=None, headers=None, method=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json", **AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def chat(model, **extra):
    return {"model": model, "messages": USER, "max_tokens": 2, **extra}


HASH_SECRET = "replica-secret-for-the-test"
METRICS_KEY = "metrics-key-Ll9Kk8Jj7Hh6"


def user_hash(user: str) -> str:
    """The keyed hash the frontend logs and exports (HMAC-SHA-256 with the replica's secret)."""
    return hmac.new(HASH_SECRET.encode(), user.encode(), hashlib.sha256).hexdigest()[:16]


# ----------------------------------------------------------------------------- keys and users in logs and metrics


def test_api_keys_never_logged_and_users_hashed(stack, default_model_dir):
    keys = ["sk-live-7Hq2ZpXw9Lr4Tn6Vb8Ym", "sk-live-Qa1Ws2Ed3Rf4Tg5Yh6Uj"]
    wrong = "sk-wrong-Zx9Cv8Bn7Mm6Kk5Jj4Hh"
    secret_user = "alice@example.com"
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        env={"API_KEYS": ",".join(keys), "METRICS_KEYS": METRICS_KEY,
                             "LLAMA_TRITON_HASH_SECRET": HASH_SECRET}) as (base, proc):
        ids = {}
        for key in keys + [wrong, None]:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            status, raw, h = request(base, "/v1/chat/completions", chat(stack.model_name, user=secret_user), headers)
            assert status == (200 if key in keys else 401), raw
            ids[key] = h["X-Request-Id"]
            if status == 200:   # the header is the completion's id, which is also Triton's request id
                assert json.loads(raw)["id"] == ids[key] and ids[key].startswith("chatcmpl-")
        # Keys in places where a careless log line would pick them up.
        request(base, f"/v1/chat/completions?api_key={keys[0]}", chat(stack.model_name), {"Authorization": f"Bearer {keys[0]}"})
        request(base, "/v1/chat/completions", {"model": stack.model_name, "messages": keys[0]},
                {"Authorization": f"Bearer {keys[1]}"})
        request(base, "/v1/nope", None, {"Authorization": f"Bearer {wrong}"})
        streamed = request(base, "/v1/chat/completions", chat(stack.model_name, stream=True, user=secret_user),
                           {"Authorization": f"Bearer {keys[0]}"})
        assert streamed[0] == 200
        first = json.loads(streamed[1].split(b"\n\n")[0][len(b"data: "):])
        assert streamed[2]["X-Request-Id"] == first["id"]
        status, metrics, _ = request(base, "/metrics", None, {"Authorization": f"Bearer {METRICS_KEY}"})
        assert status == 200
        text = metrics.decode()
        for name in ("llama_triton_prompt_tokens_total", "llama_triton_completion_tokens_total"):
            value = float(text.split(f"\n{name} ", 1)[1].split("\n", 1)[0])
            assert value > 0, name
        for name in ("llama_triton_decoder_queued", "llama_triton_decoder_streams", "llama_triton_active_streams"):
            assert f"\n{name} 0.0" in text, name
    log = proc.stdout.read().decode()
    for secret in keys + [wrong]:
        assert secret not in log, f"an API key reached the log: {secret[:10]}..."
        assert secret not in metrics.decode()
    assert secret_user not in log and secret_user not in metrics.decode()
    # One JSON access line per request, with the hashed user and the id the client saw.
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry["logger"] == "frontend.access"]
    by_id = {entry["request_id"]: entry for entry in access}
    ok = by_id[ids[keys[0]]]
    assert ok["status"] == 200 and ok["user"] == user_hash(secret_user) and ok["route"] == "/v1/chat/completions"
    assert ok["request_id"].startswith("chatcmpl-") and ok["latency_ms"] > 0 and ok["completion_tokens"] == 2
    assert by_id[ids[wrong]]["status"] == 401 and by_id[ids[wrong]]["request_id"].startswith("req-")
    assert f'llama_triton_user_requests_total{{user="{user_hash(secret_user)}"}}' in metrics.decode()
    # not the plain SHA-256 prefix, which anyone can compute for a guessed user
    plain = hashlib.sha256(secret_user.encode()).hexdigest()[:16]
    assert plain not in metrics.decode() and plain not in log
    assert METRICS_KEY not in log and METRICS_KEY not in metrics.decode()


# ----------------------------------------------------------------------------- files and paths come from configuration only


def prompt_tokens(stack, **extra) -> int:
    status, raw, _ = request(stack.base_url, "/v1/chat/completions", chat(stack.model_name, **extra))
    assert status == 200, raw
    return json.loads(raw)["usage"]["prompt_tokens"]


def test_requests_cannot_choose_files(stack, tmp_path, default_model_dir):
    status, raw, _ = request(stack.base_url, "/v1/chat/completions",
                             chat(stack.model_name, chat_template="{{ '/etc/passwd' }}"))
    assert status == 400 and json.loads(raw)["error"]["param"] == "chat_template"
    base = prompt_tokens(stack)
    # Path-like fields a server might honour are ignored: the prompt is the same.
    assert prompt_tokens(stack, tokenizer="/etc", tokenizer_dir="/etc", model_dir="/etc",
                         chat_template_path="/etc/passwd", template="/etc/passwd") == base
    # Template syntax in content is data, not template code.
    for content in ("{{ 7 * 7 }}", "{% include '/etc/passwd' %}", "{{ self.__init__.__globals__ }}"):
        status, raw, _ = request(stack.base_url, "/v1/chat/completions",
                                 chat(stack.model_name, messages=[{"role": "user", "content": content}]))
        assert status == 200, raw
    for model in ("/etc/passwd", "../../etc/passwd", str(Path(default_model_dir).resolve())):
        status, raw, _ = request(stack.base_url, "/v1/chat/completions", chat(model))
        assert status == 404 and json.loads(raw)["error"]["code"] == "model_not_found"
    # A schema $ref to a file is never opened: a FIFO would block whoever opens it.
    fifo = tmp_path / "trap"
    os.mkfifo(fifo)
    schema = {"type": "object", "properties": {"a": {"$ref": fifo.as_uri()}}}
    for fields in ({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}},
                   {"tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}):
        # A blocked open would hold the request forever: the request's timeout is the hang guard.
        status, raw, _ = request(stack.base_url, "/v1/chat/completions", chat(stack.model_name, **fields), timeout=30)
        assert status in (200, 400), raw


def test_chat_template_kwargs_cannot_replace_the_template(stack):
    base = prompt_tokens(stack)
    status, raw, _ = request(stack.base_url, "/v1/chat/completions", chat(
        stack.model_name, chat_template_kwargs={"chat_template": "{{ 'injected' }}"}))
    assert status == 400, raw
    assert json.loads(raw)["error"]["param"] == "chat_template_kwargs.chat_template"
    assert prompt_tokens(stack) == base


# ----------------------------------------------------------------------------- where things listen


def listening(proc: psutil.Process) -> set[str]:
    addrs = set()
    for p in [proc] + proc.children(recursive=True):
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    addrs.add(c.laddr.ip)
        except psutil.Error:
            pass
    return addrs


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback      # gRPC listens on ::ffff:127.0.0.1


def test_everything_listens_on_loopback_by_default(stack):
    local_only(stack)
    children = psutil.Process(stack.proc.pid).children(recursive=True)
    triton = next(p for p in children if p.name() == "tritonserver")
    frontend = next(p for p in children if "frontend" in p.cmdline())
    for proc in (triton, frontend):
        addrs = listening(proc)
        assert addrs and all(is_loopback(a) for a in addrs), addrs
    cmd = triton.cmdline()
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in cmd
    assert not any("restricted" in part for part in cmd)


def supervisor_command(model_dir, tmp_path, *extra) -> list[str]:
    args = launcher.build_parser().parse_args(
        ["serve", "--model-dir", str(Path(model_dir).resolve()), "--work-dir", str(tmp_path),
         "--tritonserver", sys.executable, "--port", str(free_port()), "--triton-grpc-port", str(free_port()),
         "--triton-http-port", str(free_port()), "--triton-metrics-port", str(free_port()), *extra])
    return Supervisor(args).prepare()


def test_expose_triton_command(tmp_path, capsys, monkeypatch, default_model_dir):
    monkeypatch.delenv(triton_launch.ADMIN_KEY_ENV, raising=False)
    plain = supervisor_command(default_model_dir, tmp_path)
    assert "--grpc-address=127.0.0.1" in plain and not any("restricted" in p for p in plain)
    capsys.readouterr()

    exposed = supervisor_command(default_model_dir, tmp_path, "--expose-triton")
    for flag in ("--grpc-address=0.0.0.0", "--http-address=0.0.0.0", "--metrics-address=0.0.0.0"):
        assert flag in exposed
    grpc_flag = next(p for p in exposed if p.startswith("--grpc-restricted-protocol="))
    http_flag = next(p for p in exposed if p.startswith("--http-restricted-api="))
    apis, _, header_key = grpc_flag.split("=", 1)[1].partition(":")
    header, _, key = header_key.partition("=")
    assert set(apis.split(",")) == {"model-repository", "shared-memory", "statistics", "trace", "logging"}
    assert header == ADMIN_HEADER and len(key) >= 24
    assert http_flag.split("=", 1)[1] == grpc_flag.split("=", 1)[1]
    err = capsys.readouterr().err
    assert key not in err, "the key exists only on tritonserver's command line: never printed"
    again = supervisor_command(default_model_dir, tmp_path, "--expose-triton")
    assert grpc_flag not in again, "a new key for each start"

    # An operator's key would only ever go on that command line: it is not taken (and it says so).
    monkeypatch.setenv(triton_launch.ADMIN_KEY_ENV, "operator-chosen-key-123")
    chosen = supervisor_command(default_model_dir, tmp_path, "--expose-triton")
    assert not any("operator-chosen-key-123" in part for part in chosen)
    err = capsys.readouterr().err
    assert "operator-chosen-key-123" not in err and f"${triton_launch.ADMIN_KEY_ENV} is not used" in err


def test_restricted_protocol_flags_work_on_the_real_tritonserver(stack, tmp_path):
    """The flags as generated, on tritonserver 2.51 itself (an empty repository, loopback)."""
    import tritonclient.grpc as grpcclient
    local_only(stack)
    install = find_tritonserver(None, stack.log_path.parent)
    key = "k3y-for-the-test"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    repo = tmp_path / "empty_repository"
    repo.mkdir()
    cmd = server_command(install, repo, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port,
                         extra_args=restricted_args(key))
    proc = subprocess.Popen(cmd, env=dict(os.environ, **install.env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "tritonserver refused the flags"
            try:
                if request(base, "/v2/health/live", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert request(base, "/v2/repository/index", {})[0] == 403
        assert request(base, "/v2/repository/index", {}, {ADMIN_HEADER: "wrong"})[0] == 403
        assert request(base, "/v2/repository/index", {}, {ADMIN_HEADER: key})[0] == 200
        assert request(base, "/v2/logging", None, method="GET")[0] == 403
        assert request(base, "/v2")[0] == 200                       # metadata stays open
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live()
        with pytest.raises(Exception, match="restricted"):
            client.get_model_repository_index()
        assert client.get_model_repository_index(headers={GRPC_ADMIN_METADATA: key}) is not None
        with pytest.raises(Exception, match="restricted"):
            client.get_log_settings(headers={GRPC_ADMIN_METADATA: "wrong"})
    finally:
        proc.terminate()
        proc.wait(30)


# ----------------------------------------------------------------------------- CORS


def preflight(base, origin):
    return request(base, "/v1/chat/completions", None, method="OPTIONS", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_cors_is_off_unless_configured(stack):
    status, _, headers = preflight(stack.base_url, "https://app.example")
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    status, _, headers = request(stack.base_url, "/v1/chat/completions", chat(stack.model_name),
                                 {"Origin": "https://app.example"})
    assert status == 200 and "Access-Control-Allow-Origin" not in headers


def test_cors_for_configured_origins(stack, default_model_dir):
    with extra_frontend(str(default_model_dir), stack.grpc_url, "--served-model-name", stack.model_name,
                        "--cors-origin", "https://app.example", "--cors-origin", "http://localhost:3000",
                        env={"API_KEYS": "k1"}) as (base, _):
        # Preflight needs no key (browsers send none) and answers for allowed origins only.
        status, _, headers = preflight(base, "https://app.example")
        assert status == 204
        assert headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "POST" in headers["Access-Control-Allow-Methods"]
        assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
        assert "Origin" in headers.get("Vary", "")
        status, raw, headers = preflight(base, "https://evil.example")
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
        # Actual requests: the origin is echoed, request id and Retry-After readable by the page.
        auth = {"Authorization": "Bearer k1"}
        for body in (chat(stack.model_name), chat(stack.model_name, stream=True)):
            status, _, headers = request(base, "/v1/chat/completions", body, {"Origin": "http://localhost:3000", **auth})
            assert status == 200
            assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
            assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]
        status, _, headers = request(base, "/v1/chat/completions", chat(stack.model_name),
                                     {"Origin": "http://localhost:3000"})
        assert status == 401 and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        status, _, headers = request(base, "/v1/chat/completions", chat(stack.model_name),
                                     {"Origin": "https://evil.example", **auth})
        assert status == 200 and "Access-Control-Allow-Origin" not in headers
