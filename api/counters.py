"""Counters kept in each worker's memory and added up across workers in the `state` Valkey.

Counting costs no round trip: a worker adds to an in-memory Counter, and at most every FLUSH_S
adds what it counted to one hash per counter set (one pipelined HINCRBY per name). The controller
and the dashboard read the hashes. Used for queries per database node (api.routing.stats) and
the application cache's hits and misses (api.caching.metrics).
"""
from __future__ import annotations

import collections
import logging
import threading
import time

log = logging.getLogger(__name__)

FLUSH_S = 0.5

_all: list["Counters"] = []

# A second sink for every count, in the same process: api.metrics sets it (the app server's
# Prometheus counters). None until then, so counting outside the app servers costs nothing more.
mirror = None


class Counters:
    def __init__(self, key: str):
        self.key = key
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()
        self._flushed_at = 0.0
        _all.append(self)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
        if mirror is not None:
            mirror(self.key, name, n)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._flushed_at < FLUSH_S:
            return
        with self._lock:
            if not self._counts:
                return
            counts = dict(self._counts)
            self._counts.clear()
            self._flushed_at = now
        try:
            from api.state import state_client
            pipe = state_client().pipeline(transaction=False)
            for name, n in counts.items():
                pipe.hincrby(self.key, name, n)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - counting must never fail a request; put them back
            log.warning("counters %s not flushed: %s", self.key, exc)
            with self._lock:
                self._counts.update(counts)

    def totals(self, client) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(self.key).items()}


def flush_all(force: bool = False) -> None:
    """Each set flushes at most every FLUSH_S; the request middleware calls this after each request."""
    for counters in _all:
        counters.flush(force)
