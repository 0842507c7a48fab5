"""Write-behind (`cache.mode` = `write-behind`): a profile update or a post create/update is
acknowledged once it is appended to a stream in the `state` Valkey, and a flusher process
(`manage.py flush_writes --loop`, started by the controller) applies it to PostgreSQL later.

What is queued, and what is not:
- queued: PUT/PATCH of a user's name and bio; POST of a post; PUT/PATCH of a post. Each is validated
  first (serializer, and a read that answers 404 for a missing user or post), so bad input is a 4xx
  as before; a post's id and created_at come from the snowflake generator, so the 201 is final.
- synchronous, always: sign-up, email changes and deletes. They need the database's answer
  (uniqueness in meta, whether the row exists), which a queue cannot give at acknowledgement time.
- If the state Valkey cannot be reached, a write goes the synchronous way (`sync-fallback`):
  never lost, never a 5xx.

The response says which way a write went: `X-Write-Behind: queued`, `sync-fallback`, or `sync`.

Reads after a queued write: the user's new representation is put in the `cache` Valkey at once
(api.caching.writes), so reading the profile is fresh; posts pages are invalidated on enqueue and
again after the flush, so a new post shows once it is flushed. A record per user and per post in
the state Valkey holds what is queued but not yet flushed, so a second update (or an update of a
post still in the queue) answers with everything acknowledged before it.

Ordering and idempotency (see workbench/management/commands/flush_writes.py): one flusher applies the
stream in order. Each update carries its acknowledgement time as `updated_at`, and applies only
over an older row, so a replayed entry (a flusher killed before its XACK, or a state Valkey that
lost its acknowledgements) never undoes a newer write; a post is inserted ON CONFLICT (id) DO
NOTHING. A write that can no longer apply (its user or post was deleted meanwhile) is `rejected`:
counted and kept in a capped list, never silently dropped.

What a crash of the state Valkey loses is set by `cache.state_fsync` (docs/reliability.md,
"Write-behind"): with `off`, every write queued since persistence went off.
"""
from __future__ import annotations

import contextvars
import json
import logging
import time
from datetime import datetime, timezone

import redis

from api.counters import Counters
from api.state import state_client

from . import request

log = logging.getLogger(__name__)

STREAM = "workbench:cache:behind:stream"
GROUP = "flusher"
KEY = "workbench:cache:behind:counts"  # queued, flushed, rejected, fallback
REJECTED = "workbench:cache:behind:rejected"  # the last REJECTED_KEEP rejections, newest first
REJECTED_KEEP = 1000
PAUSED = "workbench:cache:behind:paused"  # while it exists the flusher reads nothing (write_behind_loss)
FLUSHER = "workbench:cache:behind:flusher"  # the flusher's own report: its state, refreshed each pass
RECORD_TTL_S = 86_400  # a safety net: the flusher deletes each record once its last write is applied

COUNTERS = Counters(KEY)

# KEYS: stream, record. ARGV: the entry (JSON), the fields it changes (JSON), the record's TTL.
# Appends the entry and merges its fields into the record of what is queued for this user or post
# (ids in a record are strings: Lua's cjson turns big integers into doubles);
# returns the merged record, so the answer includes every change acknowledged before this one.
_ENQUEUE = """
local id = redis.call('XADD', KEYS[1], '*', 'w', ARGV[1])
local record = {fields = {}}
local old = redis.call('GET', KEYS[2])
if old then record = cjson.decode(old) end
for k, v in pairs(cjson.decode(ARGV[2])) do record.fields[k] = v end
record.entry = id
local out = cjson.encode(record)
redis.call('SET', KEYS[2], out, 'EX', ARGV[3])
return out
"""

# KEYS: record. ARGV: an entry id. Deletes the record if that entry is still its last write.
_FORGET = """
local old = redis.call('GET', KEYS[1])
if old and cjson.decode(old).entry == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

_outcome: contextvars.ContextVar[str | None] = contextvars.ContextVar("write_behind", default=None)


class Unreachable(Exception):
    """The state Valkey did not take the write: the caller writes synchronously instead."""


def active() -> bool:
    return request.mode() == "write-behind"


def mark(outcome: str | None) -> None:
    """What X-Write-Behind will say for this request's write (None: nothing, the mode is not on)."""
    _outcome.set(outcome if active() else None)


def headers() -> dict:
    """The view's headers for this request's write; read once (a worker thread serves many requests)."""
    outcome = _outcome.get()
    _outcome.set(None)
    return {"X-Write-Behind": outcome} if outcome else {}


def now() -> datetime:
    return datetime.now(timezone.utc)


def user_record(user_id: int) -> str:
    return f"workbench:cache:behind:user:{user_id}"


def post_record(post_id: int) -> str:
    return f"workbench:cache:behind:post:{post_id}"


def enqueue(kind: str, user_id: int, fields: dict, *, post_id: int | None = None, at: datetime,
            record_fields: dict | None = None) -> dict:
    """Append one write; returns the merged record of what is queued for its user (profile
    updates) or post. Raises Unreachable if the state Valkey does not answer."""
    entry = {"kind": kind, "user_id": user_id, "post_id": post_id, "fields": fields, "at": at.isoformat()}
    record = user_record(user_id) if kind == "user" else post_record(post_id)
    try:
        client = state_client()
        merged = _script(client, _ENQUEUE)(keys=[STREAM, record], args=[
            json.dumps(entry), json.dumps({**(record_fields or {}), **fields, "updated_at": at.isoformat()}),
            RECORD_TTL_S])
    except redis.RedisError as exc:
        raise _unreachable(exc) from exc
    COUNTERS.count("queued")
    mark("queued")
    return json.loads(merged)["fields"]


def queued(record_key: str) -> dict | None:
    """What is queued and not yet flushed for a user or post (its merged fields), if anything.
    Raises Unreachable when the state Valkey does not answer."""
    try:
        raw = state_client().get(record_key)
    except redis.RedisError as exc:
        raise _unreachable(exc) from exc
    return json.loads(raw)["fields"] if raw else None


def put_user(user) -> None:
    """Put a queued update's representation in the `cache` Valkey (as write-through does). Until it
    is flushed it is newer than anything the database holds, so an earlier write's tombstone, which
    keeps database reads from filling, must not turn this put into a delete; the put sets its own."""
    from . import keys, valkey, writes
    try:
        valkey.run(lambda c: c.delete(keys.tombstone(user.id)), key=keys.tombstone(user.id))
    except valkey.Down:
        pass  # invalidate() below remembers the user's entry for a retry
    writes.invalidate(user.id, user=user, user_entry=True, posts=False)


def _unreachable(exc: Exception) -> Unreachable:
    """The state Valkey failed: this request's write goes the synchronous way, and says so."""
    log.warning("write-behind: the state Valkey did not answer, writing synchronously: %s", exc)
    COUNTERS.count("fallback")
    mark("sync-fallback")
    return Unreachable(str(exc))


def drop_user(user_id: int) -> None:
    """A deleted user's record of queued profile fields goes at once (its queued entries are
    rejected, and so removed from the stream, by the flusher's next pass). Never raises: the
    record also expires (RECORD_TTL_S)."""
    try:
        state_client().delete(user_record(user_id))
    except redis.RedisError as exc:
        log.warning("write-behind: the queued record of deleted user %s stays until it expires: %s", user_id, exc)


def forget(record_key: str, entry_id: str) -> bool:
    """After a flush: drop the record if this entry was its last write. True if it was."""
    return bool(_script(state_client(), _FORGET)(keys=[record_key], args=[entry_id]))


def reject(entry_id: str, write: dict, reason: str) -> None:
    """Counted and recorded, without the written values: the usual reason is that the user was
    deleted, and a record of what they wrote would outlive their erasure. The fields' names,
    the ids and the time say which write it was."""
    write = {**{k: write[k] for k in ("kind", "user_id", "post_id", "at") if k in write},
             "fields": sorted(write.get("fields") or {})}
    log.warning("write-behind: rejected %s %s: %s", entry_id, write, reason)
    record = json.dumps({"entry": entry_id, "write": write, "reason": reason, "at": now().isoformat()})
    pipe = state_client().pipeline(transaction=True)
    pipe.lpush(REJECTED, record)
    pipe.ltrim(REJECTED, 0, REJECTED_KEEP - 1)
    pipe.execute()
    COUNTERS.count("rejected")


_scripts: dict = {}


def _script(client, source: str):
    """redis-py sends EVALSHA and loads the script again after a restart (NOSCRIPT)."""
    key = (id(client), source)
    if key not in _scripts:
        _scripts[key] = client.register_script(source)
    return _scripts[key]


def entry_age_s(entry_id: str) -> float:
    """A stream entry's age: its id starts with the milliseconds at which it was appended."""
    return max(time.time() - int(entry_id.split("-")[0]) / 1000, 0.0)


def status(client=None) -> dict:
    """The queue, for the dashboard and the admin API: JSON-able. Counters are summed across
    processes (api.counters: up to half a second late); `depth` is what is not yet flushed (flushed
    entries are deleted from the stream), `pending` the part the flusher has read but not
    acknowledged, `lag_s` the age of the oldest unflushed write."""
    from workbench import topology
    client = client or state_client()
    t = topology.current().topology
    out = {"mode": t.cache.mode, "state_fsync": t.cache.state_fsync}
    try:
        totals = COUNTERS.totals(client)
        depth = client.xlen(STREAM)
        groups = {g["name"].decode(): g for g in client.xinfo_groups(STREAM)} if depth or client.exists(STREAM) else {}
        oldest = client.xrange(STREAM, count=1)
        flusher = client.hgetall(FLUSHER)
        rejections = [json.loads(r) for r in client.lrange(REJECTED, 0, 9)]
        paused = bool(client.exists(PAUSED))
    except redis.RedisError as exc:
        return {**out, "error": f"the state Valkey did not answer: {exc}"}
    return {**out, **{name: totals.get(name, 0) for name in ("queued", "flushed", "rejected", "fallback")},
            "depth": depth, "pending": int(groups.get(GROUP, {}).get("pending", 0)),
            "lag_s": round(entry_age_s(oldest[0][0].decode()), 3) if oldest else 0.0,
            "paused": paused, "flusher": {k.decode(): v.decode() for k, v in flusher.items()},
            "recent_rejections": rejections}
