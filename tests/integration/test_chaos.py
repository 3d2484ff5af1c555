"""Chaos: a soak of mixed streamed and non-streamed requests while, at random times, the decoder's
process (the `tensorrt_llm` Python backend stub), a frontend worker and tritonserver are killed
with SIGKILL, on a stack of our own with two frontend workers: CHAOS_SECONDS of load (default 45,
and at least one kill of each kind; `make chaos` runs 600).

Every request ends in a complete, checked response or a well-formed error, within the request
timeout:

* 0 hung: the client's limit is the frontend's --request-timeout plus 10 s;
* 0 lost: no malformed answer, no connection error, except for requests whose connection the
  killed frontend worker itself held (the kernel resets them the moment it dies, idle pooled
  keep-alive connections included; counted as "cut", and only allowed within a few seconds after a
  frontend kill);
* 0 answers with another request's tokens: most requests force their own token with `logit_bias`
  (their text must be exactly that token repeated; no two requests in flight share one), and a
  sample of seeded sampled requests is replayed alone afterwards and must match;
* every kill is followed by recovery: chat answers 200 again (the decoder or tritonserver within
  120 s) and a killed frontend worker is replaced (within 30 s; the other one serves meanwhile);
  the next kill waits for it.

Counts and recovery times are printed (`pytest -s`). CHAOS_SEED picks another schedule.
"""
from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import pytest

from tests.integration.stack import start_stack, wait_for
from tests.integration.test_faults import http, idle, triton_process
from tests.integration.test_soak import (Plan, StreamError, execute, forced_pieces, make_plan,  # noqa: F401
                                         texts_of)

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "45"))
CHAOS_SEED = int(os.environ.get("CHAOS_SEED", "16"))
CONCURRENCY = int(os.environ.get("CHAOS_CONCURRENCY", "16"))
REQUEST_TIMEOUT = 60.0
CLIENT_TIMEOUT = REQUEST_TIMEOUT + 10
CUT_WINDOW_S = 3.0
RECOVERY_S = {"decoder": 120.0, "tritonserver": 120.0, "frontend": 30.0}
LIMITS = ("--max-batch-size", "16", "--max-queue-size", "48", "--max-num-tokens", "2048",
          "--max-seq-len", "512", "--max-tokens-cap", "32")

pytestmark = [pytest.mark.timeout(int(CHAOS_SECONDS) + 480), pytest.mark.skipif(
    bool(os.environ.get("LLAMA_TRITON_EXTERNAL_URL")),
    reason="kills processes of a CPU stack of its own; the suite targets an external stack")]


@pytest.fixture(scope="module")
def chaos_stack(default_model_dir, tmp_path_factory):
    s = start_stack(str(default_model_dir), tmp_path_factory.mktemp("chaos"), *LIMITS, "--frontend-workers", "2",
                    "--max-restarts", "1000", frontend_args=("--request-timeout", str(REQUEST_TIMEOUT)))
    yield s
    s.stop()


@dataclass
class Outcomes:
    sent: int = 0
    completed: int = 0
    errors: Counter = field(default_factory=Counter)    # well-formed errors by status and code
    cut: int = 0                                        # connection held by a killed frontend worker
    lost: list = field(default_factory=list)
    hung: list = field(default_factory=list)
    wrong: list = field(default_factory=list)
    seeded: list = field(default_factory=list)


@dataclass
class Kill:
    kind: str
    pid: int
    at: float
    recovered_after: float | None = None


POOLED_S = 1.0    # a request begun this soon after a frontend kill may get a pooled connection to it


def in_cut_window(kills: list[Kill], started: float, ended: float) -> bool:
    """Cut by a killed frontend worker: begun before the kill (or so soon after it that the client's
    pool handed it an idle keep-alive connection to the dead worker) and failed within the window."""
    return any(k.kind == "frontend" and started <= k.at + POOLED_S and k.at <= ended <= k.at + CUT_WINDOW_S
               for k in kills)


async def one(session, base: str, plan: Plan, out: Outcomes, kills: list[Kill]) -> float:
    out.sent += 1
    t0 = time.monotonic()
    try:
        status, headers, parsed = await execute(session, base, plan)
    except asyncio.TimeoutError:
        out.hung.append(f"no answer within {CLIENT_TIMEOUT} s: {plan.body}")
        return 0.0
    except (aiohttp.ClientError, ValueError) as e:
        if in_cut_window(kills, t0, time.monotonic()):
            out.cut += 1
        else:
            out.lost.append(f"{type(e).__name__}: {e}")
        return 0.5
    if status != 200:
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if not (isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}):
            out.lost.append(f"{status} without the error envelope: {str(parsed)[:200]}")
            return 0.0
        out.errors[f"{status} {err['code']}"] += 1
        if status in (429, 503) and "Retry-After" not in headers:
            out.wrong.append(f"{status} without Retry-After")
        if 400 <= status < 500 and status != 429 and plan.kind != "invalid":
            out.wrong.append(f"a server failure answered as the client's fault: {status} {err}")
        return min(float(headers.get("Retry-After", 0)), 2.0)
    if plan.kind == "invalid":
        out.wrong.append("an invalid request was served")
        return 0.0
    try:
        texts, reasons, usage = texts_of(plan, parsed)
    except StreamError as e:
        out.errors[f"stream error {e.error.get('code')}"] += 1
        if e.error.get("type") != "server_error" and e.error.get("code") != "queue_full":
            out.wrong.append(f"stream error {e.error}")
        return 0.5
    except (AssertionError, KeyError, TypeError) as e:
        out.lost.append(f"malformed 200: {e}")
        return 0.0
    out.completed += 1
    if plan.kind == "forced":
        want = plan.piece * plan.body["max_tokens"]
        for text, reason in zip(texts, reasons):
            if text != want or reason != "length":
                out.wrong.append(f"forced {plan.piece!r}x{plan.body['max_tokens']}: got {text!r} ({reason})")
    elif plan.kind == "seeded":
        out.seeded.append((plan, texts))
    return 0.0


def chat_ok(stack) -> bool:
    try:
        return http(stack.base_url, "/v1/chat/completions",
                    {"model": stack.model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                    timeout=10)[0] == 200
    except OSError:
        return False


def recovered(stack, kill: Kill) -> bool:
    """Chat answers 200, and after a frontend kill the launcher has replaced the dead worker (the
    other one served meanwhile)."""
    if kill.kind == "frontend":
        pids = stack.listening_frontends()
        if len(pids) < 2 or kill.pid in pids:
            return False
    return chat_ok(stack)


def victim(stack, kind: str, rng: random.Random) -> int | None:
    if kind == "decoder":
        pids = [pid for pid, model in stack.stub_names().items() if model == "tensorrt_llm"]
    elif kind == "frontend":
        pids = sorted(p.pid for p in stack.processes()["frontend"])
    else:
        t = triton_process(stack)
        pids = [t.pid] if t else []
    return rng.choice(pids) if pids else None


def test_chaos(chaos_stack, forced_pieces):  # noqa: F811
    stack = chaos_stack
    tokens = list(forced_pieces.items())
    random.Random(CHAOS_SEED).shuffle(tokens)
    rng = random.Random(CHAOS_SEED)
    out = Outcomes()
    kills: list[Kill] = []

    async def main():
        t0 = time.monotonic()
        deadline = t0 + CHAOS_SECONDS
        counter = iter(range(10 ** 9))
        connector = aiohttp.TCPConnector(limit=CONCURRENCY + 8, force_close=True)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
            stop_load = asyncio.Event()

            async def client():
                while not stop_load.is_set():
                    token, piece = tokens[next(counter) % len(tokens)]
                    pause = await one(session, stack.base_url, make_plan(rng, stack.model_name, token, piece),
                                      out, kills)
                    if pause:
                        await asyncio.sleep(pause)

            async def chaos():
                # One of each kind in a random order, then again while time is left; each kill waits
                # for the recovery of the one before and a few seconds of normal serving.
                kinds: list[str] = []
                while time.monotonic() < deadline or len(kills) < 3:
                    if not kinds:
                        kinds = ["decoder", "frontend", "tritonserver"]
                        rng.shuffle(kinds)
                    await asyncio.sleep(rng.uniform(3.0, 8.0))
                    kind = kinds.pop()
                    pid = await asyncio.to_thread(victim, stack, kind, rng)
                    assert pid is not None, f"no {kind} process to kill"
                    kill = Kill(kind, pid, time.monotonic())
                    os.kill(pid, signal.SIGKILL)
                    kills.append(kill)
                    await asyncio.to_thread(wait_for, lambda: recovered(stack, kill), RECOVERY_S[kind] + 30, 0.5,
                                            f"recovery after killing the {kind}")
                    kill.recovered_after = time.monotonic() - kill.at
                await asyncio.sleep(3.0)         # a little normal serving after the last recovery
                stop_load.set()

            clients = [asyncio.create_task(client()) for _ in range(CONCURRENCY)]
            await chaos()
            await asyncio.gather(*clients)
        return time.monotonic() - t0

    elapsed = asyncio.run(main())
    errored = sum(out.errors.values())
    print(f"\nchaos: {elapsed:.0f} s, {CONCURRENCY} clients, seed {CHAOS_SEED}; {len(kills)} kills")
    for k in kills:
        print(f"  {k.kind:<12} pid {k.pid:<7} at {k.at - kills[0].at:6.1f} s: serving again after "
              f"{k.recovered_after:.1f} s")
    print(f"  sent {out.sent}, completed {out.completed}, well-formed errors {errored} {dict(out.errors)}, "
          f"cut with a killed frontend worker {out.cut}, hung {len(out.hung)}, lost {len(out.lost)}, "
          f"wrong {len(out.wrong)}")
    assert not out.hung, out.hung[:5]
    assert not out.lost, out.lost[:5]
    assert not out.wrong, out.wrong[:5]
    assert out.sent == out.completed + errored + out.cut
    assert {k.kind for k in kills} == {"decoder", "frontend", "tritonserver"}
    for k in kills:
        assert k.recovered_after is not None and k.recovered_after <= RECOVERY_S[k.kind], k
    assert stack.proc.poll() is None, "the launcher gave up"

    # Seeded requests replayed alone give the same text: no tokens of another request leaked in.
    wait_for(lambda: idle(stack), timeout=120, what="idle decoder")
    sample = random.Random(CHAOS_SEED).sample(out.seeded, min(12, len(out.seeded)))

    async def replay():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)) as session:
            for plan, texts in sample:
                status, _, parsed = await execute(session, stack.base_url, plan)
                assert status == 200, parsed
                assert texts_of(plan, parsed)[0] == texts, (plan.body, texts)
    asyncio.run(replay())
    print(f"  {len(sample)} seeded requests replayed alone: identical")
