"""A volumetric flood: many clients, each from its own loopback source address (127.0.1.1,
127.0.1.2, ...: on Linux all of 127/8 is loopback, so to the edge and the rate limiter each is
another machine), sending as fast as they are answered, bounded in time and in requests. It runs
in a thread of its own (asyncio and aiohttp, like the load generator) beside whatever measures the
normal traffic: the hostile-input test (tests/test_hostile_flood.py) and `bench_topology flood`.

The normal clients' addresses start at 127.0.0.1 (workload.source_addresses), so the flood's never
share a rate-limit bucket with them."""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import threading
import time

import aiohttp

from .workload import check_target

FIRST = ipaddress.IPv4Address("127.0.1.1")
MAX_SOURCES = 4096
MAX_REQUESTS = 1_000_000
PROBLEM = "application/problem+json"


def addresses(count: int) -> list[str]:
    if not 1 <= count <= MAX_SOURCES:
        raise ValueError(f"sources: between 1 and {MAX_SOURCES}")
    return [str(FIRST + i) for i in range(count)]


class Flood:
    """`start()`, then `stop()` for the summary: requests sent, answers by status, how many 429s
    lacked problem+json or Retry-After, transport errors, and the rate achieved."""

    def __init__(self, url: str, *, sources: int = 64, connections: int = 2, duration_s: float = 10.0,
                 max_requests: int = 200_000, timeout_s: float = 10.0):
        check_target(url)
        self.url, self.sources = url, addresses(sources)
        self.connections, self.duration_s, self.timeout_s = connections, duration_s, timeout_s
        self.max_requests = min(max_requests, MAX_REQUESTS)
        self.statuses: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.bad_refusals = 0
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = self._ended = 0.0

    def start(self) -> "Flood":
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="flood", daemon=True)
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)
        self._ended = self._ended or time.monotonic()
        seconds = max(self._ended - self._started, 1e-9)
        return {"sources": len(self.sources), "sent": self.sent, "statuses": dict(self.statuses),
                "errors": dict(self.errors), "refusals_not_problem_json": self.bad_refusals,
                "seconds": round(seconds, 2), "sent_per_s": round(self.sent / seconds, 1),
                "limited_share": round(self.statuses.get(429, 0) / self.sent, 4) if self.sent else 0.0}

    async def _main(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        sessions = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=(ip, 0)),
                                          timeout=timeout, skip_auto_headers=("User-Agent",))
                    for ip in self.sources]
        deadline = time.monotonic() + self.duration_s
        try:
            await asyncio.gather(*(self._client(s, deadline) for s in sessions for _ in range(self.connections)))
        finally:
            self._ended = time.monotonic()
            await asyncio.gather(*(s.close() for s in sessions))

    async def _client(self, session: aiohttp.ClientSession, deadline: float) -> None:
        while not self._stop.is_set() and time.monotonic() < deadline and self.sent < self.max_requests:
            self.sent += 1
            try:
                async with session.get(self.url) as response:
                    await response.read()
                    self.statuses[response.status] += 1
                    if response.status == 429 and not (response.headers.get("Content-Type", "").startswith(PROBLEM)
                                                        and response.headers.get("Retry-After")):
                        self.bad_refusals += 1
            except asyncio.TimeoutError:
                self.errors["timeout"] += 1
            except aiohttp.ClientError as exc:
                self.errors[type(exc).__name__] += 1
