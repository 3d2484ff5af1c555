"""Tenants through the real app against FakeDecoder: the prefix-cache salt per key, who may read
/metrics, per-key counters, and the smaller findings of issue 25 (bad Authorization bytes,
`nosniff`, bounded echoes, the chat_template_kwargs allowlist)."""
from __future__ import annotations

import asyncio
import hashlib
import logging

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from frontend.http import create_app
from frontend.decoder.interface import DecoderCapabilities
from frontend.settings import parse_args
from llama_triton.trtllm.tensor_contract import decoder_io
from tests.handlers.conftest import FakeDecoder, sse_events

KEYS = {"alice": "sk-alice-7Hq2ZpXw9Lr4Tn6Vb8Ym", "bob": "sk-bob-Qa1Ws2Ed3Rf4Tg5Yh6Uj", "carol": "sk-carol-Zx9Cv8Bn7M"}
METRICS_KEY = "metrics-Mm6Kk5Jj4Hh3Gg2Ff1"
ANON_KEY = "sk-unnamed-Pp0Oo9Ii8Uu7Yy6Tt"       # a bare key: its id is derived
ROUTER_KEY = "router-Rr5Ee4Ww3Qq2"               # SMG's own key, as llama-triton cluster lists it


class KeyedHarness:
    """The app with API keys ($API_KEYS: `id:key` items and a bare key) and a metrics key."""

    def __init__(self, model_dir, tokenizer, monkeypatch, *args: str, decoder: FakeDecoder | None = None):
        monkeypatch.setenv("API_KEYS", ",".join([f"{i}:{k}" for i, k in KEYS.items()] + [ANON_KEY, f"router:{ROUTER_KEY}"]))
        monkeypatch.setenv("METRICS_KEYS", METRICS_KEY)
        self.decoder = decoder or FakeDecoder(tokenizer)
        self.settings = parse_args(["--model-dir", str(model_dir), "--log-format", "text", *args])
        self.app = create_app(self.settings, tokenizer, decoder=self.decoder)
        self.loop = asyncio.new_event_loop()
        self.client = TestClient(TestServer(self.app), loop=self.loop)
        self.loop.run_until_complete(self.client.start_server())

    def close(self):
        self.loop.run_until_complete(self.client.close())
        self.loop.close()

    def request(self, method: str, path: str, key: str | None = None, body: dict | None = None,
                headers: dict | None = None):
        async def go():
            h = {"Content-Type": "application/json", **(headers or {})}
            if key is not None:
                h["Authorization"] = f"Bearer {key}"
            resp = await self.client.request(method, path, data=None if body is None else orjson.dumps(body), headers=h)
            return resp.status, resp.headers, await resp.read()
        return self.loop.run_until_complete(go())

    def chat(self, key: str | None, **extra):
        body = {"model": self.settings.served_model_name, "messages": [{"role": "user", "content": "Hi"}], **extra}
        return self.request("POST", "/v1/chat/completions", key, body)

    def salt_of_last(self) -> int:
        return int(self.decoder.requests[-1][1]["cache_salt_id"].item())

    def raw(self, data: bytes) -> bytes:
        """Bytes straight onto the socket (a client library would re-encode the header)."""
        async def go():
            reader, writer = await asyncio.open_connection(self.client.host, self.client.port)
            writer.write(data)
            await writer.drain()
            out = await reader.read(65536)
            writer.close()
            return out
        return self.loop.run_until_complete(go())


@pytest.fixture
def keyed(default_model_dir, default_tokenizer, monkeypatch):
    made = []

    def make(*args, **kw):
        h = KeyedHarness(default_model_dir, default_tokenizer, monkeypatch, *args, **kw)
        made.append(h)
        h.decoder.says("Hello")
        return h
    yield make
    for h in made:
        h.close()


# ----------------------------------------------------------------------------- the prefix-cache salt


def test_each_key_salts_the_prefix_cache_apart(keyed):
    h = keyed()
    salts = {}
    for name in ("alice", "bob", "alice"):
        assert h.chat(KEYS[name])[0] == 200
        salts.setdefault(name, set()).add(h.salt_of_last())
    assert len(salts["alice"]) == 1 and salts["alice"] != salts["bob"]
    alice = salts["alice"].pop()
    # prompt_cache_key and cache_salt narrow a key's scope; they never reach another key's
    h.chat(KEYS["alice"], prompt_cache_key="project-x")
    by_cache_key = h.salt_of_last()
    h.chat(KEYS["bob"], prompt_cache_key="project-x")
    assert len({alice, by_cache_key, h.salt_of_last()}) == 3
    h.chat(KEYS["alice"], cache_salt="s1")
    with_salt = h.salt_of_last()
    h.chat(KEYS["alice"], cache_salt="s1")
    assert h.salt_of_last() == with_salt and with_salt not in (alice, by_cache_key)


def test_a_share_group_shares_its_cache(keyed):
    h = keyed("--cache-share-group", "team=alice,bob")
    found = []
    for name in ("alice", "bob", "carol"):
        h.chat(KEYS[name])
        found.append(h.salt_of_last())
    assert found[0] == found[1] != found[2]


def test_cache_salt_is_refused_where_the_decoder_cannot_scope_its_cache(keyed, default_tokenizer):
    gpu_in, gpu_out = decoder_io("gpu")
    decoder = FakeDecoder(default_tokenizer)
    decoder.caps = DecoderCapabilities(frozenset(t.name for t in gpu_in), frozenset(t.name for t in gpu_out),
                                       {"max_seq_len": "512"})
    h = keyed(decoder=decoder)
    status, _, raw = h.chat(KEYS["alice"], cache_salt="s1")
    assert status == 400 and orjson.loads(raw)["error"]["param"] == "cache_salt", raw
    # the per-key scope it cannot honour is not the client's doing: served, without the input
    assert h.chat(KEYS["alice"])[0] == 200
    assert "cache_salt_id" not in decoder.requests[-1][1]


# ----------------------------------------------------------------------------- /metrics and per-key counters


def test_the_routers_key_reads_the_load_gauges_alone(keyed):
    """SMG polls each replica's /metrics with its own key (`router:KEY` in the replica's keys file)
    for the load gauges it routes by: that key gets those, and no per-key or per-user series (a
    client can read SMG's /engine_metrics, which relays them)."""
    h = keyed()
    h.chat(KEYS["alice"], user="alice@example.com")
    status, _, raw = h.request("GET", "/metrics", ROUTER_KEY)
    assert status == 200, raw
    names = {line.split("{")[0].split(" ")[0] for line in raw.decode().splitlines() if not line.startswith("#")}
    assert names == {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"}, names
    assert b"alice" not in raw and b"key_id" not in raw
    # a client key still may not
    assert h.request("GET", "/metrics", KEYS["alice"])[0] == 403


def test_metrics_take_a_metrics_key_never_a_client_key(keyed):
    h = keyed()
    h.chat(KEYS["alice"], user="alice@example.com")
    h.chat(KEYS["alice"])
    h.chat(ANON_KEY)
    h.chat("sk-wrong")
    assert h.request("GET", "/metrics")[0] == 401
    status, _, raw = h.request("GET", "/metrics", KEYS["alice"])
    assert status == 403 and orjson.loads(raw)["error"]["code"] == "metrics_forbidden"
    status, headers, raw = h.request("GET", "/metrics", METRICS_KEY)
    assert status == 200 and headers["X-Content-Type-Options"] == "nosniff"
    text = raw.decode()
    assert 'llama_triton_key_requests_total{key_id="alice"} 2.0' in text
    anon_id = "key-" + hashlib.sha256(b"llama-triton key id\0" + ANON_KEY.encode()).hexdigest()[:8]
    assert f'llama_triton_key_requests_total{{key_id="{anon_id}"}} 1.0' in text
    # (token counts come from the Triton client: tests/integration/test_tenants.py checks them)
    assert "bob" not in text.split("llama_triton_key_requests_total", 1)[1].split("# HELP", 1)[0]
    for secret in [*KEYS.values(), ANON_KEY, METRICS_KEY, "sk-wrong", "alice@example.com"]:
        assert secret not in text
    # the user label is keyed: the plain SHA-256 prefix of the user (guessable) is not there
    assert 'llama_triton_user_requests_total{user="' in text
    assert hashlib.sha256(b"alice@example.com").hexdigest()[:16] not in text


# ----------------------------------------------------------------------------- the smaller findings


def test_a_non_utf8_authorization_byte_is_a_401(keyed, caplog):
    h = keyed()
    caplog.set_level(logging.INFO)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}]})
    answer = h.raw(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Authorization: Bearer \xff\xfe\r\nConnection: close\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"invalid_api_key"' in answer
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_api_responses_are_nosniff(keyed):
    h = keyed()
    for status, headers, _ in (h.chat(KEYS["alice"]), h.chat(KEYS["alice"], stream=True), h.chat(None),
                               h.request("GET", "/v1/models", KEYS["alice"]), h.request("GET", "/nope")):
        assert headers.get("X-Content-Type-Options") == "nosniff", status


def test_model_names_and_paths_are_echoed_bounded(keyed):
    h = keyed()
    long_name = "m" * 20000
    status, _, raw = h.request("POST", "/v1/chat/completions", KEYS["alice"],
                               {"model": long_name, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 404 and len(raw) < 500 and b"20000 characters" in raw
    status, _, raw = h.request("GET", "/" + "p" * 5000, KEYS["alice"])
    assert status == 404 and len(raw) < 500


def test_unknown_field_names_are_logged_bounded(keyed, caplog):
    h = keyed()
    caplog.set_level(logging.WARNING, logger="frontend.request_models")
    extra = {("x" * 5000) + str(i): 1 for i in range(50)}
    assert h.chat(KEYS["alice"], **extra)[0] == 200
    (record,) = [r for r in caplog.records if "unknown field" in r.getMessage()]
    assert len(record.getMessage()) < 3000 and "50 unknown field(s)" in record.getMessage()


@pytest.mark.parametrize("key", ["custom_tools", "builtin_tools", "messages_override", "x" * 300])
def test_chat_template_kwargs_is_an_allowlist(keyed, key):
    h = keyed()
    status, _, raw = h.chat(KEYS["alice"], chat_template_kwargs={key: [{"type": "function"}]})
    err = orjson.loads(raw)["error"]
    assert status == 400 and err["param"].startswith("chat_template_kwargs.") and len(err["param"]) < 120, raw
    # the switches templates read are accepted (this template reads none of them: no effect)
    base = h.chat(KEYS["alice"], seed=1)
    dated = h.chat(KEYS["alice"], seed=1, chat_template_kwargs={"date_string": "today", "enable_thinking": False})
    assert base[0] == dated[0] == 200


def test_streams_carry_the_key_salt_too(keyed):
    h = keyed()
    status, _, raw = h.chat(KEYS["bob"], stream=True)
    assert status == 200 and sse_events(raw)[-1] == "[DONE]"
    streamed = h.salt_of_last()
    h.chat(KEYS["bob"])
    assert h.salt_of_last() == streamed
