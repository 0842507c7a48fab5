"""The NoSQL read model: a denormalized profile document per user (the user and their latest
LATEST_POSTS posts, rendered as GET /users/{id}?view=profile answers) in the `state` Valkey.

How it stays up to date (a transactional outbox, never a dual write):
- Every write that changes a profile document (sign-up, user update, user delete, post create,
  update and delete, and the write-behind flusher's applies) inserts a row into `rm_outbox` as the
  last statement of its own transaction on the user's shard (`record`). The row exists exactly
  when the write committed; nothing is written to Valkey by the request.
- The relay (`manage.py relay_outbox --loop`, supervised by the controller as `relay`) reads each
  shard's outbox in id order, rebuilds each affected user's document from PostgreSQL in one
  snapshot, writes it to Valkey, and only then deletes the rows it covered. A relay killed in
  between leaves the rows, and its successor rebuilds again: rebuilding from PostgreSQL is
  idempotent, so the SIGKILL loses nothing.
- Versions: a rebuild reads, in the same snapshot as the user and posts, the newest outbox row of
  that user still pending (0 when none is). Each outbox insert first takes a per-user advisory
  lock held until commit, so one user's outbox ids increase in commit order; a document is
  written only over a document of an older (or equal) version from the same shard, so an older
  rebuild never overwrites a newer one. A version-0 rebuild writes only where no newer document
  (nor a deleted user's tombstone) is. After a reshard a user's versions come from another shard's
  sequence: the newer shard wins (docs/architecture notes this in the README's read-model section).
- A deleted user's document becomes a tombstone (for TOMBSTONE_TTL_S), so no late rebuild from an
  older snapshot brings it back.

The outbox is written while `read_model` is on. When the relay sees it switched on, it waits until
every app server writes outbox rows (two topology refresh periods), then rebuilds every document
(`rebuild_all`, also `manage.py rebuild_read_model`), so writes made while it was off are covered;
meanwhile a missing document is a miss, built from SQL. When it sees it switched off, it deletes
every document (they would go stale) and discards what is left in the outbox.

Staleness: each outbox row carries its commit time; when the relay writes a document it records,
per row, the time from that commit to the document write (a capped list in the state Valkey);
each document keeps the commit time of the newest write it reflects (`as_of`).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from datetime import datetime, timezone

from django.db import connections, transaction

from api.counters import Counters
from api.state import state_client
from workbench import topology

log = logging.getLogger(__name__)

LATEST_POSTS = 10
PREFIX = "workbench:rm:profile:"          # one hash per user: s, v, data, etag, as_of, written, deleted
DOCS = "workbench:rm:docs"                # the ids of the users that have a document (SCARD: the count)
STALENESS = "workbench:rm:staleness"      # the latest STALENESS_KEEP commit-to-document delays, ms
STALENESS_KEEP = 2000
RELAY = "workbench:rm:relay"              # the relay's own report, refreshed each pass
BUILT = "workbench:rm:built"              # set once the relay rebuilt everything after `read_model` went on
PAUSE_AT = "workbench:rm:pause_at"        # test-only (WORKBENCH_FAULTS=1): the relay waits at this point
TOMBSTONE_TTL_S = 86_400
ADVISORY_CLASS = 0x524D4F42               # 'RMOB': the first key of the per-user outbox lock

COUNTERS = Counters("workbench:rm:counts")  # hit, miss, off, down (the view), written, skipped (the relay)

# KEYS: the document, DOCS. ARGV: shard, version, rendered data ('' for a tombstone), etag, as_of,
# written (epoch s), user id, tombstone TTL. Returns 1 if written, 0 if a newer document is there.
_PUT = """
local old = redis.call('HMGET', KEYS[1], 's', 'v')
local version = tonumber(ARGV[2])
if old[1] then
  if tonumber(old[1]) == tonumber(ARGV[1]) and tonumber(old[2]) > version then return 0 end
end
redis.call('DEL', KEYS[1])
if ARGV[3] == '' then
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', ARGV[2], 'deleted', '1', 'written', ARGV[6])
  redis.call('EXPIRE', KEYS[1], ARGV[8])
  redis.call('SREM', KEYS[2], ARGV[7])
else
  redis.call('HSET', KEYS[1], 's', ARGV[1], 'v', ARGV[2], 'data', ARGV[3], 'etag', ARGV[4],
             'as_of', ARGV[5], 'written', ARGV[6])
  redis.call('SADD', KEYS[2], ARGV[7])
end
return 1
"""


def key(user_id: int) -> str:
    return f"{PREFIX}{user_id}"


def enabled() -> bool:
    return topology.current().topology.read_model


# --- the write side: one outbox row per write, in the write's transaction --------------------------
def record(user_id: int, kind: str) -> None:
    """Inside a placement.write transaction: note that `user_id`'s document changes (`kind` says
    why, for the record). Takes the user's outbox lock (held until commit), so this user's outbox
    ids follow commit order. Nothing while `read_model` is off."""
    if not enabled():
        return
    from api.routing import db
    with connections[db.write_alias()].cursor() as cursor:
        cursor.execute("INSERT INTO rm_outbox (user_id, kind, committed_at) "
                       "SELECT %s, %s, clock_timestamp() FROM (SELECT pg_advisory_xact_lock(%s, %s)) AS locked",
                       [user_id, kind, ADVISORY_CLASS, user_id & 0x7FFFFFFF])


# --- building documents from PostgreSQL ------------------------------------------------------------
def build(alias: str, user_ids: list[int]) -> dict[int, tuple[int, dict | None]]:
    """{user id: (version, profile data, or None if there is no such user on this node)}, read in
    one REPEATABLE READ snapshot on `alias`: the users, their latest posts, and their newest
    pending outbox rows (the version)."""
    from api.models import Post, User
    from api.serializers import PostSerializer, UserSerializer
    if not user_ids:
        return {}
    conn = connections[alias]
    with transaction.atomic(using=alias):
        with conn.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT user_id, coalesce(max(id), 0) FROM rm_outbox WHERE user_id = ANY(%s) "
                           "GROUP BY user_id", [user_ids])
            versions = dict(cursor.fetchall())
        users = {u.id: u for u in User.objects.using(alias).filter(id__in=user_ids)}
        posts: dict[int, list] = {}
        if users:
            # Each user's latest posts, through the (user_id, created_at DESC, id DESC) index.
            rows = Post.objects.using(alias).raw(
                "SELECT p.* FROM unnest(%s::bigint[]) AS ids(id) CROSS JOIN LATERAL ("
                "SELECT * FROM api_post WHERE user_id = ids.id ORDER BY created_at DESC, id DESC "
                f"LIMIT {LATEST_POSTS}) AS p", [list(users)])
            for post in rows:
                posts.setdefault(post.user_id, []).append(post)
    out = {}
    for user_id in user_ids:
        user = users.get(user_id)
        data = None
        if user is not None:
            mine = sorted(posts.get(user_id, []), key=lambda p: (p.created_at, p.id), reverse=True)
            data = {"user": UserSerializer(user).data, "latest_posts": PostSerializer(mine, many=True).data}
        out[user_id] = (int(versions.get(user_id, 0)), data)
    return out


def put(client, user_id: int, shard: int, version: int, data: dict | None, *, as_of: float | None = None,
        pipe=None) -> None:
    """Write one document (None: the user is gone, a tombstone) unless a newer one is there."""
    from api.gateway.envelope import etag_for, render_data
    if data is None:
        rendered, etag = "", ""
    else:
        rendered, etag = render_data(data), etag_for(data)
    args = [shard, version, rendered, etag, as_of if as_of is not None else "", round(time.time(), 6), user_id,
            TOMBSTONE_TTL_S]
    _script(client)(keys=[key(user_id), DOCS], args=args, client=pipe or client)


_scripts: dict = {}


def _script(client):
    if id(client) not in _scripts:
        _scripts[id(client)] = client.register_script(_PUT)
    return _scripts[id(client)]


# --- the read side: GET /users/{id}?view=profile -----------------------------------------------
def lookup(user_id: int):
    """(rendered data, etag, age in ms, as_of) of the user's document; None on a miss (no document,
    or a tombstone). Raises redis errors."""
    raw = state_client().hmget(key(user_id), "data", "etag", "written", "as_of")
    if not raw[0]:
        return None
    age_ms = max((time.time() - float(raw[2])) * 1000, 0.0)
    return raw[0], raw[1].decode(), age_ms, (float(raw[3]) if raw[3] else None)


def fill(user_id: int) -> dict | None:
    """A miss: build the document from SQL where this request reads (a replica may answer) and put
    it, version-guarded like every write of a document. Returns its data (None: no such user)."""
    from api.routing import db, placement
    from api.gateway.errors import NotFound

    def get():
        version, data = build(db.read_alias(), [user_id])[user_id]
        if data is None:
            raise NotFound("user_id", f"No user {user_id}.")
        return db.current_shard(), version, data

    shard, version, data = placement.read(user_id, get, NotFound)
    try:
        put(state_client(), user_id, shard, version, data)
    except Exception as exc:  # noqa: BLE001 - the answer is right; the document waits for the relay
        log.warning("read model: fill of user %s not written: %s", user_id, exc)
    return data


def from_sql(user_id: int) -> dict:
    """The same profile, built from SQL only (`read_model` off): the SQL path the read model replaces."""
    from api.routing import db, placement
    from api.gateway.errors import NotFound

    def get():
        data = build(db.read_alias(), [user_id])[user_id][1]
        if data is None:
            raise NotFound("user_id", f"No user {user_id}.")
        return data

    return placement.read(user_id, get, NotFound)


# --- relaying and rebuilding ------------------------------------------------------------------------
def relay_shard(shard: int, *, batch: int = 500, client=None, pause=None, discard: bool = False) -> int:
    """One batch of `shard`'s outbox: rebuild each user's document, write it, then delete the rows.
    Returns how many rows it handled. `pause(point)` is called between the steps (test faults).
    `discard` (the toggle is off): only delete the rows; the next switch-on rebuilds everything."""
    from api.routing import db, placement
    client = client or state_client()
    with db.on_shard(shard):
        alias = db.write_alias()
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT id, user_id, extract(epoch FROM committed_at) FROM rm_outbox "
                           "ORDER BY id LIMIT %s", [batch])
            rows = cursor.fetchall()
        if not rows:
            return 0
        if discard:
            with connections[alias].cursor() as cursor:
                cursor.execute("DELETE FROM rm_outbox WHERE id = ANY(%s)", [[r[0] for r in rows]])
            return len(rows)
        users: dict[int, list[float]] = {}
        for _id, user_id, committed in rows:
            users.setdefault(user_id, []).append(float(committed))
        docs = build(alias, list(users))
    for user_id, (version, data) in list(docs.items()):
        if data is None and topology.current().topology.shard_groups > 1:
            with db.on_shard(shard):
                owner = placement.fence_owner(user_id)
            if owner != shard:  # moved by a reshard: its rows are the owner's now
                with db.on_shard(owner):
                    docs[user_id] = build(db.write_alias(), [user_id])[user_id]
                docs[user_id] = (docs[user_id][0], docs[user_id][1], owner)
    if pause:
        pause("before-document")
    now = time.time()
    pipe = client.pipeline(transaction=False)
    samples = []
    for user_id, built in docs.items():
        version, data = built[0], built[1]
        where = built[2] if len(built) > 2 else shard
        put(client, user_id, where, version, data, as_of=max(users[user_id]), pipe=pipe)
        samples += [round((now - c) * 1000, 2) for c in users[user_id]]
    for i in range(0, len(samples), 500):
        pipe.lpush(STALENESS, *samples[i:i + 500])
    pipe.ltrim(STALENESS, 0, STALENESS_KEEP - 1)
    pipe.execute()
    COUNTERS.count("written", len(docs))
    if pause:
        pause("after-document")
    with db.on_shard(shard):
        with connections[db.write_alias()].cursor() as cursor:
            cursor.execute("DELETE FROM rm_outbox WHERE id = ANY(%s)", [[r[0] for r in rows]])
    return len(rows)


def shards_in_use() -> range:
    return range(1, topology.current().topology.shard_groups + 1)


def rebuild_all(*, batch: int = 500, progress=None, client=None) -> int:
    """Every document from PostgreSQL, shard by shard, `batch` users at a time (version-guarded, so
    safe while the API serves and the relay runs); then the documents of users that no longer
    exist are dropped. Returns how many documents it wrote. `progress(shard, done)` after each batch."""
    from api.routing import db, placement
    from api.gateway.errors import NotFound
    client = client or state_client()
    seen: set[int] = set()
    total = 0
    for shard in shards_in_use():
        after = -1
        with db.on_shard(shard):
            alias = db.write_alias()
            while True:
                with connections[alias].cursor() as cursor:
                    cursor.execute("SELECT id FROM api_user WHERE id > %s ORDER BY id LIMIT %s", [after, batch])
                    ids = [r[0] for r in cursor.fetchall()]
                if not ids:
                    break
                after = ids[-1]
                pipe = client.pipeline(transaction=False)
                for user_id, (version, data) in build(alias, ids).items():
                    if data is not None:
                        put(client, user_id, shard, version, data, pipe=pipe)
                        seen.add(user_id)
                        total += 1
                pipe.execute()
                if progress:
                    progress(shard, total)
    # Documents of users gone meanwhile (deleted while the outbox was not written): dropped, once
    # the user's owner confirms it has no such user.
    for raw in client.sscan_iter(DOCS, count=1000):
        user_id = int(raw)
        if user_id in seen:
            continue

        def exists():
            from api.models import User
            if not User.objects.using(db.write_alias()).filter(id=user_id).exists():
                raise NotFound("user_id", "gone")
            return True
        try:
            placement.read(user_id, exists, NotFound)
        except NotFound:
            client.delete(key(user_id))
            client.srem(DOCS, user_id)
    return total


def drop_all(client=None) -> int:
    """Delete every document (the toggle went off: they would go stale). Returns how many."""
    client = client or state_client()
    dropped = 0
    batch = []
    for raw in client.sscan_iter(DOCS, count=1000):
        batch.append(int(raw))
        if len(batch) >= 1000:
            dropped += _drop(client, batch)
            batch = []
    dropped += _drop(client, batch)
    return dropped


def _drop(client, user_ids: list[int]) -> int:
    if not user_ids:
        return 0
    pipe = client.pipeline(transaction=False)
    pipe.delete(*[key(u) for u in user_ids])
    pipe.srem(DOCS, *user_ids)
    pipe.execute()
    return len(user_ids)


# --- what the admin API and the dashboard show -----------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def status(client=None) -> dict:
    """JSON-able: the toggle, the outbox backlog per shard, staleness over the latest document
    updates, the documents, the relay's report and the counters."""
    from api.routing import db
    client = client or state_client()
    shards = []
    for shard in shards_in_use():
        try:
            with db.on_shard(shard):
                with connections[db.write_alias()].cursor() as cursor:
                    cursor.execute("SELECT count(*), extract(epoch FROM clock_timestamp() - min(committed_at)) "
                                   "FROM rm_outbox")
                    pending, oldest = cursor.fetchone()
            shards.append({"shard": shard, "pending": pending,
                           "oldest_pending_s": round(float(oldest), 3) if oldest is not None else None})
        except Exception as exc:  # noqa: BLE001 - one shard down must not hide the others
            shards.append({"shard": shard, "error": f"{type(exc).__name__}: {exc}"})
    samples = [float(v) for v in client.lrange(STALENESS, 0, -1)]
    relay = {k.decode(): v.decode() for k, v in client.hgetall(RELAY).items()}
    counts = COUNTERS.totals(client)
    oldest = [s["oldest_pending_s"] for s in shards if s.get("oldest_pending_s") is not None]
    return {
        "read_model": enabled(),
        "built": bool(client.exists(BUILT)),
        "documents": client.scard(DOCS),
        "latest_posts": LATEST_POSTS,
        "outbox": {"pending": sum(s.get("pending", 0) for s in shards),
                   "oldest_pending_s": max(oldest) if oldest else None, "shards": shards},
        "staleness_ms": {"samples": len(samples), "p50": percentile(samples, 0.50),
                         "p95": percentile(samples, 0.95), "max": max(samples) if samples else None},
        "relay": relay,
        "counters": {name: counts.get(name, 0) for name in ("hit", "miss", "off", "down", "written")},
        "at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


def report_relay(client, state: str, **fields) -> None:
    client.hset(RELAY, mapping={"state": state, "pid": os.getpid(), "at": round(time.time(), 3),
                                **{k: json.dumps(v) if not isinstance(v, (str, int, float)) else v
                                   for k, v in fields.items()}})
    client.expire(RELAY, 30)
