"""The caching layers' counters per process, added up in the `state` Valkey (api.counters), one hash
per layer, so the controller and the dashboard can read them.

VALKEY (the application cache, `mode`): hits, misses, fills, fills_skipped (a tombstone stopped a
fill), invalidations, writes_through, errors (a cache call failed), skipped_down (the breaker was
open), single_flight_waits (a miss waited for another request's fill and was answered by it),
single_flight_fallbacks (a miss waited, then read the database after all). Evictions of this layer
are Valkey's own (`evicted_keys` in INFO), read where the counters are shown.

L1 (the per-process LRU, api/caching/local.py) and QUERY (the query cache,
api/caching/querycache.py): hits, misses, fills, evictions (dropped to make room), expirations,
invalidations.
"""
from api.counters import Counters

KEY = "workbench:cache:counts"
L1_KEY = "workbench:cache:l1:counts"
QUERY_KEY = "workbench:cache:query:counts"

COUNTERS = Counters(KEY)
L1 = Counters(L1_KEY)
QUERY = Counters(QUERY_KEY)
count = COUNTERS.count
