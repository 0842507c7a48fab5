"""The application cache (issue 6): responses of the hot reads kept in the `cache` Valkey.

What is cached: `GET /api/v1/users/{id}` and every page and time range of
`GET /api/v1/users/{id}/posts`, as already-rendered JSON bytes of the envelope's `data` plus their
ETag, so a hit never runs a serializer (api.views.base, api.gateway.envelope).

The topology's `cache.mode` picks the strategy, live:
- `off`: reads never look; writes still invalidate, so entries filled before caching was switched
  off cannot come back stale when it is switched on again.
- `cache-aside`: a read looks first; a miss reads the database and fills.
- `write-through`: as cache-aside, and a user update also puts the new representation in the cache.
- `write-behind`: as write-through, but profile updates and post creates/updates are acknowledged
  once queued in the `state` Valkey and written to PostgreSQL by the `flusher` (`behind`).

L1 (`cache.l1`, off by default): a small LRU in each app-server process (`local`), in front of
Valkey, for the same entries and keys, each kept at most `l1_ttl_ms` and at most `l1_entries` of
them. A read asks the L1, then Valkey (a hit there is copied into the L1), then the database (its
fill is copied only when Valkey accepted it, never past a write's tombstone); an L1 hit answers
`X-Cache: hit-l1` with no round trip at all, since the L1 also holds each user's posts namespace
version. Every invalidation publishes the user id; one subscriber thread per process drops that
user's L1 entries. While its subscription is down, the L1 serves nothing and is cleared on
reconnection; the TTL bounds what a lost message could leave. Another server's L1 may answer the
old data for the moment the message takes to arrive. It pays off most with a load-balancing policy
that keeps a user on one app server (consistent hashing).

Modules: `keys` (names, and why every user's keys share a hash tag), `valkey` (the guarded
connection: timeouts, circuit breaker, timing), `reads` (lookup and fill), `writes` (event-based
invalidation after every write), `request` (X-Cache and the per-request cost), `metrics` (counters),
`local` (the L1).
"""
