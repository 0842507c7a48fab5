"""Multi-region (modelled): replication lag, RPO and RTO per replication mode, and what geo-routing
does to the p95 users see.

Replication modes, as PostgreSQL names them (the topology's `replication` field runs them here):
- async: a commit returns at once; a replica in another region is behind by the one-way trip plus
  its own apply lag. Losing the primary's region loses what was committed in that window (RPO).
- remote_write: a commit waits until a replica in another region has the WAL (one round trip);
  nothing acknowledged is lost (RPO 0), but a read there may still be behind by its apply.
- remote_apply: a commit waits until that replica has applied it: RPO 0 and reads there see it.
RTO is the same for each: detect the failure, promote a replica, move the users (geo-routing's
health checks and DNS TTL).

Users: spread evenly over the regions. With geo-routing each reaches its nearest region
(user_rtt_ms); without it, everyone goes to one region, and the others' users pay the
cross-region round trip on top. Writes go to the shard's primary in its home region: from the
other regions they cross once more (a request's writes are a share 1 - read_ratio).
"""
from __future__ import annotations

import random

MODES = ("async", "remote_write", "remote_apply")


def replication(mode: str, p: dict) -> dict:
    rtt, local = p["region_rtt_ms"], p["local_lag_ms"]
    detect_s = p["region_failover_s"]
    if mode == "async":
        lag, rpo, added = rtt / 2 + local, rtt / 2 + local, 0.0
    elif mode == "remote_write":
        lag, rpo, added = rtt / 2 + local, 0.0, rtt
    elif mode == "remote_apply":
        lag, rpo, added = 0.0, 0.0, rtt + local
    else:
        raise ValueError(f"mode: one of {', '.join(MODES)}")
    return {"mode": mode, "lag_ms": round(lag, 2), "rpo_ms": round(rpo, 2), "write_added_ms": round(added, 2),
            "rto_s": round(detect_s + p["db_failover_s"], 1)}


def user_latency(server_ms: list[float], regions: int, read_ratio: float, p: dict, geo_routing: bool,
                 mode: str = "async", seed: int = 11) -> dict:
    """p50/p95/p99 (ms) users see: the server-side samples plus their network round trips."""
    rng = random.Random(seed)
    added_write = replication(mode, p)["write_added_ms"]
    out = []
    for t in server_ms:
        home = rng.randrange(regions)           # the user's own region
        served = home if geo_routing else 0     # where the request is answered
        latency = t + p["user_rtt_ms"] + (p["region_rtt_ms"] if served != home else 0.0)
        if rng.random() >= read_ratio:          # a write: to its shard's primary, somewhere
            primary = rng.randrange(regions)
            latency += added_write + (p["region_rtt_ms"] if primary != served else 0.0)
        out.append(latency)
    out.sort()
    pick = lambda q: round(out[min(len(out) - 1, int(q * len(out)))], 2)  # noqa: E731
    return {"geo_routing": geo_routing, "mode": mode, "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99)}


def table(server_ms: list[float], regions: int, read_ratio: float, p: dict) -> list[dict]:
    """Every replication mode with and without geo-routing."""
    rows = []
    for mode in MODES:
        rep = replication(mode, p)
        for geo in (True, False):
            rows.append({**rep, **user_latency(server_ms, regions, read_ratio, p, geo, mode)})
    return rows
