"""The pieces of self-healing that need no Triton: the launcher's restart policy and process
watching (llama_triton/serve/supervisor.py) and the frontend's decoder health state machine
(frontend/decoder/health.py) driven by fake probes. tests/integration/test_self_heal.py and
test_chaos.py run them for real."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from frontend.decoder import health as decoder_health
from frontend.decoder.health import DecoderHealth, ProbeFailed
from llama_triton.failure_file import failure_report, write_failure_report
from llama_triton.serve.supervisor import CrashLoop, RestartPolicy, dead

# ----------------------------------------------------------------------------- restart policy


def test_restart_delays_back_off_and_reset_after_a_stable_run():
    p = RestartPolicy("x", max_crashes=100, window=1000)
    delays = []
    for i in range(8):
        p.started(i * 10.0)
        delays.append(p.crashed(i * 10.0 + 1))
    assert delays == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    p.started(100.0)
    assert p.crashed(100.0 + p.stable_after) == 0.0        # ran a minute: at once again


def test_crash_budget_gives_up_loudly():
    p = RestartPolicy("frontend worker 0", max_crashes=3, window=60)
    for t in (0.0, 1.0, 2.0):
        p.crashed(t)
    with pytest.raises(CrashLoop, match="frontend worker 0 died 4 times within 60 s"):
        p.crashed(3.0)
    # Crashes older than the window do not count.
    q = RestartPolicy("x", max_crashes=2, window=10)
    for t in (0.0, 20.0, 40.0, 60.0):
        q.crashed(t)


def test_dead_sees_killed_and_zombie_processes():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watched = {child.pid: "tensorrt_llm"}
        assert dead(watched) == {}
        child.kill()
        # Waits for the exit without reaping it (WNOWAIT): the child is a zombie now, not polled for.
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
        assert dead(watched) == watched
    finally:
        child.kill()
        child.wait()
    assert dead(watched) == watched                              # reaped: gone


def test_failure_report_is_read_only_when_newer(tmp_path):
    path = tmp_path / "decoder-failed"
    assert failure_report(path, 0.0) is None
    write_failure_report(str(path), "the decoder cannot generate: CUDA error")
    assert "CUDA error" in failure_report(path, time.time() - 60)
    assert failure_report(path, time.time() + 60) is None          # from before the last restart
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- decoder health


class FakeClock:
    """DecoderHealth's clock, moved by the test: silence, probe spacing and rechecks are decided by
    it, so a check that must not probe yet is asserted at a known time, not after a sleep."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeDecoder:
    """Probe answers on demand: 'ok', 'fail' or 'hang'."""

    def __init__(self):
        self.reach_answer = "ok"
        self.work_answer = "ok"
        self.calls = []

    async def _answer(self, kind, answer):
        self.calls.append(kind)
        if answer == "fail":
            raise ProbeFailed(f"{kind} failed")
        if answer == "hang":
            await asyncio.sleep(3600)

    async def reach(self):
        await self._answer("reach", self.reach_answer)

    async def work(self):
        await self._answer("work", self.work_answer)


def make_health(fake, reports=None, clock=None):
    return DecoderHealth(fake.reach, fake.work, (reports.append if reports is not None else None),
                         **({"clock": clock} if clock is not None else {}))


@pytest.fixture(autouse=True)
def short_probe_timeouts(monkeypatch):
    # The probe timeouts run on the event loop's clock (asyncio.timeout): short, so a hung probe
    # is given up in a fraction of a second. Every other timing below is the FakeClock's.
    monkeypatch.setattr(decoder_health, "REACH_TIMEOUT_S", 0.2)
    monkeypatch.setattr(decoder_health, "WORK_TIMEOUT_S", 0.2)


def test_a_silent_stream_and_a_failed_probe_end_every_open_request_then_recovery():
    """One watchdog step at a time (DecoderHealth.check) on a fake clock."""
    async def scenario():
        fake, clock = FakeDecoder(), FakeClock()
        h = make_health(fake, clock=clock)
        ended = []
        a = h.track(lambda reason: ended.append(("a", reason)))
        h.track(lambda reason: ended.append(("b", reason)))
        clock.advance(decoder_health.SILENCE_S / 2)
        await h.check()
        assert fake.calls == []                    # quiet, but not yet for SILENCE_S: no probe
        clock.advance(decoder_health.SILENCE_S)
        await h.check()
        assert fake.calls == ["reach"]             # silent streams: the watchdog probes
        assert h.ready and not ended               # probe passed: a quiet stream is no failure
        fake.reach_answer = "fail"
        clock.advance(decoder_health.PROBE_EVERY_S / 2)
        await h.check()
        assert fake.calls == ["reach"] and h.ready   # probes are spaced PROBE_EVERY_S apart
        clock.advance(decoder_health.PROBE_EVERY_S)
        await h.check()
        assert len(ended) == 2
        assert not h.ready and "reach failed" in h.down_reason
        assert {name for name, _ in ended} == {"a", "b"}
        h.untrack(a)
        fake.reach_answer = "ok"
        clock.advance(decoder_health.RECHECK_S / 2)
        await h.check()
        assert not h.ready and fake.calls.count("reach") == 2   # down: rechecked only every RECHECK_S
        clock.advance(decoder_health.RECHECK_S)
        await h.check()
        assert h.ready                             # rechecked while down
        assert h.open_requests == 0
        await h.stop()
    asyncio.run(scenario())


def test_the_watchdog_task_runs_the_checks():
    """The same steps, run by the watchdog task itself: a silent stream is probed without a call
    to check(); the probe's failure ends the open request, which the test waits for (an event)."""
    async def scenario():
        fake, clock = FakeDecoder(), FakeClock()
        fake.reach_answer = "fail"
        h = make_health(fake, clock=clock)
        ended = asyncio.Event()
        h.track(lambda reason: ended.set())
        clock.advance(2 * decoder_health.SILENCE_S)
        await ended.wait()
        assert fake.calls == ["reach"] and not h.ready
        await h.stop()
    asyncio.run(scenario())


def test_hung_decoder_is_down_after_repeated_unanswered_probes():
    async def scenario():
        fake = FakeDecoder()
        fake.reach_answer = "hang"
        h = make_health(fake)
        ended = []
        h.track(ended.append)
        assert await h.reach() is None and h.ready      # one unanswered probe: no verdict
        assert await h.reach() is False and not h.ready
        assert ended and "answered no probe" in ended[0]
        await h.stop()
    asyncio.run(scenario())


def test_is_broken_tells_a_refusal_from_a_broken_decoder():
    async def scenario():
        fake, clock = FakeDecoder(), FakeClock()
        reports = []
        h = make_health(fake, reports, clock)
        assert await h.is_broken() is False               # both probes pass: the request's fault
        fake.work_answer = "hang"
        assert await h.is_broken() is False and h.ready   # a slow queue is a decoder at work
        fake.work_answer = "fail"                         # GPU: executor fails, backend answers
        assert await h.is_broken() is True and not h.ready
        assert reports and "cannot generate" in reports[0]   # told to the launcher
        # Back only when the work probe passes again, not the reach probe alone.
        clock.advance(2 * decoder_health.RECHECK_S)
        fake.calls.clear()
        await h.check()
        assert fake.calls == ["reach", "work"] and not h.ready
        fake.work_answer = "ok"
        clock.advance(2 * decoder_health.RECHECK_S)
        await h.check()
        assert h.ready
        fake.reach_answer = "fail"
        reports.clear()
        assert await h.is_broken() is True and not reports    # dead stub: the launcher sees it itself
        await h.stop()
    asyncio.run(scenario())


def test_suspect_probes_at_once():
    async def scenario():
        fake, clock = FakeDecoder(), FakeClock()
        h = make_health(fake, clock=clock)
        await h.check()
        clock.advance(3600)
        await h.check()
        assert fake.calls == []                   # nothing open, nothing suspected: no probes
        fake.reach_answer = "fail"
        ended = asyncio.Event()
        h.track(lambda reason: ended.set())       # not silent on the fake clock: only suspect() probes
        h.suspect()                               # the watchdog task wakes at once
        await ended.wait()
        assert fake.calls == ["reach"] and not h.ready
        await h.stop()
    asyncio.run(scenario())


# ----------------------------------------------------------------------------- the launcher's decision


def test_launcher_restarts_tritonserver_for_a_dead_stub_or_a_reported_decoder(tmp_path):
    """Supervisor.triton_failure on a stand-in tritonserver with a stand-in stub under it."""
    from llama_triton.serve.launcher import build_parser
    from llama_triton.serve.supervisor import Supervisor
    args = build_parser().parse_args(["serve", "--work-dir", str(tmp_path), "--decoder-restart-delay", "0.5"])
    sup = Supervisor(args)
    sup.state_dir.mkdir(parents=True)
    sup.triton = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stub = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sup.triton_ready(0.0)
        sup.stubs = {stub.pid: "tensorrt_llm"}       # decoder_processes() finds real stubs by name
        assert sup.triton_failure(1.0) is None
        # A frontend's report from before this tritonserver was ready is old news.
        write_failure_report(str(sup.failure_file), "old")
        os.utime(sup.failure_file, (sup.triton_ready_wall - 10, sup.triton_ready_wall - 10))
        assert sup.triton_failure(1.0) is None
        write_failure_report(str(sup.failure_file), "the decoder cannot generate: CUDA error")
        assert "a frontend reported the decoder broken" in sup.triton_failure(1.0)
        sup.failure_file.unlink()
        stub.kill()
        stub.wait()
        assert sup.triton_failure(2.0) is None                   # --decoder-restart-delay 0.5
        assert sup.triton_failure(2.6) == "a decoder process (Python backend stub) died"
        sup.triton.kill()
        sup.triton.wait()
        assert sup.triton_failure(3.0).startswith("tritonserver exited with code")
    finally:
        for p in (sup.triton, stub):
            p.kill()
            p.wait()


def test_launcher_restarts_a_dead_frontend_worker_alone_then_gives_up(tmp_path, monkeypatch, capsys):
    from llama_triton.serve.launcher import build_parser
    from llama_triton.serve.supervisor import Supervisor
    args = build_parser().parse_args(["serve", "--work-dir", str(tmp_path), "--frontend-workers", "2",
                                      "--max-restarts", "1"])
    sup = Supervisor(args)
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    spawned = []

    def spawn(i):
        sup.frontends[i] = subprocess.Popen(sleeper)
        sup.frontend_policies[i].started(time.monotonic())
        spawned.append(i)
    monkeypatch.setattr(sup, "spawn_frontend", spawn)
    sup.frontends = [None, None]
    sup.frontend_policies = [RestartPolicy(f"frontend worker {i}", 1, 300) for i in range(2)]
    sup.frontend_due = [0.0, 0.0]
    from frontend.tenancy import admission
    admission.create_file(sup.admission_file, 2)
    try:
        spawn(0)
        spawn(1)
        other = sup.frontends[1]
        held = [admission.SharedAdmission(sup.admission_file, i) for i in range(2)]
        assert held[0].try_acquire(None)[0] and held[1].try_acquire(None)[0]   # each worker has one open
        sup.frontends[0].kill()
        sup.frontends[0].wait()
        sup.supervise_frontends(100.0)          # noticed: restart due at once (first death)
        assert sup.frontends[0] is None
        assert held[1].open == 1                # the dead worker's place in the 429 gate is free again
        sup.supervise_frontends(100.2)          # restarted, alone
        assert spawned == [0, 1, 0] and sup.frontends[1] is other
        assert "ERROR frontend worker 0" in capsys.readouterr().err
        sup.frontends[0].kill()
        sup.frontends[0].wait()
        with pytest.raises(CrashLoop, match="frontend worker 0 died 2 times"):
            sup.supervise_frontends(101.0)      # --max-restarts 1: the launcher gives up
    finally:
        for p in sup.frontends:
            if p is not None:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------- the two health endpoints


def test_readiness_and_liveness_endpoints(default_model_dir, default_tokenizer):
    """/health is 503 as soon as the decoder is down; /health/live only once it has been down
    longer than --liveness-timeout (the replica is no longer healing itself)."""
    from aiohttp.test_utils import TestClient, TestServer

    from frontend.http import SERVICE, create_app
    from frontend.settings import parse_args

    settings = parse_args(["--model-dir", str(default_model_dir), "--triton-grpc", "127.0.0.1:1",
                           "--liveness-timeout", "30"])

    async def scenario():
        app = create_app(settings, default_tokenizer)
        async with TestClient(TestServer(app)) as client:
            health = app[SERVICE].decoder.health
            assert (await client.get("/health/live")).status == 200
            health.mark_down("the decoder failed a probe: Stub process 'tensorrt_llm_0_0' is not healthy.")
            r = await client.get("/health")
            assert r.status == 503
            r = await client.get("/health/live")
            assert r.status == 200 and (await r.json())["status"] == "alive"
            health.down_since -= 31
            r = await client.get("/health/live")
            body = await r.json()
            assert r.status == 503 and body["status"] == "dead" and "not healthy" in body["reason"]
            # A new request while down: 503 with Retry-After.
            r = await client.post("/v1/chat/completions", json={
                "model": settings.served_model_name, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status == 503 and "Retry-After" in r.headers
            assert (await r.json())["error"]["code"] == "model_not_ready"
    asyncio.run(scenario())


def test_requests_that_fail_together_share_one_work_probe():
    """Finding 11 (issue 24): every failing request started its own one-token work probe; now the
    requests that fail together wait on one, and one leaving does not cancel it for the others."""
    async def scenario():
        fake = FakeDecoder()
        release = asyncio.Event()

        working = asyncio.Event()

        async def slow_work():
            fake.calls.append("work")
            working.set()
            await release.wait()

        h = DecoderHealth(fake.reach, slow_work)
        judges = [asyncio.create_task(h.is_broken()) for _ in range(8)]
        await working.wait()                    # the work probe is under way
        judges[0].cancel()                      # its client hung up
        release.set()
        verdicts = await asyncio.gather(*judges[1:])
        assert verdicts == [False] * 7
        assert fake.calls.count("work") == 1 and h.probes["work"] == 1
        assert fake.calls.count("reach") == 1
        await h.stop()
    asyncio.run(scenario())
