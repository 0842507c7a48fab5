"""Send a workload: the open loop (fixed arrival rate, each request timed from its intended send
time, so a stall is never hidden) and the closed loop (N connections in lock step, timed from the
actual send, which is what wrk and most tools report). Several processes share one schedule."""
from __future__ import annotations

import asyncio
import multiprocessing
import random
import re
import time

import aiohttp

from .recorder import Recorder
from .workload import Keys, Workload, arrivals, next_request, source_addresses

# asyncio's timers round up to whole milliseconds (twice, through selectors and epoll, so a wake
# can be 2 ms late). The loop wakes this early, then naps in slices of NAP_S with nanosleep,
# handling answers between naps: punctual to ~0.1 ms without spinning a core the stack needs.
EARLY_S = 0.0025
NAP_S = 0.0002
START_LEAD_S = 0.2      # time to open connections before the first intended send


OWNER = re.compile(r"^/api/v[0-9]+/users/([0-9]+)")


class Sender:
    """An HTTP client per source address; keep-alive connections, no limit on their number."""

    def __init__(self, base_url: str, w: Workload, tokens: dict | None = None):
        self.base_url = base_url.rstrip("/")
        self.tokens = tokens or {}
        self.sign_reads = w.signed_reads
        self.user_header = w.user_header
        self.timeout = aiohttp.ClientTimeout(total=w.timeout_s)
        self.sessions = [aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, local_addr=(ip, 0) if ip else None, ttl_dns_cache=None),
            timeout=self.timeout, skip_auto_headers=("User-Agent",))
            for ip in source_addresses(w.source_ips)]

    async def send(self, index: int, method: str, path: str, body):
        """Returns (outcome, headers): outcome "ok", an HTTP status, or a transport error kind."""
        session = self.sessions[index % len(self.sessions)]
        headers = {}
        owner = OWNER.match(path)
        if self.tokens and (method != "GET" or self.sign_reads):  # as the user whose path it is
            token = self.tokens.get(owner.group(1)) if owner else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
        if self.user_header and owner:
            headers[self.user_header] = owner.group(1)
        try:
            async with session.request(method, self.base_url + path, json=body, headers=headers or None) as response:
                await response.read()
                return ("ok" if response.status < 400 else str(response.status)), response.headers
        except asyncio.TimeoutError:
            return "timeout", None
        except aiohttp.ClientConnectionError:
            return "connect", None
        except aiohttp.ClientError as exc:
            return type(exc).__name__, None

    async def close(self):
        for session in self.sessions:
            await session.close()


async def open_loop(w: Workload, keys: Keys | None, send, recorder: Recorder, part: int = 0, parts: int = 1,
                    clock=time.perf_counter, progress=None) -> None:
    """Fire each request at its intended time whatever the previous ones are doing."""
    rng = random.Random(w.seed * 1000 + part)
    start = clock() + START_LEAD_S
    recorder.started_at = time.time() + (start - clock())  # so faults can be placed on this timeline
    in_flight: set[asyncio.Task] = set()

    async def one(seq: int, second: int, intended: float, kind: str, method: str, path: str, body):
        sent_at = clock()
        outcome, headers = await send(seq, method, path, body)
        done = clock()
        # The same second as on_send: int(intended - start) can fall just below a whole second.
        recorder.on_done(second, kind, int((done - intended) * 1e6), int((done - sent_at) * 1e6),
                         outcome, headers, at=intended - start)
        if progress:
            progress(outcome)

    for seq, offset in enumerate(arrivals(w, part, parts)):
        intended = start + offset
        wait = intended - clock()
        if wait > EARLY_S:
            await asyncio.sleep(wait - EARLY_S)
        await asyncio.sleep(0)  # answers that arrived are handled, not held, even when behind
        while (rest := intended - clock()) > 0:
            time.sleep(min(rest, NAP_S))  # an answer arriving meanwhile is timed late, never early
            if intended - clock() > 0:
                await asyncio.sleep(0)
        recorder.scheduled += 1
        recorder.on_send(int(offset), int((clock() - intended) * 1e6))
        kind, method, path, body = next_request(w, keys, rng, seq * parts + part)
        task = asyncio.ensure_future(one(seq, int(offset), intended, kind, method, path, body))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await _drain(in_flight, w.timeout_s + 1, recorder)


async def closed_loop(w: Workload, keys: Keys | None, send, recorder: Recorder, part: int = 0, parts: int = 1,
                      clock=time.perf_counter, progress=None) -> None:
    """`connections` loops, each sending its next request only when the last one answered."""
    start = clock()
    end = start + w.duration_s
    loops = [c for c in range(w.connections) if c % parts == part]
    budget = {"left": w.max_requests // parts}

    async def loop(conn: int):
        rng = random.Random(w.seed * 1000 + conn)
        seq = 0
        while clock() < end and budget["left"] > 0:
            budget["left"] -= 1
            intended = clock()
            recorder.scheduled += 1
            recorder.on_send(int(intended - start), 0)
            kind, method, path, body = next_request(w, keys, rng, seq)
            outcome, headers = await send(conn, method, path, body)
            latency = int((clock() - intended) * 1e6)
            recorder.on_done(int(intended - start), kind, latency, latency, outcome, headers)
            if progress:
                progress(outcome)
            seq += 1

    tasks = {asyncio.ensure_future(loop(c)) for c in loops}
    await _drain(tasks, w.duration_s + w.timeout_s + 1, recorder)


async def _drain(tasks: set, timeout: float, recorder: Recorder) -> None:
    """Wait for what is in flight; whatever has no answer by the hard stop is counted as dropped."""
    if not tasks:
        return
    done, pending = await asyncio.wait(set(tasks), timeout=timeout)
    for task in pending:
        task.cancel()
    recorder.dropped += len(pending)


def run_part(w: Workload, base_url: str, users: list, posts: list, part: int, parts: int, counters=None,
             tokens: dict | None = None) -> dict:
    """One process's share of the run; returns its recorder as a dict, to be merged."""
    keys = Keys(users, posts, w) if w.path is None else None
    recorder = Recorder()

    def progress(outcome):
        if counters is not None:
            with counters.get_lock():
                counters[0 if outcome == "ok" else 1] += 1

    async def main():
        sender = Sender(base_url, w, tokens)
        try:
            loop = open_loop if w.mode == "open" else closed_loop
            await loop(w, keys, sender.send, recorder, part, parts, progress=progress)
        finally:
            await sender.close()

    asyncio.run(main())
    return recorder.to_dict()


def _part_main(queue, *args) -> None:
    try:
        queue.put(("ok", run_part(*args)))
    except BaseException as exc:  # report it: the parent must not wait forever for this part
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def run(w: Workload, base_url: str, users: list, posts: list, processes: int, counters=None,
        tokens: dict | None = None) -> Recorder:
    """Run the workload over `processes` OS processes and merge what they measured. `counters`, a
    multiprocessing Array('q', 2) of (ok, errors), gives live progress; `tokens`, user id -> access
    token, lets each write go as its owner."""
    if processes <= 1:
        return Recorder.merge([run_part(w, base_url, users, posts, 0, 1, counters, tokens)])
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_part_main, args=(queue, w, base_url, users, posts, p, processes, counters, tokens),
                         daemon=True) for p in range(processes)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + w.duration_s + 2 * w.timeout_s + 30
    results = []
    for _ in procs:
        status, payload = queue.get(timeout=max(1.0, deadline - time.monotonic()))
        if status != "ok":
            raise RuntimeError(f"a load generator process failed: {payload}")
        results.append(payload)
    for proc in procs:
        proc.join(timeout=10)
    return Recorder.merge(results)
