"""Fleet sizing for a target rate and p95, from per-request costs (costs.py): how many load
balancers, app servers, cache nodes (and their memory for the hot set), shards and replicas per
shard, spread over regions. Every figure here is modelled.

Each tier is an M/M/c queue (queueing.py) whose servers are CPU cores: c = nodes x cores per node,
1/mu = the tier's CPU per request. A tier gets the most cores of (a) the fewest that keep its
utilisation under `max_util` (headroom for a lost node, imbalance and the next spike's first
seconds) and (b) the fewest whose own p95 fits its share of the latency budget. The end-to-end
p50/p95/p99 then come from sampling each request's path through the tiers:

    read hit:   LB + app + cache
    read miss:  LB + app + cache + DB replica
    write:      LB + app + DB primary of its shard + cache (invalidation)

with an intra-datacenter round trip per hop. Assumptions, all visible in the output: the tiers are
independent; service times are exponential (M/M/c) around the calibrated means; the LB spreads
requests evenly (least connections behaves like one queue per tier); reads go to replicas, writes
to primaries; a region must carry its share plus a failed region's (R / (R - 1) headroom).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

from .costs import Costs
from .queueing import MMc, Unstable, servers_for


@dataclass
class Design:
    rps: float = 10_000_000.0
    p95_ms: float = 100.0
    read_ratio: float = 0.9
    spike: float = 10.0
    cache_hit: float = 0.90          # share of reads the cache answers
    regions: int = 3
    region_failover: bool = True     # each region can carry a failed region's share
    max_util: float = 0.70
    app_cores: int = 16              # cores per node of each tier
    lb_cores: int = 16
    db_cores: int = 16
    cache_gb: float = 52.0           # memory per cache node
    users: float = 500e6             # the data set: users, of which a hot share is cached
    hot_share: float = 0.20
    entry_bytes: float = 1500.0      # a cached user or page, rendered JSON, plus Valkey's per-key overhead
    replicas_min: int = 1            # replicas per shard kept for failover whatever the read load
    hop_ms: float = 0.5              # round trip between tiers in one datacenter (parameters.toml emulation.rtt_ms)
    budget: dict = field(default_factory=lambda: {"lb": 0.1, "app": 0.5, "cache": 0.1, "db": 0.3})

    def at(self, rps: float) -> "Design":
        return replace(self, rps=rps)


@dataclass
class Tier:
    name: str
    rate: float          # requests (or commands) per second the tier serves, whole fleet
    service_ms: float    # CPU per request on one core
    cores: int
    nodes: int
    utilisation: float
    p95_ms: float        # this tier's own p95 response (wait + service) at that rate
    note: str = ""


def _size(name: str, rate: float, service_ms: float, cores_per_node: int, d: Design, budget_ms: float,
          note: str = "", min_nodes: int = 1) -> Tier:
    if rate <= 0:
        return Tier(name, 0.0, service_ms, 0, 0, 0.0, 0.0, note)
    mu = 1000.0 / service_ms
    cores = math.ceil(rate / (mu * d.max_util))
    try:
        cores = max(cores, servers_for(rate, mu, budget_ms / 1000))
    except ValueError:
        note = (note + "; " if note else "") + "its own service time is above its latency budget"
    nodes = max(math.ceil(cores / cores_per_node), min_nodes)
    cores = nodes * cores_per_node
    q = MMc(rate, mu, cores)
    return Tier(name, rate, service_ms, cores, nodes, round(q.utilisation, 4), round(q.percentile(0.95) * 1000, 3),
                note)


def size(d: Design, c: Costs) -> dict:
    """The fleet for `d` (its rps, all regions together), with the end-to-end latency it models."""
    if not 0 <= d.read_ratio <= 1 or not 0 <= d.cache_hit <= 1:
        raise ValueError("read_ratio and cache_hit are shares between 0 and 1")
    if d.regions < 1 or d.rps <= 0:
        raise ValueError("need rps > 0 and at least one region")
    headroom = d.regions / (d.regions - 1) if d.region_failover and d.regions > 1 else 1.0
    per_region = d.rps / d.regions * headroom
    r, h = d.read_ratio, d.cache_hit
    reads, writes = per_region * r, per_region * (1 - r)
    misses = reads * (1 - h)
    app_ms = r * c.app_cpu_ms_read + (1 - r) * c.app_cpu_ms_write
    b = {k: v * d.p95_ms for k, v in d.budget.items()}
    lb = _size("load balancers", per_region, c.lb_cpu_ms, d.lb_cores, d, b["lb"], min_nodes=2)
    app = _size("app servers", per_region, app_ms, d.app_cores, d, b["app"], min_nodes=2)
    # Cache: a GET per read, a SET per miss, a DEL per write; Valkey runs commands on one thread.
    ops = reads + misses + writes
    cache_cpu = _size("cache (CPU)", ops, c.cache_cpu_ms_op, 1, d, b["cache"])
    hot_bytes = d.users * d.hot_share * d.entry_bytes
    by_memory = math.ceil(hot_bytes / (d.cache_gb * 2**30 * 0.75))  # 25% kept free for fragmentation, forks
    cache_nodes = max(cache_cpu.nodes, by_memory, 1) if h > 0 else 0
    cache = Tier("cache nodes", ops, c.cache_cpu_ms_op, cache_nodes, cache_nodes,
                 round(ops * c.cache_cpu_ms_op / 1000 / cache_nodes, 4) if cache_nodes else 0.0,
                 cache_cpu.p95_ms, f"hot set {hot_bytes / 2**30:,.0f} GiB; "
                 f"{'memory' if by_memory >= cache_cpu.nodes else 'CPU'} decides; each with 1 replica")
    # Shards: primaries take the writes; replicas the reads that miss, with `replicas_min` for failover.
    primary = _size("db primaries", writes, c.db_cpu_ms_write, d.db_cores, d, b["db"])
    shards = max(primary.nodes, 1)
    replica = _size("db replicas", misses, c.db_cpu_ms_read, d.db_cores, d, b["db"])
    per_shard = max(math.ceil(replica.nodes / shards), d.replicas_min)
    replicas = Tier("db replicas", misses, c.db_cpu_ms_read, per_shard * shards * d.db_cores, per_shard * shards,
                    round(misses * c.db_cpu_ms_read / 1000 / (per_shard * shards * d.db_cores), 4)
                    if misses else 0.0, replica.p95_ms, f"{per_shard} per shard")
    primaries = replace(primary, nodes=shards, cores=shards * d.db_cores, note=f"{shards} shards")
    tiers = [lb, app, cache, primaries, replicas]
    latency = end_to_end(d, c, tiers, per_region)
    region = {t.name: t.nodes for t in tiers}
    return {
        "design": asdict(d), "costs": c.to_dict(), "per_region_rps": per_region, "headroom": headroom,
        "tiers": [asdict(t) for t in tiers],
        "per_region": region,
        "total": {name: n * d.regions for name, n in region.items()},
        "shards": shards, "replicas_per_shard": per_shard,
        "cache_memory_gib": round(cache_nodes * d.cache_gb * d.regions * 2, 1),  # each node has a replica
        "latency_ms": latency, "meets_p95": latency["p95"] <= d.p95_ms,
    }


def _mmc(rate: float, service_ms: float, cores: int) -> MMc | None:
    if rate <= 0 or cores <= 0:
        return None
    try:
        return MMc(rate, 1000.0 / service_ms, cores)
    except Unstable:
        return None


def _sample(q: MMc | None, rng: random.Random, service_ms: float) -> float:
    """One response time (ms) of an M/M/c tier: a wait with probability C (exponential at rate
    c mu - lam), plus an exponential service."""
    if q is None:
        return rng.expovariate(1000.0 / service_ms) if service_ms > 0 else 0.0
    wait = rng.expovariate(q.c * q.mu - q.lam) * 1000 if rng.random() < q.p_wait else 0.0
    return wait + rng.expovariate(q.mu) * 1000


def path_samples(d: Design, c: Costs, tiers: list[Tier], per_region: float, n: int = 8_000,
                 seed: int = 7) -> list[float]:
    """End-to-end response times (ms) of n sampled requests, inside one region."""
    rng = random.Random(seed)
    by = {t.name: t for t in tiers}
    q = {name: _mmc(t.rate, t.service_ms, t.cores) for name, t in by.items()}
    out = []
    for _ in range(n):
        read = rng.random() < d.read_ratio
        t = d.hop_ms + _sample(q["load balancers"], rng, c.lb_cpu_ms) + max(c.lb_ms - c.lb_cpu_ms, 0.0)
        t += d.hop_ms + _sample(q["app servers"], rng, c.app_cpu_ms_read if read else c.app_cpu_ms_write)
        if d.cache_hit > 0:
            t += d.hop_ms + c.cache_rtt_ms + _wait_only(q["cache nodes"], rng)
        if read and rng.random() >= d.cache_hit:
            t += d.hop_ms + c.db_ms_read + _wait_only(q["db replicas"], rng)
        elif not read:
            t += d.hop_ms + c.db_ms_write + _wait_only(q["db primaries"], rng)
        out.append(t)
    return out


def _wait_only(q: MMc | None, rng: random.Random) -> float:
    """The queueing wait alone (the service is in the measured round trip already)."""
    if q is None or rng.random() >= q.p_wait:
        return 0.0
    return rng.expovariate(q.c * q.mu - q.lam) * 1000


def percentiles(samples: list[float]) -> dict:
    s = sorted(samples)
    pick = lambda q: round(s[min(len(s) - 1, int(q * len(s)))], 3)  # noqa: E731
    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": round(sum(s) / len(s), 3)}


def end_to_end(d: Design, c: Costs, tiers: list[Tier], per_region: float) -> dict:
    return percentiles(path_samples(d, c, tiers, per_region))


# --- the seed's phases --------------------------------------------------------------------------
PHASES = [
    # (name, the seed's figure, what the phase has)
    ("Start small", 1_000, {"app_nodes": 1, "cache": False, "replicas": 0, "shards": 1, "regions": 1}),
    ("Phase 1: caching", 10_000, {"app_nodes": 1, "cache": True, "replicas": 0, "shards": 1, "regions": 1}),
    ("Phase 2: horizontal scaling", 100_000, {"app_nodes": None, "cache": True, "replicas": 5, "shards": 1,
                                             "regions": 1}),
    ("Phase 3: sharding", 1_000_000, {"app_nodes": None, "cache": True, "replicas": None, "shards": None,
                                      "regions": 1}),
    ("Phase 4: multi-region", 10_000_000, {"app_nodes": None, "cache": True, "replicas": None, "shards": None,
                                           "regions": 3}),
]


def phase_capacity(d: Design, c: Costs, shape: dict) -> tuple[float | None, str]:
    """The highest rate a phase's fixed parts carry at utilisation max_util (None: nothing in the
    phase is fixed, it scales out), and which part limits it."""
    r = d.read_ratio
    h = d.cache_hit if shape["cache"] else 0.0
    limits = []
    if shape["app_nodes"]:
        app_ms = r * c.app_cpu_ms_read + (1 - r) * c.app_cpu_ms_write
        limits.append((shape["app_nodes"] * d.app_cores * d.max_util * 1000 / app_ms,
                       f"{shape['app_nodes']} app server(s) of {d.app_cores} cores"))
    if shape["shards"] == 1:
        # One primary takes the writes and, with no replicas, the reads that miss too.
        per_req = (1 - r) * c.db_cpu_ms_write + (r * (1 - h) * c.db_cpu_ms_read if not shape["replicas"] else 0)
        limits.append((d.db_cores * d.max_util * 1000 / per_req, "the one primary"))
        if shape["replicas"]:
            limits.append((shape["replicas"] * d.db_cores * d.max_util * 1000 / (r * (1 - h) * c.db_cpu_ms_read),
                           f"{shape['replicas']} replicas"))
    if not limits:
        return None, "scales out (shards, replicas and app servers are added)"
    rate, why = min(limits)
    return rate, why


def phases(d: Design, c: Costs) -> list[dict]:
    rows = []
    for name, claimed, shape in PHASES:
        limit, why = phase_capacity(d, c, shape)
        fleet = size(replace(d, rps=claimed, regions=shape["regions"], cache_hit=d.cache_hit if shape["cache"] else 0.0),
                     c)
        holds = limit is None or limit >= claimed
        rows.append({"phase": name, "seed_rps": claimed, "model_max_rps": limit, "limited_by": why,
                     "holds": holds, "fleet": fleet["total"], "p95_ms": fleet["latency_ms"]["p95"]})
    return rows
