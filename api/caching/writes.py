"""Event-based invalidation: every write, on any app server, invalidates what it changed, right
after its transaction commits. What a write touches:

| write                        | the user's entry | the user's posts pages |
|------------------------------|------------------|------------------------|
| sign-up, user update         | yes              | no (pages do not embed the user) |
| user delete                  | purged           | purged                 |
| post create, post delete     | yes (`post_count`) | yes                  |
| post update                  | no               | yes                    |

All pages of a user go at once: their keys contain the user's namespace version, and one INCR
moves it on (keys.py). A delete goes further: it purges every key the user's index names (every
page of every version), the index, the entry and the namespace, so none of a deleted user's data
stays in the cache until a TTL (`user_deleted`). In `write-through` mode a user update puts its new representation in the
cache instead of deleting the entry; so does `write-behind` (behind.py), for a queued update too.

Every write also leaves a tombstone for `max_lag_ms` + TOMBSTONE_MARGIN_MS, during which fills of
that user's keys are skipped (reads.FILL). Why a tombstone rather than sending cache misses to the
primary: a miss right after a write may read a replica that is up to `max_lag_ms` behind (the
router's own bound) and would put the old data back for a whole TTL; the same goes for a read that
began before the write and fills after it. The tombstone stops both, for only the keys just
written, while misses of every other key keep reading the replicas (sending all misses to the
primary would take the replicas' load off exactly when the cache is cold). The margin covers the
routing's view of lag being up to a few hundred ms old (nodes.REFRESH_S plus the controller's
sampling) and the time between a read and its fill. A write-through value is put only when no
tombstone exists: two writes of one user within the window may reach the cache in the opposite
order of their commits, so the second falls back to deleting the entry.

The same script PUBLISHes the user id on keys.L1_CHANNEL, always (whatever `cache.l1` says, so
no L1 can outlive a write it missed): each process's L1 subscriber drops that user's entries
(api/caching/local.py).

The same event bumps the query cache's generations of the user on the write's shard
(api.caching.querycache.changed), after the same commit.

A write whose invalidation fails (the cache is down) is remembered in this process and done again
once the cache answers (`retry_pending`); a process that dies first leaves the entries to their TTL.
"""
from __future__ import annotations

import collections
import logging
import threading

from django.db import transaction

from workbench import topology

from . import keys, metrics, querycache, reads, request, valkey

log = logging.getLogger(__name__)

TOMBSTONE_MARGIN_MS = 1000
MAX_PENDING = 10_000

# KEYS: user entry, namespace, tombstone, index. ARGV: the new representation ('' to delete the entry;
# '-' to leave it alone), its TTL ms, the tombstone's TTL ms, the clock in us, the namespace TTL ms,
# '1' to move the posts namespace on, the L1 channel, the user id, '1' to purge every key the index
# names (a deleted user). Returns 1 if the representation was put. The indexed keys are not in KEYS,
# but they share the user's hash tag, so they are in this script's slot.
_WRITE = """
local busy = redis.call('EXISTS', KEYS[3]) == 1
if ARGV[9] == '1' then
  for _, k in ipairs(redis.call('SMEMBERS', KEYS[4])) do redis.call('DEL', k) end
  redis.call('DEL', KEYS[4], KEYS[2])
elseif ARGV[6] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[4]) end
  redis.call('INCR', KEYS[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
local put = 0
if ARGV[1] ~= '-' then
  if ARGV[1] ~= '' and not busy then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    put = 1
  else
    redis.call('DEL', KEYS[1])
  end
end
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return put
"""

_pending_lock = threading.Lock()
_pending: collections.OrderedDict[int, tuple[bool, bool, bool]] = collections.OrderedDict()


def user_changed(user_id: int, *, user=None, posts: bool = False) -> None:
    """The user's row changed (or is gone: `posts=True` for a delete). `user`: the new row, read on
    the primary, which write-through puts in the cache."""
    _after_commit(user_id, user=user, user_entry=True, posts=posts)


def user_deleted(user_id: int) -> None:
    """Inside the delete's transaction: once it commits, purge every key of the user (above)."""
    _after_commit(user_id, user=None, user_entry=True, posts=True, purge=True)


def posts_changed(user_id: int, *, post_count: bool) -> None:
    """A post of the user changed; `post_count` when the user's count changed too."""
    _after_commit(user_id, user=None, user_entry=post_count, posts=True)


def _after_commit(user_id, *, user, user_entry: bool, posts: bool, purge: bool = False) -> None:
    from api.routing.db import write_alias  # the shard the write runs on
    transaction.on_commit(lambda: invalidate(user_id, user=user, user_entry=user_entry, posts=posts, purge=purge),
                          using=write_alias())
    querycache.changed(user_id, user=user_entry, posts=posts, purge=purge)


def invalidate(user_id: int, *, user=None, user_entry: bool = True, posts: bool = True, purge: bool = False) -> None:
    """Never raises: a write that is committed must not turn into an error."""
    # TTL-only: the entries stay until they expire. Not a deleted user's: keeping them is not a
    # staleness trade-off the lesson may make, it is personal data kept after its erasure.
    if topology.current().topology.cache.invalidation == "ttl" and not purge:
        metrics.count("invalidations_skipped")
        return
    value = "-" if not user_entry else ""
    if user is not None and user_entry and request.mode() in ("write-through", "write-behind"):
        value = _representation(user)
    t = topology.current().topology
    tombstone_ms = int(t.max_lag_ms) + TOMBSTONE_MARGIN_MS
    try:
        put = valkey.run(lambda c: valkey.script(_WRITE)(
            keys=[keys.user(user_id), keys.namespace(user_id), keys.tombstone(user_id), keys.index(user_id)],
            args=[value, t.cache.user_ttl_s * 1000, tombstone_ms, reads.now_us(), reads.NAMESPACE_TTL_MS,
                  "1" if posts else "0", keys.L1_CHANNEL, user_id, "1" if purge else "0"], client=c),
            key=keys.user(user_id))
    except valkey.Down:
        _remember(user_id, user_entry, posts, purge)
        return
    except Exception:  # noqa: BLE001 - e.g. a representation that failed to render
        log.exception("cache invalidation of user %s failed", user_id)
        _remember(user_id, user_entry, posts, purge)
        return
    metrics.count("invalidations")
    if put:
        metrics.count("writes_through")


def _representation(user) -> bytes:
    from api.gateway.envelope import etag_for, render_data
    from api.serializers import UserSerializer
    data = UserSerializer(user).data
    return reads.encode(etag_for(data), render_data(data))


def _remember(user_id: int, user_entry: bool, posts: bool, purge: bool = False) -> None:
    with _pending_lock:
        before = _pending.pop(user_id, (False, False, False))
        _pending[user_id] = (before[0] or user_entry, before[1] or posts, before[2] or purge)
        while len(_pending) > MAX_PENDING:  # beyond this, TTLs bound the staleness
            _pending.popitem(last=False)


def retry_pending() -> None:
    """Invalidations that failed while the cache was down, done again once it may answer."""
    querycache.retry_pending()
    if not _pending or not valkey.available():
        return
    with _pending_lock:
        todo = list(_pending.items())
        _pending.clear()
    # Per node: with one cluster node down, the users on the others are done now; those on the
    # dead node stay remembered without a round trip (its breaker is open after the first failure).
    for user_id, (user_entry, posts, purge) in todo:
        if valkey.available(keys.user(user_id)):
            invalidate(user_id, user_entry=user_entry, posts=posts, purge=purge)  # remembers it again if it fails
        else:
            _remember(user_id, user_entry, posts, purge)
