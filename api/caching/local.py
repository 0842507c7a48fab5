"""The per-process L1 (issue 6): a small in-memory LRU in each app-server process, in front of the
`cache` Valkey (`cache.l1`, `cache.l1_ttl_ms`, `cache.l1_entries`; used only when `cache.mode` is
not `off`). It is what makes consistent-hash load balancing pay off: a user's requests keep
landing on the same app server, whose L1 then answers them without any round trip at all.

What it holds: the same entries as the Valkey cache (reads.Hit: the ETag and the rendered `data`
bytes), under the same keys, each for at most `l1_ttl_ms` (measured from when it was put, against
the current setting, so a shorter TTL applies at once), at most `l1_entries` of them (least
recently used dropped first; resized when the topology changes). Filled from a Valkey hit, or by a
database read whose Valkey fill was accepted (never while a write's tombstone stops that fill:
see reads and writes).

It also holds each user's posts namespace version (keys.namespace), under the same rules. A posts
page key contains that version, which otherwise costs a Valkey round trip per request
(reads.posts_entry) even when the page itself is in L1: the L1 would save nothing for posts pages.
Holding it adds no staleness of its own: the version moves only in writes._WRITE, which publishes
the same message that drops the user's pages, so the version goes with them; and a version lost in
Valkey (eviction, restart) is recreated above the old one, while the L1 copy still names pages that
were right when they were put, dropped by the next write's message like any other entry. So a
posts-page L1 hit, like a user L1 hit, costs zero Valkey round trips.

Invalidation: every invalidation (writes._WRITE, on any app server, including retried ones)
PUBLISHes the user id on keys.L1_CHANNEL in the same script. Each process runs one daemon
subscriber thread, started lazily on first use in that process (per PID: gunicorn forks workers
after import, and a thread does not survive a fork), that drops every L1 key of that user (an
index by user id). The TTL bounds the staleness if a message is nevertheless lost.
- While the subscriber is not connected (before its first SUBSCRIBE is confirmed, after an error,
  or when the connection has been silent for longer than SILENT_S despite its PINGs) the L1
  serves nothing and takes nothing, and each (re)connection clears it: no entry older than a gap
  in the messages is ever served. It reconnects with capped exponential backoff.
- A put carries the ticket taken before its data was read (reads.Entry.ticket): a put whose user
  was invalidated since, or which spans a reconnection, is dropped. Otherwise a message arriving
  between a reader's Valkey (or database) read and its put would be lost on that reader, and the
  old data served for a whole TTL. A message arriving after the put drops it as usual.
- With a cache cluster (`cache_nodes` 3 or 6) the subscriber connects to one node: a cluster
  broadcasts every PUBLISH to all its nodes (the writes' script publishes on whichever node owns the
  user's slot). A dead node is a lost subscription like any other: the next attempt goes to the
  next node. When `cache_nodes` changes, the subscriber subscribes again on the cache now in use
  (clearing the L1, as at every reconnection).
- Delivery is asynchronous: another server's L1 may still answer the old data for the moment it
  takes the message to arrive (milliseconds on one machine), which the Valkey cache alone does not
  do (its invalidation is done before the write answers).

The writer's own process drops its copies by its own message, like every other process; a
write-through value reaches the L1s by the next read (a Valkey hit).

Counters (metrics.L1): hits, misses, fills, evictions (dropped to make room, or by a smaller
`l1_entries`), expirations (found past its TTL), invalidations (entries dropped by a message or a
reconnection; not those dropped because `cache.l1` was switched off). `stats()`: this process's
size and capacity.
"""
from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workbench import topology

from . import keys, metrics, request

log = logging.getLogger(__name__)

SILENT_S = 3.0       # the subscription counts as lost after this long without any reply
PING_S = 1.0         # a PING on the subscription when it has been quiet this long
POLL_S = 0.5         # the subscriber's wait for a message between liveness checks
BACKOFF_S = (0.05, 2.0)  # reconnection backoff: first and largest delay
RECENT = 4096        # invalidated users remembered for tickets (older tickets are refused)


@dataclass(frozen=True)
class Ticket:
    """Taken before the data to be put was read; see the module's docstring."""
    epoch: int
    seq: int


class _State:
    """Everything of one process (a forked child starts anew)."""

    def __init__(self):
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.entries: collections.OrderedDict[str, tuple[float, int, object]] = collections.OrderedDict()
        self.by_user: dict[int, set[str]] = {}
        self.capacity = 0
        self.connected = False
        self.heard_at = 0.0       # monotonic time of the subscription's last reply
        self.epoch = 0            # moves on at every connection and disconnection
        self.seq = 0              # moves on at every invalidation message
        self.recent: collections.OrderedDict[int, int] = collections.OrderedDict()  # user -> seq
        self.recent_floor = 0     # seqs at or below this were forgotten from `recent`
        self.thread: threading.Thread | None = None


_state = _State()
_start_lock = threading.Lock()


def _here() -> _State:
    global _state
    if _state.pid != os.getpid():
        with _start_lock:
            if _state.pid != os.getpid():
                _state = _State()
    return _state


def enabled() -> bool:
    """Whether this request uses the L1 (starts the subscriber in this process on first use)."""
    cfg = topology.current().topology.cache
    s = _here()
    if not cfg.l1 or request.mode() == "off":
        if s.entries:
            with s.lock:
                _clear(s, counted=False)
        return False
    if s.thread is None:
        _start(s)
    if s.capacity != cfg.l1_entries:
        with s.lock:
            s.capacity = cfg.l1_entries
            _trim(s, time.monotonic(), cfg.l1_ttl_ms / 1000)
    return True


def _serving(s: _State) -> bool:
    return s.connected and time.monotonic() - s.heard_at < SILENT_S


def ticket() -> Ticket | None:
    """A ticket for a later put, or None when this request does not use the L1 (off, or not
    connected: then nothing is served or put)."""
    if not enabled():
        return None
    s = _here()
    with s.lock:
        return Ticket(s.epoch, s.seq) if _serving(s) else None


def get(key: str, *, count: bool = True):
    """The value under `key`, or None (missing, expired, or the subscriber is not connected).
    `count`: whether it counts as an L1 hit or miss (a response's entry, not a namespace version)."""
    s = _here()
    ttl_s = topology.current().topology.cache.l1_ttl_ms / 1000
    with request.timed(), s.lock:
        if not _serving(s):
            return None
        item = s.entries.get(key)
        if item is not None and time.monotonic() - item[0] > ttl_s:
            _remove(s, key)
            metrics.L1.count("expirations")
            item = None
        if item is None:
            if count:
                metrics.L1.count("misses")
            return None
        s.entries.move_to_end(key)
    if count:
        metrics.L1.count("hits")
    return item[2]


def put(key: str, user_id: int, value, tkt: Ticket | None, *, count: bool = True) -> bool:
    """Put `value` unless the ticket is stale (the user was invalidated since it was taken, or the
    subscription was lost or renewed since). Returns whether it was put."""
    if tkt is None:
        return False
    s = _here()
    cfg = topology.current().topology.cache
    with s.lock:
        if not _serving(s) or tkt.epoch != s.epoch or s.capacity <= 0:
            return False
        if tkt.seq < s.seq and (tkt.seq < s.recent_floor or s.recent.get(user_id, 0) > tkt.seq):
            return False
        now = time.monotonic()
        if key in s.entries:
            s.entries.move_to_end(key)
        s.entries[key] = (now, user_id, value)
        s.by_user.setdefault(user_id, set()).add(key)
        _trim(s, now, cfg.l1_ttl_ms / 1000)
    if count:
        metrics.L1.count("fills")
    return True


def drop_user(user_id: int) -> int:
    """Drop every entry of the user (a message); returns how many went."""
    s = _here()
    with s.lock:
        s.seq += 1
        s.recent[user_id] = s.seq
        s.recent.move_to_end(user_id)
        while len(s.recent) > RECENT:
            _, forgotten = s.recent.popitem(last=False)
            s.recent_floor = max(s.recent_floor, forgotten)
        dropped = [k for k in s.by_user.pop(user_id, ()) if s.entries.pop(k, None) is not None]
    if dropped:
        metrics.L1.count("invalidations", len(dropped))
    return len(dropped)


def stats() -> dict:
    """This process's L1: size, capacity, and whether its subscriber is connected."""
    s = _here()
    with s.lock:
        return {"pid": s.pid, "size": len(s.entries), "capacity": s.capacity, "connected": _serving(s),
                "subscriber": s.thread is not None and s.thread.is_alive()}


# --- internals (the caller holds s.lock) -------------------------------------------------------
def _remove(s: _State, key: str) -> None:
    _, user_id, _ = s.entries.pop(key)
    owned = s.by_user.get(user_id)
    if owned is not None:
        owned.discard(key)
        if not owned:
            del s.by_user[user_id]


def _trim(s: _State, now: float, ttl_s: float) -> None:
    while len(s.entries) > max(s.capacity, 0):
        key, (put_at, _, _) = next(iter(s.entries.items()))
        _remove(s, key)
        metrics.L1.count("expirations" if now - put_at > ttl_s else "evictions")


def _clear(s: _State, counted: bool = True) -> None:
    if s.entries and counted:
        metrics.L1.count("invalidations", len(s.entries))
    s.entries.clear()
    s.by_user.clear()
    s.epoch += 1


# --- the subscriber ------------------------------------------------------------------------------
def _start(s: _State) -> None:
    with _start_lock:
        if s.thread is not None or s is not _state:
            return
        s.thread = threading.Thread(target=_subscribe_forever, args=(s,), name="l1-invalidations", daemon=True)
        s.thread.start()


class _Moved(Exception):
    """The topology's `cache_nodes` changed: subscribe again, on the cache now in use."""


def _subscription_url(n: int, attempt: int) -> str:
    """Where to subscribe: the single cache, or one node of the cluster. A cluster broadcasts every
    PUBLISH to all its nodes, so any node hears every invalidation; processes spread over the nodes
    (by pid), and each failed attempt moves on to the next node, so a dead node is left at once."""
    from . import valkey
    urls = valkey.node_urls(n)
    return urls[(os.getpid() + attempt) % len(urls)]


def _connected(s: _State, up: bool) -> None:
    with s.lock:
        if up:
            s.heard_at = time.monotonic()
        if s.connected != up or up:
            _clear(s)  # on every (re)subscription too: messages may have been missed before it
        s.connected = up


def _subscribe_forever(s: _State) -> None:
    delay = BACKOFF_S[0]
    attempt = 0
    while s is _state:
        pubsub = None
        moved = False
        try:
            n = topology.current().topology.cache_nodes
            client = redis.Redis.from_url(
                _subscription_url(n, attempt), socket_connect_timeout=0.25, socket_timeout=SILENT_S,
                retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub()
            pubsub.subscribe(keys.L1_CHANNEL)
            pinged_at = time.monotonic()
            while s is _state:
                message = pubsub.get_message(timeout=POLL_S)
                now = time.monotonic()
                if message is not None:
                    kind = message["type"]
                    if kind == "subscribe":
                        _connected(s, True)
                        delay = BACKOFF_S[0]
                        log.info("L1 invalidations subscribed (pid %s)", s.pid)
                    elif kind == "message":
                        drop_user(int(message["data"]))
                    s.heard_at = now
                if now - s.heard_at > SILENT_S and s.connected:
                    raise redis.ConnectionError("no reply on the subscription for %.1f s" % SILENT_S)
                if not s.connected and now - pinged_at > SILENT_S:
                    raise redis.ConnectionError("the subscription was not confirmed")
                if now - max(s.heard_at, pinged_at) >= PING_S:
                    pubsub.ping()
                    pinged_at = now
                if topology.current().topology.cache_nodes != n:
                    raise _Moved()
        except _Moved:
            # Messages published on the other cache were not heard: clear, and subscribe anew at once.
            log.info("L1 invalidations: the cache changed (cache_nodes), subscribing again (pid %s)", s.pid)
            _connected(s, False)
            moved, delay = True, BACKOFF_S[0]
        except Exception as exc:  # noqa: BLE001 - never dies: stop serving, back off, reconnect
            if s.connected:
                log.warning("L1 invalidations lost (pid %s), not serving until resubscribed: %s", s.pid, exc)
            _connected(s, False)
            attempt += 1  # in a cluster: the next node
        finally:
            if pubsub is not None:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001
                    pass
        if moved:
            continue
        time.sleep(delay * random.uniform(0.5, 1.0))
        delay = min(delay * 2, BACKOFF_S[1])
