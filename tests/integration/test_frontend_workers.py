"""Several frontend workers on one port (`--frontend-workers 2`): both listen, both serve,
/metrics from whichever answers counts the requests of all of them, and their 429 gate admits the
decoder's capacity across both (frontend/tenancy/admission.py)."""
import asyncio
import concurrent.futures
import json
import re
import urllib.request

import aiohttp

import psutil
import pytest

from tests.integration.stack import start_stack

REQUESTS = 16
BATCH, QUEUE = 2, 4


@pytest.fixture(scope="module")
def two_workers(default_model_dir, tmp_path_factory):
    # A decoder of 2 batch slots and 4 queue places (capacity 6), so the gate's test fills it.
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("workers"), "--frontend-workers", "2",
                    "--max-tokens-cap", "512", "--max-seq-len", "1024", "--max-batch-size", str(BATCH),
                    "--max-queue-size", str(QUEUE))
    yield s
    s.stop()


def frontend_workers(stack) -> list[psutil.Process]:
    return stack.processes()["frontend"]


def chat(stack, i: int) -> dict:
    # urllib opens a new connection per request, so the kernel spreads them over the workers.
    body = json.dumps({"model": stack.model_name, "max_tokens": 4, "seed": i,
                       "messages": [{"role": "user", "content": f"count to {i}"}]}).encode()
    req = urllib.request.Request(f"{stack.base_url}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 200
        return json.loads(r.read())


def completed_chats(stack) -> float:
    with urllib.request.urlopen(f"{stack.base_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    m = re.search(r'^llama_triton_http_requests_total\{route="/v1/chat/completions",status="200"\} (\S+)$',
                  text, re.M)
    return float(m.group(1)) if m else 0.0


def test_both_workers_listen_on_the_port(two_workers):
    workers = frontend_workers(two_workers)
    assert len(workers) == 2
    for p in workers:
        listening = [c for c in p.net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == two_workers.port]
        assert listening, f"worker {p.pid} does not listen on {two_workers.port}"


def test_requests_spread_and_metrics_sum_over_workers(two_workers):
    before = completed_chats(two_workers)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: chat(two_workers, i), range(REQUESTS)))
    assert all(r["choices"][0]["finish_reason"] in ("stop", "length") for r in results)
    # Every scrape (each on a new connection, so from either worker) sees all of them.
    for _ in range(6):
        assert completed_chats(two_workers) - before == REQUESTS
    # Both workers served some of the 16 connections: their access lines carry their pids.
    ids = {r["id"] for r in results}
    served_by = {}
    for line in two_workers.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"frontend.access"' in line:
            rec = json.loads(line)
            if rec.get("request_id") in ids:
                served_by[rec["request_id"]] = rec["pid"]
    assert set(served_by) == ids
    assert set(served_by.values()) == {p.pid for p in frontend_workers(two_workers)}


def test_the_429_gate_counts_the_open_requests_of_every_worker(two_workers):
    """Finding 13 (issue 24): each worker counted its own open decoder requests, so the replica's
    gate admitted workers x capacity and the decoder refused the excess itself, after a round
    trip. Two long streams run (the batch is full), then a burst of requests on new connections
    (spread over both workers): exactly the decoder's two queue places are admitted across both
    workers, every other request is refused by the gate, none by the decoder."""
    capacity = BATCH + QUEUE
    burst = 38
    body = {"model": two_workers.model_name, "messages": [{"role": "user", "content": "count"}],
            "stream": True, "ignore_eos": True}

    async def main():
        connector = aiohttp.TCPConnector(force_close=True, limit=0)   # a connection per request
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            url = f"{two_workers.base_url}/v1/chat/completions"
            running = []
            for _ in range(BATCH):
                resp = await session.post(url, json={**body, "max_tokens": 500})
                assert resp.status == 200
                await resp.content.readline()          # generating: a batch slot is taken
                running.append(resp)
            answers: list = []
            answered = asyncio.Event()

            async def one():
                async with session.post(url, json={**body, "max_tokens": 4}) as resp:
                    if resp.status == 200:
                        await resp.read()
                        answers.append((200, None))
                    else:
                        answers.append((resp.status, (await resp.json())["error"]["message"]))
                    answered.set()
            tasks = [asyncio.create_task(one()) for _ in range(burst)]
            # Every request is answered except the ones waiting in the decoder's queue behind the
            # two long streams; then the long streams are let go, and the queued ones finish.
            while len(answers) < burst - QUEUE:
                await answered.wait()
                answered.clear()
            for resp in running:
                resp.close()
            await asyncio.gather(*tasks)
            return answers
    answers = asyncio.run(main())
    refused = [m for status, m in answers if status == 429]
    by_gate = [m for m in refused if f"(decoder capacity {capacity})" in m]
    assert refused == by_gate, [m for m in refused if m not in by_gate][:3]      # none by the decoder
    assert by_gate and all(s in (200, 429) for s, _ in answers)


# ----------------------------------------------------------------------------- fair share (issue 25)
FAIR_KEYS = {"alpha": "sk-fair-alpha-Kd8Jf7Hg6", "beta": "sk-fair-beta-Lp0Ok9Ij8"}
FAIR_METRICS_KEY = "fair-metrics-Zx1Cv2Bn3"
# alpha's streams: distinct lengths, so that the decoder's batch slots free one at a time
ALPHA_TOKENS = (300, 420, 540, 660, 780, 900)


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_key_below_its_share_goes_ahead_of_a_full_decoders_queue(two_workers, default_model_dir):
    """The done-when check of issue 25's fair share. A frontend with two keys against this stack's
    decoder (2 batch slots + 4 queue places, CPU mode): alpha fills all six places with long
    ignore_eos streams. beta's request is not refused: it waits for a place, then goes ahead of
    alpha's requests still queued in the decoder (its fair-share rank 0 against their 2..5) and
    streams to its end while alpha's still run; every 429 (alpha's extra requests) goes to alpha.
    On main beta got 429 at once (the gate knew no keys), and with the place but without the rank
    it queued behind all four of alpha's."""
    from tests.integration.frontends import extra_frontend
    env = {"API_KEYS": ",".join(f"{i}:{k}" for i, k in FAIR_KEYS.items()), "METRICS_KEYS": FAIR_METRICS_KEY}
    with extra_frontend(str(default_model_dir), two_workers.grpc_url, "--served-model-name", two_workers.model_name,
                        "--max-tokens-cap", "1000", env=env) as (base, _proc):
        url = f"{base}/v1/chat/completions"
        events: list[tuple[str, str]] = []      # (stream, "first" | "end"), in the order they arrived
        statuses: list[tuple[str, int]] = []

        def body(max_tokens: int, stream: bool = True) -> dict:
            return {"model": two_workers.model_name, "messages": [{"role": "user", "content": "go"}],
                    "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}

        async def stream(session, name: str, key: str, max_tokens: int):
            # The status line comes with the decoder's first answer (frontend/openai/sse.py DECODER_ANSWERED):
            # it marks the moment the request left the decoder's queue.
            async with session.post(url, json=body(max_tokens), headers={"Authorization": f"Bearer {key}"}) as resp:
                statuses.append((name[:-1], resp.status))
                if resp.status != 200:
                    return
                events.append((name, "first"))
                async for _line in resp.content:
                    pass
                events.append((name, "end"))

        async def metrics(session) -> str:
            async with session.get(f"{base}/metrics", headers={"Authorization": f"Bearer {FAIR_METRICS_KEY}"}) as r:
                return await r.text()

        async def until(session, cond):
            while not cond(await metrics(session)):
                await asyncio.sleep(0.05)       # polling /metrics; the condition is the state itself

        async def refused_probe(session) -> None:
            async with session.post(url, json=body(1, stream=False),
                                    headers={"Authorization": f"Bearer {FAIR_KEYS['alpha']}"}) as resp:
                statuses.append(("a", resp.status))
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert "fair share" in (await resp.json())["error"]["message"]

        async def main():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
                alphas = [asyncio.create_task(stream(session, f"a{i}", FAIR_KEYS["alpha"], n))
                          for i, n in enumerate(ALPHA_TOKENS[:BATCH])]
                # the two batch slots first (running: they answered), then the four queue places
                await until(session, lambda t: len(events) == BATCH)
                alphas += [asyncio.create_task(stream(session, f"a{i}", FAIR_KEYS["alpha"], n))
                           for i, n in enumerate(ALPHA_TOKENS) if i >= BATCH]
                await until(session, lambda t: _metric(t, "llama_triton_decoder_streams") == len(ALPHA_TOKENS))
                await refused_probe(session)                  # alpha alone, at her share: all of it
                beta = asyncio.create_task(stream(session, "b0", FAIR_KEYS["beta"], 48))
                await until(session, lambda t: _metric(t, "llama_triton_fair_share_waiting") == 1
                            or ("b0", "first") in events or ("b", 429) in statuses)
                assert ("b", 429) not in statuses, "beta, below its share, was refused"
                await refused_probe(session)                  # over her share of two keys
                await beta
                for t in alphas:
                    t.cancel()
                await asyncio.gather(*alphas, return_exceptions=True)
        asyncio.run(main())

    assert ("b", 200) in statuses and all(s == 200 for k, s in statuses if k == "b")
    assert [s for k, s in statuses if k == "a" and s != 200] == [429, 429]   # both probes, and only alpha's
    at_first = events[:events.index(("b0", "first"))]
    started = {n for n, e in at_first if e == "first" and n.startswith("a")}
    # Two of alpha's ran when beta came; at most one more took the slot freed before beta reached
    # the decoder. The other three were still queued, and beta went first.
    assert len(started) <= 3, events
    at_end = events[:events.index(("b0", "end"))]
    running = {n for n, e in at_end if e == "first"} - {n for n, e in at_end if e == "end"} - {"b0"}
    assert running, events                                  # beta streamed while alpha's still ran
