"""Lookup and fill: cache-aside's read half, used in every mode but `off`.

An entry is stored as `ETag \\n data-bytes`: the envelope's `data`, already rendered, and its tag,
so a hit answers (and answers If-None-Match) without running a serializer or hashing anything.

Fills are conditional (FILL): skipped while the user's tombstone exists (see writes: a fill from a
read that raced a write, or from a lagging replica, must not put stale data back for a whole TTL),
and never over an existing entry (a write-through value is newer than any fill).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from workbench import topology

from . import keys, metrics, request, valkey

# Namespace versions outlive every page key (TTLs are at most a day), so a page never outlives its
# version. A lost version (eviction, restart) starts again from the clock in microseconds, above
# any value the old one reached, so a new page key can never meet an old page.
NAMESPACE_TTL_MS = 2 * 86_400_000

_NAMESPACE = """
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[1]
  redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
end
return v
"""

_FILL = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return 1 end
return 0
"""


@dataclass(frozen=True)
class Entry:
    user_id: int
    key: str
    ttl_s: int


@dataclass(frozen=True)
class Hit:
    etag: str
    data: bytes  # the rendered JSON of the envelope's `data`


def now_us() -> int:
    return time.time_ns() // 1000


def user_entry(user_id: int) -> Entry | None:
    """GET /users/{id}, or None when this request does not use the cache."""
    if request.mode() == "off":
        return None
    return Entry(user_id, keys.user(user_id), topology.current().topology.cache.user_ttl_s)


def posts_entry(user_id: int, query: str) -> Entry | None:
    """One posts page of the user under the user's current namespace version (one round trip)."""
    if request.mode() == "off":
        return None
    try:
        version = valkey.run(lambda c: valkey.script(_NAMESPACE)(
            keys=[keys.namespace(user_id)], args=[now_us(), NAMESPACE_TTL_MS], client=c))
    except valkey.Down:
        return None
    return Entry(user_id, keys.posts_page(user_id, int(version), query),
                 topology.current().topology.cache.posts_ttl_s)


def lookup(entry: Entry) -> Hit | None:
    try:
        raw = valkey.run(lambda c: c.get(entry.key))
    except valkey.Down:
        return None
    if raw is None:
        metrics.count("misses")
        request.mark("miss")
        return None
    etag, _, data = raw.partition(b"\n")
    metrics.count("hits")
    request.mark("hit")
    return Hit(etag.decode(), data)


def fill(entry: Entry, data: bytes, etag: str) -> None:
    try:
        filled = valkey.run(lambda c: valkey.script(_FILL)(
            keys=[entry.key, keys.tombstone(entry.user_id)],
            args=[encode(etag, data), entry.ttl_s * 1000], client=c))
    except valkey.Down:
        return
    metrics.count("fills" if filled else "fills_skipped")


def encode(etag: str, data: bytes) -> bytes:
    return etag.encode() + b"\n" + data
