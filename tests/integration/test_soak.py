"""Load: hundreds of concurrent streamed and non-streamed requests of mixed parameters against a
stack of our own with small decoder limits, for SOAK_SECONDS (default 75; `make soak` runs 600).

* Every request ends in a complete, checked response or a well-formed error; none is lost.
* No response carries another request's tokens: most requests force their own token with
  `logit_bias` (their text must be exactly that token's piece repeated), and a sample of seeded,
  sampled requests is replayed alone afterwards and must match token for token.
* Resident memory of the frontend and of tritonserver with its Python backend stubs grows at most
  10% from the end of the warm-up (minute 1, or a quarter of a short run) to the end. The bound
  rests on a 306 s run (SOAK_SECONDS=300, 256 clients, 42,823 requests, the shared 2-core box):
  frontend 227 MiB at 20 s, then between 231 and 245 MiB to the end of the load (peak 247: +9%
  on the 20 s sample); tritonserver + stubs 995 MiB at 20 s, 1026-1061 MiB after. It used to
  grow on (240 -> 330 MiB in 5 minutes): the tokenizer's word cache held up to 10,000 whole
  prompts; it is bounded now (llama_triton/text/tokenization.py WORD_CACHE_ENTRIES).
* The decoder's queue and KV limits (`--max-queue-size`, `--max-batch-size`, `--max-num-tokens`)
  turn excess load into 429 with Retry-After, quickly, not into timeouts: shown by the soak
  itself (clients back off as Retry-After says) and by a burst of BURST requests at once.

Figures are printed (`pytest -s`) so they can be quoted. Environment: SOAK_SECONDS, SOAK_REQUESTS
(stop after that many), SOAK_CONCURRENCY (default 256), SOAK_BURST (default 400).
"""
from __future__ import annotations

import asyncio
import json
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import psutil
import pytest

from tests.integration.stack import start_stack
from tests.integration.test_faults import frontend_process, http, idle, rss, triton_process, wait_for

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "75"))
SOAK_REQUESTS = int(os.environ.get("SOAK_REQUESTS", "0"))          # 0: no limit but time
CONCURRENCY = int(os.environ.get("SOAK_CONCURRENCY", "256"))
BURST = int(os.environ.get("SOAK_BURST", "400"))
WARMUP = 60.0 if SOAK_SECONDS >= 180 else max(10.0, SOAK_SECONDS / 4)
MAX_RSS_GROWTH = 0.10
CLIENT_TIMEOUT = 120.0
LIMITS = ("--max-batch-size", "32", "--max-queue-size", "96", "--max-num-tokens", "2048",
          "--max-seq-len", "512", "--max-tokens-cap", "64")

pytestmark = [pytest.mark.timeout(int(SOAK_SECONDS) + 600), pytest.mark.skipif(
    bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")),
    reason="measures a CPU stack of its own; the suite targets an external stack")]


@pytest.fixture(scope="module")
def soak_stack(default_model_dir, tmp_path_factory):
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("soak"), *LIMITS)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def forced_pieces(default_tokenizer) -> dict[int, str]:
    """Token id -> its text, for tokens whose text is three lower-case letters (no leading space):
    repeating one k times gives exactly its text k times."""
    hf = default_tokenizer.hf
    out = {}
    for tid in range(default_tokenizer.vocab_size):
        piece = hf.convert_ids_to_tokens(tid)
        if isinstance(piece, str) and re.fullmatch(r"[a-z]{3}", piece):
            out[tid] = piece
    assert len(out) > 2 * CONCURRENCY
    return out


# ----------------------------------------------------------------------------- requests and their checks


@dataclass
class Plan:
    route: str                      # chat | completions
    body: dict
    kind: str                       # forced | seeded | invalid
    piece: str = ""                 # forced: the text every token must be

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self.route == "chat" else "/v1/completions"


@dataclass
class Tally:
    sent: int = 0
    completed: int = 0
    errors: Counter = field(default_factory=Counter)     # well-formed errors by kind
    lost: list = field(default_factory=list)             # no complete answer: must stay empty
    wrong: list = field(default_factory=list)            # a complete answer with the wrong content
    no_retry_after: int = 0
    seeded: list = field(default_factory=list)           # (plan, texts) to replay alone
    latency_429: list = field(default_factory=list)
    by_route: Counter = field(default_factory=Counter)


WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly box".split()


def make_plan(rng: random.Random, model: str, token: int, piece: str) -> Plan:
    route = "chat" if rng.random() < 0.75 else "completions"
    stream = rng.random() < 0.5
    prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 40)))
    body: dict = {"model": model, "stream": stream}
    if route == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
        if rng.random() < 0.3:
            body["messages"].insert(0, {"role": "system", "content": "Be brief."})
    else:
        body["prompt"] = prompt
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": rng.random() < 0.5}
    r = rng.random()
    if r < 0.04:
        body.update(n=9, max_tokens=4)                               # past the limit: a 400
        return Plan(route, body, "invalid")
    if r < 0.22:
        body.update(max_tokens=rng.randint(6, 24), temperature=1.0, seed=rng.randint(0, 2 ** 31),
                    top_k=rng.choice([0, 40]), n=rng.choice([1, 1, 2]))
        return Plan(route, body, "seeded")
    body.update(max_tokens=rng.randint(1, 24), n=rng.choice([1, 1, 1, 2]), logit_bias={str(token): 100},
                temperature=rng.uniform(0, 1.5), top_p=rng.uniform(0.5, 1.0), top_k=rng.choice([0, 10, 50]),
                presence_penalty=rng.uniform(0, 0.5), frequency_penalty=rng.uniform(0, 0.5),
                repetition_penalty=rng.uniform(1.0, 1.2), min_p=rng.uniform(0, 0.1))
    if rng.random() < 0.2:
        if route == "chat":
            body.update(logprobs=True, top_logprobs=rng.randint(0, 5))
        else:
            body["logprobs"] = rng.randint(0, 5)
    return Plan(route, body, "forced", piece)


async def execute(session: aiohttp.ClientSession, base: str, plan: Plan):
    """(status, headers, parsed): parsed is the JSON body, or for a 200 stream the list of events."""
    async with session.post(base + plan.path, json=plan.body) as r:
        if r.status == 200 and plan.body["stream"]:
            events = []
            async for line in r.content:
                if line.startswith(b"data: "):
                    data = line[6:].strip()
                    events.append(data if data == b"[DONE]" else json.loads(data))
            return r.status, r.headers, events
        return r.status, r.headers, json.loads(await r.read())


def texts_of(plan: Plan, parsed) -> tuple[list[str], list[str | None], dict | None]:
    """Per-choice texts, finish reasons and usage of a 200 (streamed or not). Raises on bad framing."""
    n = plan.body.get("n", 1)
    if not plan.body["stream"]:
        choices = sorted(parsed["choices"], key=lambda c: c["index"])
        assert [c["index"] for c in choices] == list(range(n))
        get = (lambda c: c["message"]["content"]) if plan.route == "chat" else (lambda c: c["text"])
        return [get(c) for c in choices], [c["finish_reason"] for c in choices], parsed["usage"]
    assert parsed and parsed[-1] == b"[DONE]", "stream not ended by [DONE]"
    texts, reasons, usage = [""] * n, [None] * n, None
    ids = set()
    for ev in parsed[:-1]:
        if "error" in ev:
            raise StreamError(ev["error"])
        ids.add(ev["id"])
        usage = ev.get("usage") or usage
        for c in ev["choices"]:
            piece = (c["delta"].get("content") or "") if plan.route == "chat" else c["text"]
            texts[c["index"]] += piece
            if c["finish_reason"] is not None:
                reasons[c["index"]] = c["finish_reason"]
    assert len(ids) == 1, f"one id per stream, got {ids}"
    return texts, reasons, usage


class StreamError(Exception):
    def __init__(self, error: dict):
        super().__init__(error.get("code"))
        self.error = error


async def run_one(session, base: str, plan: Plan, tally: Tally) -> float:
    """Sends one request and files its outcome; returns how long the caller should back off."""
    tally.sent += 1
    tally.by_route[f"{plan.route}{' stream' if plan.body['stream'] else ''}"] += 1
    t0 = time.monotonic()
    try:
        status, headers, parsed = await execute(session, base, plan)
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as e:
        tally.lost.append(f"{type(e).__name__}: {e}")
        return 0.0
    if status != 200:
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if not (isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}):
            tally.lost.append(f"{status} without the error envelope: {str(parsed)[:200]}")
            return 0.0
        tally.errors[f"{status} {err['code']}"] += 1
        if status == 429:
            tally.latency_429.append(time.monotonic() - t0)
            if "Retry-After" not in headers:
                tally.no_retry_after += 1
                return 1.0
            return float(headers["Retry-After"])
        if plan.kind != "invalid" or status != 400:
            tally.wrong.append(f"unexpected {status} {err} for {plan.kind}")
        return 0.0
    if plan.kind == "invalid":
        tally.wrong.append("an invalid request was served")
        return 0.0
    try:
        texts, reasons, usage = texts_of(plan, parsed)
    except StreamError as e:
        tally.errors[f"stream error {e.error.get('code')}"] += 1
        if e.error.get("code") not in ("queue_full",):
            tally.wrong.append(f"stream error {e.error}")
        return 0.0
    except (AssertionError, KeyError, TypeError) as e:
        tally.lost.append(f"malformed 200: {e}")
        return 0.0
    tally.completed += 1
    if plan.kind == "forced":
        want = plan.piece * plan.body["max_tokens"]
        for text, reason in zip(texts, reasons):
            if text != want or reason != "length":
                tally.wrong.append(f"forced {plan.piece!r}x{plan.body['max_tokens']}: got {text!r} ({reason})")
        if usage is not None and usage["completion_tokens"] != plan.body["max_tokens"] * plan.body.get("n", 1):
            tally.wrong.append(f"usage {usage} for {plan.body['max_tokens']} x {plan.body.get('n', 1)}")
    elif plan.kind == "seeded" and len(tally.seeded) < 10_000:
        tally.seeded.append((plan, texts))
    return 0.0


# ----------------------------------------------------------------------------- memory sampling


@dataclass
class MemorySample:
    t: float
    frontend: int
    triton: int         # tritonserver + Python backend stubs


def sample_memory(stack, t0: float) -> MemorySample:
    fe = frontend_process(stack)
    tr = triton_process(stack)
    return MemorySample(time.monotonic() - t0, rss(fe), rss(tr, with_children=True) if tr else 0)


def mib(n: float) -> str:
    return f"{n / 2 ** 20:.0f} MiB"


# ----------------------------------------------------------------------------- the tests


def test_soak(soak_stack, forced_pieces):
    stack = soak_stack
    tokens = list(forced_pieces.items())
    random.Random(0).shuffle(tokens)
    tally = Tally()
    samples: list[MemorySample] = []
    rng = random.Random(2024)

    async def main():
        t0 = time.monotonic()
        deadline = t0 + SOAK_SECONDS
        counter = iter(range(10 ** 9))
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 16)
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)

        async def worker():
            while time.monotonic() < deadline and (not SOAK_REQUESTS or tally.sent < SOAK_REQUESTS):
                i = next(counter)
                token, piece = tokens[i % len(tokens)]     # distinct among requests in flight
                backoff = await run_one(session, stack.base_url, make_plan(rng, stack.model_name, token, piece), tally)
                if backoff:
                    await asyncio.sleep(backoff)

        async def monitor():
            while time.monotonic() < deadline:
                samples.append(await asyncio.to_thread(sample_memory, stack, t0))
                await asyncio.sleep(1.0)

        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            mon = asyncio.create_task(monitor())
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            mon.cancel()
        samples.append(await asyncio.to_thread(sample_memory, stack, t0))
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    warm = next(s for s in samples if s.t >= min(WARMUP, samples[-1].t))
    end = samples[-1]
    growth_fe = (end.frontend - warm.frontend) / warm.frontend
    growth_tr = (end.triton - warm.triton) / warm.triton
    errored = sum(tally.errors.values())
    print(f"\nsoak: {elapsed:.0f} s, {CONCURRENCY} concurrent clients, limits {' '.join(LIMITS)}")
    print(f"  sent {tally.sent}, completed {tally.completed}, errored {errored} {dict(tally.errors)}, "
          f"lost {len(tally.lost)}, wrong content {len(tally.wrong)}")
    print(f"  by route: {dict(tally.by_route)}")
    if tally.latency_429:
        lat = sorted(tally.latency_429)
        print(f"  429s answered in p50 {lat[len(lat) // 2] * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
              f"{tally.no_retry_after} without Retry-After")
    print(f"  RSS frontend: {mib(warm.frontend)} at {warm.t:.0f} s -> {mib(end.frontend)} at end "
          f"({growth_fe * 100:+.1f}%), peak {mib(max(s.frontend for s in samples))}")
    print(f"  RSS tritonserver+stubs: {mib(warm.triton)} at {warm.t:.0f} s -> {mib(end.triton)} at end "
          f"({growth_tr * 100:+.1f}%), peak {mib(max(s.triton for s in samples))}")
    step = max(1, len(samples) // 16)
    print("  RSS over time (s: frontend / tritonserver+stubs MiB): " + ", ".join(
        f"{s.t:.0f}: {s.frontend / 2 ** 20:.0f}/{s.triton / 2 ** 20:.0f}" for s in samples[::step] + samples[-1:]))
    assert not tally.lost, tally.lost[:10]
    assert not tally.wrong, tally.wrong[:10]
    assert tally.no_retry_after == 0
    assert tally.sent == tally.completed + errored
    assert tally.completed > 0
    assert set(k.split()[0] for k in tally.errors) <= {"429", "400"}, tally.errors
    assert growth_fe <= MAX_RSS_GROWTH and growth_tr <= MAX_RSS_GROWTH

    # A sample of the seeded requests, replayed alone, gives the same text: nothing leaked in.
    wait_for(lambda: idle(stack), timeout=120, what="idle decoder")
    sample = random.Random(7).sample(tally.seeded, min(24, len(tally.seeded)))

    async def replay():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
            for plan, texts in sample:
                status, _, parsed = await execute(session, stack.base_url, plan)
                assert status == 200, parsed
                assert texts_of(plan, parsed)[0] == texts, (plan.body, texts)
    asyncio.run(replay())
    print(f"  {len(sample)} seeded requests replayed alone: identical")


def test_burst_turns_excess_into_429_not_timeouts(soak_stack, forced_pieces):
    stack = soak_stack
    wait_for(lambda: idle(stack), timeout=120, what="idle decoder")
    tokens = list(forced_pieces.items())
    rng = random.Random(99)
    tally = Tally()
    plans = []
    for i in range(BURST):
        token, piece = tokens[i % len(tokens)]
        plan = make_plan(rng, stack.model_name, token, piece)
        if plan.kind != "forced":
            plan = Plan(plan.route, {**{k: v for k, v in plan.body.items() if k not in ("n", "seed")},
                                     "max_tokens": 16, "n": 1, "logit_bias": {str(token): 100}}, "forced", piece)
        plans.append(plan)

    async def main():
        connector = aiohttp.TCPConnector(limit=BURST + 16)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
            t0 = time.monotonic()
            await asyncio.gather(*(run_one(session, stack.base_url, p, tally) for p in plans))
            return time.monotonic() - t0
    took = asyncio.run(main())
    busy = tally.errors.get("429 queue_full", 0)
    lat = sorted(tally.latency_429) or [0.0]
    print(f"\nburst of {BURST} at once: {tally.completed} completed, {dict(tally.errors)}, lost {len(tally.lost)}; "
          f"429s in p50 {lat[len(lat) // 2] * 1000:.0f} ms / max {lat[-1] * 1000:.0f} ms, all with Retry-After: "
          f"{tally.no_retry_after == 0}; whole burst {took:.1f} s")
    assert not tally.lost and not tally.wrong, (tally.lost[:5], tally.wrong[:5])
    assert busy > 0 and tally.no_retry_after == 0
    assert tally.completed + busy == BURST
    assert lat[-1] < 10, "a full queue must answer at once, not after a wait"
    status, raw, _ = http(stack.base_url, "/metrics", method="GET")
    assert b'llama_triton_http_requests_total{route="/v1/chat/completions",status="429"}' in raw
    assert b"llama_triton_decoder_errors_total{kind=\"busy\"}" in raw
    # Still healthy and serving afterwards.
    assert http(stack.base_url, "/health")[0] == 200
    assert psutil.pid_exists(frontend_process(stack).pid)
