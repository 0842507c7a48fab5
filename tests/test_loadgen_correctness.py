"""The generator measures what users would see (issue 3, section 4):

- a fake-clock stall: every request scheduled inside a 1 s generator stall is timed from its
  intended send, so the stall shows up in its latency (no coordinated omission);
- a sink with a known service-time distribution: open-mode percentiles match it;
- a sink that stalls once for 1 s: the closed loop under-reports p99, the open loop does not.

No Django stack: the sink is a tiny aiohttp server on 127.0.0.1 in a background thread with its own
event loop, on a free port, stopped at the end of the module.
"""
import asyncio
import random
import threading
import time

import pytest
from aiohttp import web

from workbench.loadgen import engine
from workbench.loadgen.engine import START_LEAD_S, open_loop
from workbench.loadgen.recorder import Recorder
from workbench.loadgen.workload import Workload, arrivals

SINK_LOW_S, SINK_HIGH_S = 0.010, 0.030          # /sink: uniform service time, p50 20 ms, p95 29 ms
STALL_NORMAL_S = 0.002                          # /stall/<tag>: normal service time
STALL_AFTER_S, STALL_FOR_S = 1.0, 1.0           # ... and once, 1 s after its first request, a 1 s stall


# --- the sink ----------------------------------------------------------------------------------------

class Sink:
    def __init__(self):
        self.rng = random.Random(2024)
        self.drawn: list[float] = []                     # service times /sink drew, in seconds
        self.stalls: dict[str, dict] = {}                # tag -> {"t0", "held", "served"}
        self.peers: set[str] = set()                     # source addresses seen by /peer
        self.port = None
        self._ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(target=self._serve, name="test-sink", daemon=True)

    async def sink(self, request):
        delay = self.rng.uniform(SINK_LOW_S, SINK_HIGH_S)
        self.drawn.append(delay)
        await asyncio.sleep(delay)          # concurrent: no queueing behind other requests
        return web.Response(text="ok", headers={"X-App-Server": "sink"})

    async def peer(self, request):
        self.peers.add(request.remote)
        return web.Response(text="ok")

    async def stall(self, request):
        now = time.monotonic()
        state = self.stalls.setdefault(request.match_info["tag"],
                                       {"t0": now + STALL_AFTER_S, "held": 0, "served": 0})
        t0 = state["t0"]
        if t0 <= now < t0 + STALL_FOR_S:      # everything arriving inside the window waits for its end
            state["held"] += 1
            await asyncio.sleep(t0 + STALL_FOR_S - now)
        await asyncio.sleep(STALL_NORMAL_S)
        state["served"] += 1
        return web.Response(text="ok")

    def _serve(self):
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            app = web.Application()
            app.router.add_get("/sink", self.sink)
            app.router.add_get("/stall/{tag}", self.stall)
            app.router.add_get("/peer", self.peer)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # surface it in the test, not a hang
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def start(self):
        self._thread.start()
        assert self._ready.wait(10), "the sink did not start"
        if self._error:
            raise self._error
        return self

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the sink did not stop"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def sink():
    s = Sink().start()
    yield s
    s.stop()


def run_against(sink_url: str, **workload) -> tuple[Recorder, Workload]:
    w = Workload(timeout_s=10, **workload).validate()
    started = time.monotonic()
    recorder = engine.run(w, sink_url, [], [], processes=1)
    assert time.monotonic() - started < w.duration_s + 20, "the run took far longer than asked"
    return recorder, w


def assert_counts_add_up(recorder: Recorder):
    s = recorder.summary(1.0)
    assert s["sent"] == s["ok"] + s["error_count"] + s["dropped"], s
    assert s["scheduled"] == s["sent"], s
    rows = recorder.timeseries()
    assert sum(r["sent"] for r in rows) == s["sent"]
    assert sum(r["ok"] for r in rows) == s["ok"]


# --- fake clock ---------------------------------------------------------------------------------------

class FakeClock:
    """Real time (so asyncio's sleeps still make progress) plus an injected offset. Its first reading
    is exactly `base`; once `stall_after` real seconds have passed, time jumps forward by `stall_s`
    once, as if the generator had been frozen that long."""

    def __init__(self, base: float, stall_after: float | None = None, stall_s: float = 1.0):
        self.base, self.stall_after, self.stall_s = base, stall_after, stall_s
        self.real0 = None
        self.offset = 0.0
        self.stall_start = self.stall_end = None

    def __call__(self) -> float:
        now = time.perf_counter()
        if self.real0 is None:
            self.real0 = now
        elapsed = now - self.real0
        if self.stall_after is not None and self.stall_start is None and elapsed >= self.stall_after:
            self.stall_start = self.base + elapsed          # the last instant before the freeze
            self.offset = self.stall_s
            self.stall_end = self.stall_start + self.stall_s
        return self.base + elapsed + self.offset


class CapturingRecorder(Recorder):
    """Keeps each request's (seq, second, latency_us, service_us); the fake send passes seq back."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_done(self, second, kind, latency_us, service_us, outcome, headers=None, **kw):
        self.rows.append((int(headers["X-Seq"]), second, latency_us, service_us))
        super().on_done(second, kind, latency_us, service_us, outcome, headers, **kw)


async def fake_send(seq, method, path, body):
    await asyncio.sleep(0.002)
    return "ok", {"X-Seq": str(seq), "X-App-Server": "fake"}


def run_open_loop(w: Workload, clock: FakeClock) -> CapturingRecorder:
    recorder = CapturingRecorder()

    async def main():
        await asyncio.wait_for(open_loop(w, None, fake_send, recorder, clock=clock), timeout=30)

    asyncio.run(main())
    return recorder


def test_requests_scheduled_inside_a_generator_stall_are_timed_from_their_intended_send():
    rate = 200
    w = Workload(rate=rate, duration_s=2.5, path="/fake").validate()
    clock = FakeClock(base=5000.0, stall_after=START_LEAD_S + 0.8, stall_s=1.0)
    started = time.monotonic()
    recorder = run_open_loop(w, clock)
    assert time.monotonic() - started < 15

    start = clock.base + START_LEAD_S             # open_loop's start: its first clock() + the lead
    offsets = list(arrivals(w))
    assert clock.stall_start is not None, "the fake stall never happened"
    assert start + 0.7 < clock.stall_start < start + 1.0
    assert len(recorder.rows) == len(offsets) == recorder.sent == recorder.ok == 500
    assert recorder.dropped == 0

    inside, before, after = [], [], []
    for seq, second, latency_us, service_us in recorder.rows:
        intended = start + offsets[seq]
        assert second == int(offsets[seq])
        if clock.stall_start <= intended < clock.stall_end:
            inside.append((intended, latency_us, service_us))
        elif intended < clock.stall_start - 0.3:
            before.append(latency_us)
        elif intended >= clock.stall_end + 0.3:
            after.append(latency_us)

    assert rate - 1 <= len(inside) <= rate + 1
    for intended, latency_us, service_us in inside:
        owed_us = (clock.stall_end - intended) * 1e6
        # Timed from the intended send: the part of the stall it waited through is in its latency.
        assert latency_us >= owed_us - 2, (intended - start, latency_us, owed_us)
        # Timed from the actual send, it would have looked fast: that is what must not be reported.
        assert service_us < 300_000, service_us
    # The first request of the stall waited about the whole second.
    assert max(lat for _, lat, _ in inside) >= 0.99e6
    # Requests well outside the stall are not inflated: the stall is where it happened, not everywhere.
    assert before and after
    assert max(before) < 300_000 and max(after) < 300_000

    s = recorder.summary(w.duration_s)
    assert s["latency"]["max_ms"] >= 990
    # 200 of the 500 requests were scheduled inside the stall: the slowest 5% waited most of it.
    assert s["latency"]["p95_ms"] >= 800
    assert s["latency"]["p50_ms"] < 300
    assert s["service_time"]["p99_ms"] < 300
    # The generator, not the server, set the pace for ~40% of the sends: the run is marked invalid.
    assert recorder.late >= len(inside)
    assert s["valid"] is False


def test_per_second_buckets_of_sends_and_answers_agree():
    """A request's answer is counted in the second its send was scheduled in, even when the float
    round trip (start + offset) - start falls just below a whole second."""
    # A start instant for which (start + 1.0) - start < 1.0 in floating point.
    # Such an instant is found just below a power of two, where start + 1.0 loses a bit.
    base = next(b for b in (1023.0 + i * 1e-7 for i in range(100_000))
                if int(((b + START_LEAD_S) + 1.0) - (b + START_LEAD_S)) == 0)
    w = Workload(rate=50, duration_s=2.1, path="/fake").validate()
    recorder = run_open_loop(w, FakeClock(base=base))
    assert recorder.sent == recorder.ok == 105
    rows = recorder.timeseries()
    assert [(r["t"], r["sent"], r["ok"]) for r in rows] == [(0, 50, 50), (1, 50, 50), (2, 5, 5)]


# --- known service time ------------------------------------------------------------------------------

def test_open_mode_percentiles_match_a_known_service_time(sink):
    before = len(sink.drawn)
    recorder, w = run_against(sink.url, path="/sink", mode="open", rate=100, duration_s=3)
    drawn = sorted(sink.drawn[before:])
    assert_counts_add_up(recorder)
    assert recorder.sent == recorder.ok == len(drawn) == 300, (recorder.sent, recorder.ok, len(drawn))
    assert recorder.dropped == 0 and not recorder.errors

    def sample_pct(q):
        return drawn[min(len(drawn) - 1, int(q / 100 * len(drawn)))] * 1000

    s = recorder.summary(w.duration_s)
    p50, p95 = s["latency"]["p50_ms"], s["latency"]["p95_ms"]
    # The sink drew from uniform(10, 30) ms: p50 20 ms, p95 29 ms.
    assert 18.5 <= sample_pct(50) <= 21.5 and 28.0 <= sample_pct(95) <= 30.0
    # Every latency includes its own service time, so each percentile is at least the sample's ...
    assert p50 >= sample_pct(50) * 0.999 - 0.05, (p50, sample_pct(50))
    assert p95 >= sample_pct(95) * 0.999 - 0.05, (p95, sample_pct(95))
    # ... and not wildly above it. The margins are wide because the suite runs on two workers
    # whose stacks share two cores with this sink (CI saw p95 64 ms once); a latency measured
    # from the wrong moment (the run's start, the previous send) would be off by seconds.
    assert 19.0 <= p50 <= 20 + 80, s["latency"]
    assert 28.5 <= p95 <= 29 + 200, s["latency"]
    assert s["latency"]["max_ms"] < 30 + 500
    assert s["latency"]["p50_ms"] >= s["service_time"]["p50_ms"] - 0.05
    assert s["attribution"] == {"X-App-Server": {"sink": 300}}


# --- closed vs open under a stall --------------------------------------------------------------------

def test_closed_loop_under_reports_p99_while_open_loop_shows_the_stall(sink):
    closed, _ = run_against(sink.url, path="/stall/closed", mode="closed", connections=4, duration_s=4)
    opened, _ = run_against(sink.url, path="/stall/open", mode="open", rate=200, duration_s=4)
    for recorder in (closed, opened):
        assert_counts_add_up(recorder)
        assert recorder.dropped == 0 and not recorder.errors

    held_closed, held_open = sink.stalls["closed"]["held"], sink.stalls["open"]["held"]
    # Both runs met the stall: the closed loop with at most one request per connection, the open
    # loop with everything scheduled during that second.
    assert 1 <= held_closed <= 4, held_closed
    assert held_open >= 150, held_open
    c, o = closed.summary(4.0)["latency"], opened.summary(4.0)["latency"]
    assert c["max_ms"] >= 500 and o["max_ms"] >= 500, (c, o)

    assert o["p99_ms"] >= 300, o
    assert o["p95_ms"] >= 100, o
    assert o["p99_ms"] >= 5 * c["p99_ms"], (f"closed p99 {c['p99_ms']} ms vs open p99 {o['p99_ms']} ms "
                                            f"({closed.sent} closed requests, {held_closed} held)")
    # The closed loop slowed down instead: it sent far fewer requests during the stall second.
    assert c["p99_ms"] < 250, (c, closed.sent)


def test_connections_come_from_many_loopback_addresses(sink):
    """source_ips spreads connections over 127.0.0.1.. so per-IP limits see many clients."""
    sink.peers.clear()
    recorder, _ = run_against(sink.url, path="/peer", rate=200, duration_s=1.0, source_ips=8)
    assert recorder.ok == recorder.sent == 200
    assert sink.peers == {f"127.0.0.{i}" for i in range(1, 9)}


def test_processes_share_one_schedule_and_their_results_merge(sink):
    """Two generator processes together send exactly the asked profile, and one merged result."""
    w = Workload(path="/peer", rate=200, duration_s=2.0, processes=2, timeout_s=10).validate()
    recorder = engine.run(w, sink.url, [], [], processes=2)
    assert_counts_add_up(recorder)
    assert recorder.scheduled == 400 and recorder.ok == 400
    assert [row["sent"] for row in recorder.timeseries()] == [200, 200]
