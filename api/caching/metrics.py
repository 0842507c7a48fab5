"""The cache's counters per process, added up in the `state` Valkey under KEY (api.counters), so
the controller and the dashboard can read them: hits, misses, fills, fills_skipped (a tombstone
stopped a fill), invalidations, errors (a cache call failed), skipped_down (the breaker was open),
single_flight_waits (a miss waited for another request's fill and was answered by it),
single_flight_fallbacks (a miss waited, then read the database after all: the wait timed out, or the
lock holder did not fill)."""
from api.counters import Counters

KEY = "workbench:cache:counts"

COUNTERS = Counters(KEY)
count = COUNTERS.count
