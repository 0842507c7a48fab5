"""Queries per database node, counted in each worker and added up in the `state` Valkey.

Each worker counts in memory and adds its counts to one hash at most every FLUSH_S (a single
pipelined HINCRBY per node), so counting costs no round trip per query.
"""
from __future__ import annotations

import collections
import logging
import threading
import time

log = logging.getLogger(__name__)

KEY = "workbench:db:queries"
FLUSH_S = 0.5

_lock = threading.Lock()
_counts: collections.Counter = collections.Counter()
_flushed_at = 0.0


def count_query(node: str) -> None:
    with _lock:
        _counts[node] += 1


def flush(force: bool = False) -> None:
    global _flushed_at
    now = time.monotonic()
    if not force and now - _flushed_at < FLUSH_S:
        return
    with _lock:
        if not _counts:
            return
        counts = dict(_counts)
        _counts.clear()
        _flushed_at = now
    try:
        from api.state import state_client
        pipe = state_client().pipeline(transaction=False)
        for node, n in counts.items():
            pipe.hincrby(KEY, node, n)
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - counting must never fail a request; put them back
        log.warning("query counters not flushed: %s", exc)
        with _lock:
            _counts.update(counts)


def totals(client) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(KEY).items()}
