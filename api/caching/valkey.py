"""The `cache` Valkey behind a guard: a cache that fails must cost a request almost nothing.

- Every call goes through `run`: a Valkey error becomes `Down`, which callers treat as a miss (reads
  go to the database) or as a failed invalidation (remembered and retried, see writes).
- A small circuit breaker: after a failure the cache is skipped for BREAKER_S, so while it is down
  no request pays a connection attempt (or a timeout, when the host does not even refuse); the
  first request after the interval tries again, and one success closes the breaker.
- Timeouts (workbench/settings.py CACHES): connect and socket timeouts of 0.25 s. A healthy cache
  answers in well under a millisecond, so 0.25 s only ever trips on a dead or hung one; 1 s would let
  one hung call take the whole 100 ms p95 budget ten times over. A refused connection (the usual
  failure on one machine) fails at once whatever the timeout.
- redis-py retries nothing here: django-redis hands it a connection pool, whose connections are
  made with no retry policy, so one failed call is one failure, not ten with backoff.

The client is django-redis's connection for the `default` cache (one per process; redis-py's
client is thread-safe and its pool reconnects after the Valkey restarts).
"""
from __future__ import annotations

import functools
import logging
import threading
import time

import redis

from . import metrics, request

log = logging.getLogger(__name__)

BREAKER_S = 1.0


class Down(Exception):
    """The cache is unreachable, or failed less than BREAKER_S ago."""


_lock = threading.Lock()
_down_until = 0.0


@functools.lru_cache(maxsize=1)
def client() -> redis.Redis:
    from django_redis import get_redis_connection
    return get_redis_connection("default")


@functools.lru_cache(maxsize=None)
def script(source: str):
    """A Lua script; redis-py sends EVALSHA and loads it again after a restart (NOSCRIPT)."""
    return client().register_script(source)


def available() -> bool:
    return time.monotonic() >= _down_until


def run(op):
    """`op(client)`'s result; raises Down when the cache failed now or moments ago."""
    global _down_until
    if not available():
        metrics.count("skipped_down")
        request.mark("down")
        raise Down("the cache failed less than %.1f s ago" % BREAKER_S)
    try:
        with request.timed():
            return op(client())
    except redis.RedisError as exc:
        with _lock:
            if time.monotonic() >= _down_until:
                log.warning("cache call failed; skipping the cache for %.1f s: %s", BREAKER_S, exc)
            _down_until = time.monotonic() + BREAKER_S
        metrics.count("errors")
        request.mark("down")
        raise Down(str(exc)) from exc
