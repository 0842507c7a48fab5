"""Where a user lives when users are spread over N shards: the placement strategies, as pure
functions of the user id (no I/O). The router, resharding and the lessons all use these.

- `hash`: a good 64-bit mixer (splitmix64's finaliser) of the id, modulo N. Even for any ids.
- `consistent`: a ring of virtual nodes (VNODES per shard); an id belongs to the first point at or
  after its mixed value. Going from N to N+1 shards moves only about 1/(N+1) of the ids, all of
  them to the new shard.
- `modulo`: the seed's `user_id % N` on the raw id. Snowflake ids end in a 12-bit sequence that
  restarts every millisecond, so their low bits are far from uniform: for N = 2, 4 or 8,
  `id % N` is `sequence % N`, and users made one at a time all have sequence 0, so they all land
  on shard 1: the skew the lesson shows. Going from N to N+1 moves about N/(N+1) of the ids.
- `range`: the id space (time, for snowflakes) cut into N equal slices from the id epoch to
  RANGE_YEARS later. Every new user lands in the slice of "now": one hot shard takes every write.
Shards are numbered 1..N, as in the seed's "Shard 1" and in `X-DB-Node: shard-1/primary`.
(`directory` keeps an explicit table in `meta`; it is not a pure function and lives in
api/routing/placement.py, which also follows a reshard in progress.)

Node names (also the Django database aliases and the controller's process names): shard 1 is
`primary` with `replica-1..4`, as before sharding; shard k >= 2 is `shard-k` with
`shard-k-replica-1..4`. Headers show them as `shard-k/primary` and `shard-k/replica-i` once there
is more than one shard (DESIGN.md section 2).
"""
from __future__ import annotations

import bisect
import functools
import hashlib

from .ids import GENERATOR_BITS, SEQUENCE_BITS

STRATEGIES = ("hash", "consistent", "modulo", "range")  # the pure ones; plus "directory"
MAX_SHARDS = 8
# Points per shard on the ring. Arcs of random points vary like 1/sqrt(VNODES): with 160 a shard
# owned up to 24% more than its share (N=8); with 4096 every shard's arc is within 3% of 1/N for
# N <= 8, so the spread passes a chi-squared test. Building a ring takes ~35 ms, once per N.
VNODES = 4096
RANGE_YEARS = 10      # `range` slices the first ten years of ids
_MASK = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finaliser: every input bit affects every output bit (a bijection on 64 bits)."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@functools.lru_cache(maxsize=MAX_SHARDS)
def ring(shards: int) -> tuple[list[int], list[int]]:
    """The consistent-hash ring for `shards` shards: sorted points and the shard owning each.
    A point's position depends only on its shard and replica number, so shard k's points are the
    same whatever N is: that is what limits movement when N changes."""
    points = []
    for shard in range(1, shards + 1):
        for v in range(VNODES):
            digest = hashlib.blake2b(f"shard-{shard}#{v}".encode(), digest_size=8).digest()
            points.append((int.from_bytes(digest, "big"), shard))
    points.sort()
    return [p for p, _ in points], [s for _, s in points]


def _range_bounds(shards: int) -> list[int]:
    span_ms = int(RANGE_YEARS * 365.25 * 24 * 3600 * 1000)
    shift = GENERATOR_BITS + SEQUENCE_BITS
    return [((span_ms * k) // shards) << shift for k in range(1, shards)]


def shard_of(user_id: int, shards: int, strategy: str) -> int:
    """The shard (1..shards) that holds `user_id` under `strategy`."""
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_SHARDS}, not {shards}")
    if shards == 1:
        return 1
    if strategy == "hash":
        return mix64(user_id) % shards + 1
    if strategy == "consistent":
        points, owners = ring(shards)
        i = bisect.bisect_left(points, mix64(user_id))
        return owners[i % len(points)]
    if strategy == "modulo":
        return user_id % shards + 1
    if strategy == "range":
        return bisect.bisect_right(_range_bounds(shards), user_id) + 1
    raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def spread(user_ids, shards: int, strategy: str) -> list[int]:
    """How many of `user_ids` each shard 1..shards would hold under `strategy`."""
    counts = [0] * shards
    for u in user_ids:
        counts[shard_of(u, shards, strategy) - 1] += 1
    return counts


def chi_squared(counts: list[int]) -> float:
    """Pearson's statistic of `counts` against an even spread (df = len(counts) - 1)."""
    total = sum(counts)
    if not total or len(counts) < 2:
        return 0.0
    expected = total / len(counts)
    return sum((c - expected) ** 2 / expected for c in counts)


def moved_fraction(user_ids, strategy: str, before: int, after: int) -> float:
    """The share of `user_ids` whose shard changes when going from `before` to `after` shards."""
    ids = list(user_ids)
    moved = sum(shard_of(u, before, strategy) != shard_of(u, after, strategy) for u in ids)
    return moved / len(ids) if ids else 0.0



# --- node names ----------------------------------------------------------------------------------
MAX_REPLICAS = 4


def primary_alias(shard: int) -> str:
    return "primary" if shard == 1 else f"shard-{shard}"


def replica_alias(shard: int, index: int) -> str:
    return f"replica-{index}" if shard == 1 else f"shard-{shard}-replica-{index}"


def all_aliases() -> list[str]:
    """Every data node alias that can exist: MAX_SHARDS primaries, each with MAX_REPLICAS replicas."""
    return [a for k in range(1, MAX_SHARDS + 1)
            for a in [primary_alias(k)] + [replica_alias(k, i) for i in range(1, MAX_REPLICAS + 1)]]


def parse_alias(alias: str) -> tuple[int, int] | None:
    """(shard, replica index; 0 for the primary) of a data node alias, or None for anything else."""
    if alias == "primary":
        return 1, 0
    parts = alias.split("-")
    try:
        if parts[0] == "replica" and len(parts) == 2:
            return 1, int(parts[1])
        if parts[0] == "shard" and len(parts) == 2:
            return int(parts[1]), 0
        if parts[0] == "shard" and len(parts) == 4 and parts[2] == "replica":
            return int(parts[1]), int(parts[3])
    except ValueError:
        return None
    return None


def display_name(alias: str, sharded: bool) -> str:
    """`primary`, `replica-2` without sharding; `shard-1/primary`, `shard-3/replica-1` with it."""
    where = parse_alias(alias)
    if where is None or not sharded:
        return alias
    shard, index = where
    return f"shard-{shard}/" + (f"replica-{index}" if index else "primary")
