"""The nines of a design, from its components' nines, redundancy and failover times (modelled).

A request succeeds when its region is up (or geo-routing has moved it), the load balancers and app
servers left running can carry the load, and, for the requests that need the database, its shard
answers. The tiers are taken as independent, so the availabilities multiply:

- a pool of n nodes that needs k of them up: P(at least k of n up), binomial, each node up with
  probability a = 1 - node_failures_a_year x node_repair_h / hours in a year;
- a shard's primary: each of its failures stops the shard's writes for the failover time; its
  reads go on while any replica is up;
- the cache: a node lost is a failover of cache_failover_s, during which its keys are read from
  the database (this API falls back, X-Cache: down); counted as degraded, not as an outage, but
  the database must carry those misses (the fleet's max_util leaves that room only partly);
- regions: one region down takes its users' requests down until geo-routing moves them
  (region_failover_s); with one region, for the whole outage.
"""
from __future__ import annotations

import math

HOURS_A_YEAR = 8766.0
SECONDS_A_YEAR = HOURS_A_YEAR * 3600


def nines(a: float) -> float:
    return math.inf if a >= 1 else -math.log10(1 - a)


def at_least(k: int, n: int, a: float) -> float:
    """P(at least k of n independent nodes are up), each up with probability a. Summed in log space
    over the failure counts that still leave k up, so a 10,000-node pool stays exact enough."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if a >= 1:
        return 1.0
    q = 1 - a
    down = 0.0  # P(more than n - k nodes down)
    for failed in range(n - k + 1, n + 1):
        log_p = (math.lgamma(n + 1) - math.lgamma(failed + 1) - math.lgamma(n - failed + 1)
                 + failed * math.log(q) + (n - failed) * math.log(a))
        term = math.exp(log_p)
        down += term
        if term < 1e-30 and failed > n * q * 4:
            break
    return max(0.0, 1.0 - down)


def design(fleet: dict, p: dict) -> dict:
    """Availability of a sized fleet (fleet.size) with parameters `p` (parameters.toml [capacity],
    editable): one row per component, then the whole design, against 99.99%."""
    d = fleet["design"]
    fails = p["node_failures_a_year"]
    a = 1 - fails * p["node_repair_h"] / HOURS_A_YEAR
    r, regions = d["read_ratio"], d["regions"]
    rows = []
    tiers = {t["name"]: t for t in fleet["tiers"]}
    for name in ("load balancers", "app servers"):
        t = tiers[name]
        # Needed: the nodes that keep the tier under 95% utilisation at the region's rate.
        need = max(1, math.ceil(t["nodes"] * t["utilisation"] / 0.95))
        rows.append({"component": name, "availability": at_least(need, t["nodes"], a),
                     "how": f"{need} of {t['nodes']} nodes per region must be up"})
    primary_down = fails * p["db_failover_s"] / SECONDS_A_YEAR
    replicas = fleet["replicas_per_shard"]
    replica_down = (1 - a) ** replicas if replicas else primary_down
    writes, read_misses = 1 - r, r * (1 - d["cache_hit"])
    rows.append({"component": "database shard", "availability": 1 - writes * primary_down - read_misses * replica_down,
                 "how": f"primary failover {p['db_failover_s']:g} s x {fails:g} failures a year for writes "
                        f"({writes:.0%} of requests); reads that miss need 1 of {replicas} replicas"})
    if d["cache_hit"] > 0:
        rows.append({"component": "cache", "availability": 1.0,
                     "how": f"a lost node is {p['cache_failover_s']:g} s of misses read from the database "
                            "(degraded, not down)"})
    region_down = 1 - p["region_availability"]
    if regions > 1:
        outages = region_down * HOURS_A_YEAR  # outage hours a year per region, if each lasts an hour
        region_a = 1 - outages * p["region_failover_s"] / SECONDS_A_YEAR
        how = (f"{regions} regions; a region's outage costs its users {p['region_failover_s']:g} s of geo "
               "re-routing")
    else:
        region_a, how = p["region_availability"], "one region: its outages are the design's"
    rows.append({"component": "region", "availability": region_a, "how": how})
    total = math.prod(row["availability"] for row in rows)
    for row in rows:
        row["nines"] = round(nines(row["availability"]), 2)
    return {"components": rows, "availability": total, "nines": round(nines(total), 2),
            "target": 0.9999, "meets": total >= 0.9999,
            "downtime_min_a_year": round((1 - total) * SECONDS_A_YEAR / 60, 1)}
