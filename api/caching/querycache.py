"""The database query cache (issue 6 item 4): the result rows of the selectors' read queries, kept
in the `cache` Valkey, with their own TTL (`cache.query_ttl_s`), invalidated by every write, and
toggled on its own (`cache.query_cache`, whatever `cache.mode` says). It sits beneath the views:
a hit rebuilds the model instances without a database query, and the serializer still runs.

What is cached: the queries of `user_get`, `post_get` and `post_list` (api/selectors.py), in GET and
HEAD requests. Each selector names the query's *owner*, the user whose rows it reads (every one of
them reads only one user's rows: the user row, or posts with that `user_id`). Not cached: reads in
requests that write (the router sends those to the primary for the truth), reads inside a
transaction, scatter-gather reads over every shard (the user list, search), any read while a
reshard runs, and querysets this module cannot rebuild exactly (values(), only(), annotations).

Why not django-cachalot. Cachalot keys every query by its tables and invalidates a table,
globally, on any write to it. Here that would be wrong or useless three ways:
- Grain. With 5% writes (the caching lesson's mix) a table-wide invalidation drops every cached
  posts page several times a second: the hit ratio collapses. Every query and every write here is
  scoped to one user (the shard key every request carries), so generations are per owner.
- Shards. Cachalot knows one database per alias; here one model lives on up to eight shards,
  each with its own replicas behind one router (api/routing/db.py). Keys here name the shard.
- Replicas. Cachalot invalidates when the primary commits; a read served by a replica that has
  not replayed that commit yet then fills the cache with the old rows, for a whole TTL. Cachalot
  has no notion of replica lag; this module refuses such fills (below).

The design. For each owner on each shard, Valkey keeps one *generation* per table
(`{q:SHARD:USER}:gen:api_user`, `...:gen:api_post`). An entry is stored under a digest of the
query's SQL and parameters (plus the shard, the owner and the topology's version), and its value
begins with the generations it was read under. One script per lookup reads the generations and
the entry and answers a hit only if they match; one script per fill stores the rows only if the
generations are still the ones the read saw at its start. A write bumps the generations of the
tables it touched, on its shard, once its transaction has committed (the hook is the application
cache's event, api.caching.writes, which every write in api/services.py already sends), so:
- a read after the bump never meets an older entry (the stamps differ);
- a read that began before the bump and fills after it is refused: its stamp is the old one;
- a replica that has not replayed the write yet: the bump also leaves a tombstone for `max_lag_ms`
  plus TOMBSTONE_MARGIN_MS, and while it exists fills read from a replica are refused. The router
  never reads a replica further behind than `max_lag_ms` (as of a report at most a few hundred ms
  old: the margin), so once the tombstone is gone every replica a read can reach has the write.
  Fills read from the primary are taken at once (it has the commit), so without replicas the
  first read after a write fills again. Why a time window and not LSNs: storing the commit's WAL
  position and comparing each replica fill's `pg_last_wal_replay_lsn()` would be exact, but costs
  a query after every write and one more on every replica miss; the window reuses the bound the
  router already enforces, and the application cache's tombstone makes the same trade.
- across shards: keys and generations name the shard, so one shard's entries never answer for
  another. A reshard moves rows without going through the services, so no read uses this cache
  while one runs, and entries carry the topology's version: after a reshard (or any topology
  change) the cache starts cold, and an entry from before a round trip of a user between shards
  can never come back.

A deleted user: the delete's bump also purges every entry of that owner on that shard. Each fill
adds its key to the owner's index (`{q:SHARD:USER}:idx`, living as long as the longest entry it
names), and the bump of a delete removes the keys it names and the index, in the same script: the
rows of a deleted user do not wait in the cache for a TTL.

Lost keys (the cache Valkey evicts with LRU, or restarts): a missing generation starts again from
the Valkey server's clock in microseconds, above any value an older one reached, so an entry can
never match a generation that was lost and recreated. All of one owner's keys share the hash tag
`{q:SHARD:USER}`, so each script touches one Valkey Cluster slot.

The cache failing: every call is guarded like the application cache's (api.caching.valkey): a
Valkey error, or the breaker of the key's node being open (this layer's, or the application
cache's; per node when the cache is a cluster), sends the read to the database; a bump that fails is remembered in this process and done again once the cache
answers (`retry_pending`), and meanwhile this process does not use that owner's entries. Another
process does not know about it: an entry written before a failed bump can be served by another
app server until the writer retries (its next request) or the entry's TTL. A process killed between
a commit and its bump leaves its entries to their TTL, as for the application cache.

Entries are pickled tuples of column values (rebuilt with Model.from_db), read back only from the
workbench's own cache Valkey; PREFIX changes when the stored format does.

Per request: X-Query-Cache says `off` (toggle off), `bypass` (on, but no query of this request was
cacheable), `hit` (every cacheable query hit), `miss` (at least one missed), `down` (the cache
failed or was skipped); Server-Timing gets a `qcache` part (api.caching.request).
Counters (metrics.QUERY): hits, misses, fills, fills_skipped, invalidations, errors, skipped_down.
"""
from __future__ import annotations

import collections
import hashlib
import logging
import pickle
import threading
import time

from django.db import connections, transaction
from django.db.models.query import MAX_GET_RESULTS, ModelIterable

from workbench import topology

from . import metrics, request, valkey

log = logging.getLogger(__name__)

PREFIX = "wb:q1"  # bump the digit when the stored format changes
GENERATION_TTL_MS = 2 * 86_400_000  # outlives every entry (TTLs are at most a day)
TOMBSTONE_MARGIN_MS = 1000          # as api.caching.writes: the routing's view of lag is a little old
MAX_PENDING = 10_000
USER_TABLE, POST_TABLE = "api_user", "api_post"
STATUS_RANK = {"bypass": 0, "hit": 1, "miss": 2, "down": 3}  # a request's status only moves up

# The Valkey server's clock in us, as a string (a Lua number would print 1.7e+15).
_NOW = "local t = redis.call('TIME') local now = t[1] .. string.format('%06d', tonumber(t[2]))\n"

# KEYS: entry, generations... ARGV: generation TTL ms. Returns {stamp} or {stamp, payload} (a hit).
_LOOKUP = _NOW + """
local gens = {}
for i = 2, #KEYS do
  local g = redis.call('GET', KEYS[i])
  if not g then
    g = now
    redis.call('SET', KEYS[i], g, 'PX', ARGV[1])
  end
  gens[#gens + 1] = g
end
local stamp = table.concat(gens, ',')
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '\\n', 1, true)
  if sep and string.sub(v, 1, sep - 1) == stamp then return {stamp, string.sub(v, sep + 1)} end
end
return {stamp}
"""

# KEYS: entry, generations..., tombstone. ARGV: the stamp the read began under, the payload, the
# TTL ms, '1' when the rows came from a replica. 1: filled; 0: a generation moved; 2: a tombstone.
_FILL = """
local gens = {}
for i = 2, #KEYS - 1 do
  local g = redis.call('GET', KEYS[i])
  if not g then return 0 end
  gens[#gens + 1] = g
end
if table.concat(gens, ',') ~= ARGV[1] then return 0 end
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[#KEYS]) == 1 then return 2 end
redis.call('SET', KEYS[1], ARGV[1] .. '\\n' .. ARGV[2], 'PX', ARGV[3])
redis.call('SADD', ARGV[5], KEYS[1])
if redis.call('PTTL', ARGV[5]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', ARGV[5], ARGV[3]) end
return 1
"""

# KEYS: generations..., tombstone. ARGV: generation TTL ms, tombstone TTL ms, the owner's index, '1' to
# purge every entry the index names (a deleted user). The index and its entries are not in KEYS but
# share the owner's hash tag, so they are in this script's slot.
_BUMP = _NOW + """
for i = 1, #KEYS - 1 do
  if redis.call('EXISTS', KEYS[i]) == 0 then redis.call('SET', KEYS[i], now) end
  redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
end
redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[2])
if ARGV[4] == '1' then
  for _, k in ipairs(redis.call('SMEMBERS', ARGV[3])) do redis.call('DEL', k) end
  redis.call('DEL', ARGV[3])
end
return 1
"""


# --- keys ------------------------------------------------------------------------------------------
def _tag(shard: int, owner: int) -> str:
    return f"{PREFIX}:{{q:{shard}:{owner}}}"


def generation_key(shard: int, owner: int, table: str) -> str:
    return f"{_tag(shard, owner)}:gen:{table}"


def tombstone_key(shard: int, owner: int) -> str:
    return f"{_tag(shard, owner)}:quiet"


def index_key(shard: int, owner: int) -> str:
    """The owner's entries on this shard (every fill's key): what a deletion purges."""
    return f"{_tag(shard, owner)}:idx"


def entry_key(shard: int, owner: int, text: str) -> str:
    digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{_tag(shard, owner)}:r:{digest}"


# --- the guarded call --------------------------------------------------------------------------------
_breaker = valkey.Breaker("query cache")  # per node, as the application cache's (api.caching.valkey)


def _run(op, key: str):
    """`op(client)`'s result, timed into this request's `qcache` part; raises valkey.Down when
    the node owning `key` failed now or moments ago (this layer's breaker, or the application cache's)."""
    started = time.perf_counter()
    try:
        return valkey.guarded(op, key, _breaker, metrics.QUERY.count)
    finally:
        state = request.current()
        if state is not None:
            state.query_spent_s += time.perf_counter() - started
            state.query_touched = True


def _mark(status: str) -> None:
    state = request.current()
    if state is not None and STATUS_RANK[status] > STATUS_RANK.get(state.query, 0):
        state.query = status


# --- reads -----------------------------------------------------------------------------------------
def rows(qs, *, owner: int) -> list:
    """list(qs), through the cache when this request may use it. `owner`: the user whose rows qs reads."""
    return _fetch(qs, owner, "rows", list)


def exists(qs, *, owner: int) -> bool:
    return _fetch(qs, owner, "exists", lambda q: q.exists())


def get(qs, *, owner: int):
    """qs.get(): the one row, or the model's DoesNotExist (MultipleObjectsReturned) as Django raises."""
    if not _usable(qs):
        return qs.get()
    found = _fetch(qs.order_by()[:MAX_GET_RESULTS], owner, "rows", list)
    if len(found) == 1:
        return found[0]
    if not found:
        raise qs.model.DoesNotExist(f"{qs.model._meta.object_name} matching query does not exist.")
    raise qs.model.MultipleObjectsReturned(f"get() returned more than one {qs.model._meta.object_name}")


def _usable(qs) -> bool:
    state = request.current()
    if state is None or not state.query_reads:
        return False
    from api.routing import db
    if topology.current().topology.reshard_shards or connections[db.write_alias()].in_atomic_block:
        return False
    query = qs.query
    return (qs._iterable_class is ModelIterable and not query.annotations and not query.select_related
            and not qs._prefetch_related_lookups and query.deferred_loading == (frozenset(), True))


def _fetch(qs, owner: int, kind: str, evaluate):
    if not _usable(qs):
        return evaluate(qs)
    from api.routing import db, shards
    shard = db.current_shard()
    if (shard, owner) in _pending:
        retry_pending()
        if (shard, owner) in _pending:  # a write of this owner is not yet known to the cache
            _mark("down")
            return evaluate(qs)
    try:
        sql, params = qs.query.sql_with_params()
    except Exception:  # noqa: BLE001 - e.g. EmptyResultSet: not worth caching, the ORM knows what to do
        return evaluate(qs)
    model = qs.model
    # The tables the SQL reads: a join the compiler trimmed away (refcount 0) reads nothing.
    tables = sorted({model._meta.db_table, *(t.table_name for a, t in qs.query.alias_map.items()
                                             if qs.query.alias_refcount.get(a))})
    doc = topology.current()
    entry = entry_key(shard, owner, "\x00".join(
        [f"{doc.version}.{doc.updated_at}", model._meta.label, kind, sql, repr(params)]))
    generations = [generation_key(shard, owner, table) for table in tables]
    try:
        found = _run(lambda c: valkey.script(_LOOKUP)(keys=[entry, *generations], args=[GENERATION_TTL_MS],
                                                      client=c), entry)
    except valkey.Down:
        _mark("down")
        return evaluate(qs)
    stamp = found[0]
    if len(found) == 2:
        try:
            value = _decode(found[1], model, shards.primary_alias(shard))
        except Exception:  # noqa: BLE001 - an entry this code cannot read is a miss
            log.exception("query cache entry %s unreadable", entry)
        else:
            metrics.QUERY.count("hits")
            _mark("hit")
            return value
    metrics.QUERY.count("misses")
    _mark("miss")
    alias = qs.db  # the node the router picks for this request's reads on this shard
    value = evaluate(qs)
    payload = _encode(kind, value, model)
    try:
        filled = _run(lambda c: valkey.script(_FILL)(
            keys=[entry, *generations, tombstone_key(shard, owner)],
            args=[stamp, payload, topology.current().topology.cache.query_ttl_s * 1000,
                  "1" if alias in db.REPLICAS else "0", index_key(shard, owner)], client=c), entry)
    except valkey.Down:
        return value
    metrics.QUERY.count("fills" if filled == 1 else "fills_skipped")
    return value


def _encode(kind: str, value, model) -> bytes:
    if kind == "exists":
        return pickle.dumps(("exists", bool(value)), protocol=pickle.HIGHEST_PROTOCOL)
    names = [f.attname for f in model._meta.concrete_fields]
    return pickle.dumps(("rows", names, [tuple(getattr(row, n) for n in names) for row in value]),
                        protocol=pickle.HIGHEST_PROTOCOL)


def _decode(payload: bytes, model, alias: str):
    stored = pickle.loads(payload)  # noqa: S301 - written only by this module into our own cache
    if stored[0] == "exists":
        return stored[1]
    _, names, values = stored
    if names != [f.attname for f in model._meta.concrete_fields]:
        raise ValueError("the model's columns changed since this entry was stored")
    return [model.from_db(alias, names, row) for row in values]


# --- writes ----------------------------------------------------------------------------------------
_pending_lock = threading.Lock()
_pending: collections.OrderedDict[tuple[int, int], tuple[set, bool]] = collections.OrderedDict()


def changed(user_id: int, *, user: bool, posts: bool, purge: bool = False) -> None:
    """Inside a write transaction on the user's shard: once it commits, bump the generations of the
    tables it touched (the user row, the user's posts), and with `purge` (the user is deleted) drop
    every entry of the user. Always, whether or not the query cache is on, so that switching it on
    can never meet an entry that missed a write."""
    from api.routing import db
    tables = [t for t, touched in ((USER_TABLE, user), (POST_TABLE, posts)) if touched]
    if not tables:
        return
    shard = db.current_shard()
    transaction.on_commit(lambda: bump(shard, user_id, tables, purge=purge), using=db.write_alias())


def bump(shard: int, owner: int, tables, *, purge: bool = False) -> bool:
    """Move the owner's generations on (and leave the replica tombstone); with `purge`, drop the
    owner's entries too. Never raises: a committed write must not turn into an error. A failure is
    remembered and retried."""
    t = topology.current().topology
    keys = [generation_key(shard, owner, table) for table in sorted(tables)] + [tombstone_key(shard, owner)]
    try:
        _run(lambda c: valkey.script(_BUMP)(
            keys=keys, args=[GENERATION_TTL_MS, int(t.max_lag_ms) + TOMBSTONE_MARGIN_MS,
                             index_key(shard, owner), "1" if purge else "0"], client=c), keys[0])
    except Exception as exc:  # noqa: BLE001 - valkey.Down, or anything else: retried later
        if not isinstance(exc, valkey.Down):
            log.exception("query cache bump of user %s on shard %s failed", owner, shard)
        _remember(shard, owner, tables, purge)
        return False
    metrics.QUERY.count("invalidations")
    return True


def _remember(shard: int, owner: int, tables, purge: bool = False) -> None:
    with _pending_lock:
        before, purged = _pending.pop((shard, owner), (set(), False))
        _pending[(shard, owner)] = (before | set(tables), purged or purge)
        while len(_pending) > MAX_PENDING:  # beyond this, TTLs bound the staleness
            _pending.popitem(last=False)


def retry_pending() -> None:
    """Bumps that failed while the cache was down, done again once it may answer."""
    if not _pending or _breaker.is_open(valkey.ALL) or not valkey.available():
        return
    with _pending_lock:
        todo = list(_pending.items())
        _pending.clear()
    # Per node: those whose node is being skipped stay remembered without a round trip.
    for (shard, owner), (tables, purge) in todo:
        key = tombstone_key(shard, owner)
        if valkey.available(key) and not _breaker.is_open(_node(key)):
            bump(shard, owner, tables, purge=purge)  # remembers them again if it fails
        else:
            _remember(shard, owner, tables, purge)


def _node(key: str) -> str:
    try:
        return valkey.node_of(valkey.client(), key)
    except valkey.FAILURES:
        return valkey.ALL
