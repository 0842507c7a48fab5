"""Follow-up: how do you handle cache invalidation? The Trade-offs page's invalidation experiment
(lessons/app_pages/tradeoffs.py: the stale-read table of `manage.py stale_probe`, and what
write-behind loses by `manage.py write_behind_loss`), drawn here with keys of its own."""
from __future__ import annotations

from lessons.app_pages import tradeoffs

KEY = "invalidation"
TITLE = "How do you handle cache invalidation?"
QUESTION = ("Your cache holds profiles and posts pages. A user edits their bio or writes a post: how does every "
            "reader stop seeing the old copy, how quickly, and what does each way cost? Measure the strategies "
            "on the live stack below.")

ANSWER = """
**Start from what may be stale, and for how long.** A profile a few seconds old is fine for other
readers; the writer seeing their own edit vanish is not; a balance or a permission never. That
decides the strategy per resource, not one for the whole system.

**Invalidate on the event, bound it with a TTL.** The write path deletes (or overwrites) the keys
it changed *before* it acknowledges the write: in the table above event invalidation left no stale
read, whatever the strategy. The TTL stays as the safety net for a lost invalidation (a crash
between the commit and the delete, a message the L1 missed), so it bounds the damage, it does not
do the work. TTL alone is stale for up to the TTL after every write: the table shows most reads
stale under a steady write rate, aged up to the TTL.

**Close the race.** A reader that missed just before the write can put the old value back after
the delete. Guard the fill: a short tombstone or version check on the key (what this stack does),
or delete again after a delay. With several cache layers (a per-process L1 in front of a shared
cache), every layer needs the event: a pub/sub message to each app server, and a short L1 TTL for
the messages that are lost.

**Choose the write policy for the data.**
- *Cache-aside*: read fills on a miss, a write deletes. Simple, the default.
- *Write-through*: the write updates the cache too; the next read is a hit, the write does more.
- *Write-behind*: acknowledge once queued, write the database later. The fastest writes, and the
  only strategy that can lose acknowledged data: when the queue dies unpersisted, everything
  queued is gone (measured above with `state_fsync off`); fsync every write and the loss is zero,
  at a price per write. Use it for counters and likes, not for money.

**Replicas are a cache too.** A read replica behind the primary serves stale reads with no cache at
all (the Trade-offs page's consistency experiment): read-your-writes for the writer, `max_lag_ms`
to skip a replica too far behind, synchronous apply where nothing may be stale.

**Say what you would watch:** hit ratio per layer, invalidations per second, the stale-read rate of
a probe like this one, the write-behind queue's depth and age.
"""


def render() -> None:
    tradeoffs.invalidation(prefix="fu")
