"""Lookup and fill: cache-aside's read half, used in every mode but `off`.

An entry is stored as `ETag \\n data-bytes`: the envelope's `data`, already rendered, and its tag,
so a hit answers (and answers If-None-Match) without running a serializer or hashing anything.

Fills are conditional (FILL): skipped while the user's tombstone exists (see writes: a fill from a
read that raced a write, or from a lagging replica, must not put stale data back for a whole TTL),
and never over an existing entry (a write-through value is newer than any fill).

Stampede protection (`cache.single_flight`, on by default): a hot key that expires under load must
not send a burst of identical queries to the database. The lookup is one script (LOOKUP): on a miss
the first request takes a short lock (SET NX PX LOCK_MS, a random token) and reads the database;
the fill releases the lock in the same script, whether it filled or a tombstone stopped it (only if
the token is still ours: compare-and-delete). The other requests that miss the key while the lock
is held poll it every POLL_S for at most WAIT_S and answer with the filled value; if the wait times
out, or the lock goes without a value (the holder got a 404 or an error, or a tombstone stopped its
fill), they read the database themselves: never an error, never an unbounded wait. A holder that
dies leaves its lock to LOCK_MS. While a tombstone exists no lock is taken (no fill could follow),
and with the cache down (circuit breaker) nothing is locked: straight to the database. A lock not
released by a fill (the view failed, answered 404) is released when the request ends
(`release_held`, from the middleware).

The per-process L1 (`cache.l1`, api/caching/local.py) comes first: lookup asks it, then Valkey (a
hit there is put in the L1), then the database, whose fill is put in the L1 only when Valkey
accepted it (so a tombstone keeps the L1 clean too). Posts pages take their namespace version from
the L1 as well, so an L1 hit costs no round trip at all. Each Entry carries the L1 ticket taken
before anything was read (see local: a put whose user was invalidated meanwhile is dropped).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from api import tracing
from workbench import topology

from . import keys, local, metrics, request, valkey

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

# Single-flight: the lock lives a little longer than a fill takes; waiters give up much sooner.
LOCK_MS = 2000
WAIT_S = 0.2
POLL_S = 0.005

# KEYS: entry, tombstone, lock, the user's index (keys.index). ARGV: the fill, its TTL ms, the lock's
# token ('' when no lock is held). A filled key joins the index, which outlives every key it names.
_FILL = """
local filled = 0
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then
  filled = 1
  redis.call('SADD', KEYS[4], KEYS[1])
  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then redis.call('DEL', KEYS[3]) end
return filled
"""

# KEYS: entry, tombstone, lock. ARGV: a token, the lock's TTL ms, '1' to take the lock on a miss.
# The entry's bytes; or 0: a plain miss (no lock wanted, or a tombstone: no fill could follow);
# 1: this request holds the lock; 2: another request holds it.
_LOOKUP = """
local v = redis.call('GET', KEYS[1])
if v then return v end
if ARGV[3] ~= '1' or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2], 'NX') then return 1 end
return 2
"""

# KEYS: entry, lock. The entry's bytes; 1 while the lock is held; 0: neither (the holder is done).
_POLL = """
local v = redis.call('GET', KEYS[1])
if v then return v end
return redis.call('EXISTS', KEYS[2])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Entry:
    user_id: int
    key: str
    ttl_s: int
    l1: local.Ticket | None = None  # None: this request does not use the L1


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
    return Entry(user_id, keys.user(user_id), topology.current().topology.cache.user_ttl_s, local.ticket())


def posts_entry(user_id: int, query: str) -> Entry | None:
    """One posts page of the user under the user's current namespace version (one round trip, or
    none when the L1 has the version)."""
    if request.mode() == "off":
        return None
    ticket = local.ticket()
    namespace = keys.namespace(user_id)
    version = local.get(namespace, count=False) if ticket is not None else None
    if version is None:
        try:
            version = int(valkey.run(lambda c: valkey.script(_NAMESPACE)(
                keys=[namespace], args=[now_us(), NAMESPACE_TTL_MS], client=c), key=namespace))
        except valkey.Down:
            return None
        local.put(namespace, user_id, version, ticket, count=False)
    return Entry(user_id, keys.posts_page(user_id, version, query),
                 topology.current().topology.cache.posts_ttl_s, ticket)


@tracing.traced("cache.lookup", hit="cache.hit")  # a span when sampled (api/tracing.py)
def lookup(entry: Entry) -> Hit | None:
    """The entry, or None: read the database (and fill). The L1 first; on a miss, single-flight as above."""
    if entry.l1 is not None:
        hit = local.get(entry.key)
        if hit is not None:
            request.mark("hit-l1")
            return hit
    state = request.current()
    lock_key = keys.lock(entry.key)
    # A request that already holds this key's lock (the view runs again on the primary) looks only.
    single = (topology.current().topology.cache.single_flight and state is not None
              and state.lock is None)
    token = secrets.token_hex(8)
    try:
        raw = valkey.run(lambda c: valkey.script(_LOOKUP)(
            keys=[entry.key, keys.tombstone(entry.user_id), lock_key],
            args=[token, LOCK_MS, "1" if single else "0"], client=c), key=entry.key)
    except valkey.Down:
        return None
    if isinstance(raw, bytes):
        return _hit(raw, entry)
    metrics.count("misses")
    request.mark("miss")
    if raw == 1:
        state.lock = (lock_key, token)
    elif raw == 2:
        return _wait(entry, lock_key)
    return None


def _hit(raw: bytes, entry: Entry, counter: str = "hits") -> Hit:
    etag, _, data = raw.partition(b"\n")
    metrics.count(counter)
    request.mark("hit")
    hit = Hit(etag.decode(), data)
    local.put(entry.key, entry.user_id, hit, entry.l1)
    return hit


def _wait(entry: Entry, lock_key: str) -> Hit | None:
    """Another request is filling this key: its value, or None (read the database) after WAIT_S,
    once the lock is gone without a value, or if the cache fails meanwhile."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        try:
            raw = valkey.run(lambda c: valkey.script(_POLL)(keys=[entry.key, lock_key], client=c), key=entry.key)
        except valkey.Down:
            break
        if isinstance(raw, bytes):
            return _hit(raw, entry, "single_flight_waits")
        if raw == 0:
            break
    metrics.count("single_flight_fallbacks")
    return None


@tracing.traced("cache.fill")
def fill(entry: Entry, data: bytes, etag: str) -> None:
    """Fill the entry (unless a tombstone or an existing entry stops it); releases this request's
    single-flight lock of the entry either way."""
    state = request.current()
    lock_key = keys.lock(entry.key)
    token = ""
    if state is not None and state.lock is not None and state.lock[0] == lock_key:
        token, state.lock = state.lock[1], None
    try:
        filled = valkey.run(lambda c: valkey.script(_FILL)(
            keys=[entry.key, keys.tombstone(entry.user_id), lock_key, keys.index(entry.user_id)],
            args=[encode(etag, data), entry.ttl_s * 1000, token], client=c), key=entry.key)
    except valkey.Down:
        return
    metrics.count("fills" if filled else "fills_skipped")
    if filled:  # not while a tombstone stops the Valkey fill: the L1 would keep what Valkey refused
        local.put(entry.key, entry.user_id, Hit(etag, data), entry.l1)


def release_held() -> None:
    """Release the single-flight lock this request still holds (no fill: an error, a 404). Never raises."""
    state = request.current()
    if state is None or state.lock is None:
        return
    (lock_key, token), state.lock = state.lock, None
    try:
        valkey.run(lambda c: valkey.script(_RELEASE)(keys=[lock_key], args=[token], client=c), key=lock_key)
    except Exception:  # noqa: BLE001 - the lock expires by itself within LOCK_MS
        pass


def encode(etag: str, data: bytes) -> bytes:
    return etag.encode() + b"\n" + data
