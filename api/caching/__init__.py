"""The application cache (issue 6): responses of the hot reads kept in the `cache` Valkey.

What is cached: `GET /api/v1/users/{id}` and every page and time range of
`GET /api/v1/users/{id}/posts`, as already-rendered JSON bytes of the envelope's `data` plus their
ETag, so a hit never runs a serializer (api.views.base, api.gateway.envelope).

The topology's `cache.mode` picks the strategy, live:
- `off`: reads never look; writes still invalidate, so entries filled before caching was switched
  off cannot come back stale when it is switched on again.
- `cache-aside`: a read looks first; a miss reads the database and fills.
- `write-through`: as cache-aside, and a user update also puts the new representation in the cache.

Modules: `keys` (names, and why every user's keys share a hash tag), `valkey` (the guarded
connection: timeouts, circuit breaker, timing), `reads` (lookup and fill), `writes` (event-based
invalidation after every write), `request` (X-Cache and the per-request cost), `metrics` (counters).
"""
