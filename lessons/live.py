"""The Live metrics page's arithmetic on the controller's `GET /live` answers (workbench/stack/live.py).
Pure: no Streamlit, no HTTP.

Rates are the difference of two answers' counters over the difference of their times (`at`). A
counter that went down (an app server restarted and its counts began again from zero) counts from
zero: its whole value is the increase, as Prometheus's rate() treats a reset.

Latency percentiles come from the app servers' request histograms (api/metrics.py: buckets from
1 ms to 10 s). The difference of the cumulative bucket counts between two answers is the histogram
of the requests answered in between. A percentile is found in it by linear interpolation inside
the bucket that holds it, as Prometheus's histogram_quantile does: with N requests and quantile q,
the rank q*N falls in the bucket (lower, upper] that holds c requests, with r requests below it, and
the estimate is lower + (upper - lower) * (q*N - r) / c. So it is exact to the bucket's width, not
to the request; a rank in the open bucket above the last bound shows that bound.
"""
from __future__ import annotations

from api.routing.shards import parse_alias
from lessons.loadbalancing import SCALING_EVENTS
from lessons.reliability import FAULT_EVENTS

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
# The autoscaler's and the faults' stories, plus the load-test runs that usually set them off.
TIMELINE_EVENTS = SCALING_EVENTS + FAULT_EVENTS + ("run_started", "run_finished")


def increase(before: float | None, now: float) -> float:
    """How much a counter grew; from zero after a reset (it went down) or when it is new."""
    return now if before is None or now < before else now - before


def quantile(q: float, bounds: list[float], buckets: list[float], count: float) -> float | None:
    """The q-quantile (seconds) of a histogram with cumulative `buckets` at `bounds` and `count`
    observations in all (the open last bucket's cumulative count); None when it holds none."""
    if count <= 0:
        return None
    rank = q * count
    below, lower = 0.0, 0.0
    for upper, cumulative in zip(bounds, buckets):
        if cumulative >= rank and cumulative > below:
            return lower + (upper - lower) * (rank - below) / (cumulative - below)
        below, lower = cumulative, upper
    return bounds[-1] if bounds else None


def _server_delta(before: dict | None, now: dict) -> dict:
    """The requests one app server answered between two answers: counts and histogram."""
    fields = ("count", "sum", "4xx", "5xx")
    reset = before is None or now["count"] < before["count"] or any(
        b < a for a, b in zip(before["buckets"], now["buckets"]))
    if reset:
        return {**{f: now[f] for f in fields}, "buckets": list(now["buckets"])}
    return {**{f: now[f] - before[f] for f in fields},
            "buckets": [b - a for a, b in zip(before["buckets"], now["buckets"])]}


def _percentiles(bounds: list[float], buckets: list[float], count: float) -> dict:
    out = {}
    for name, q in QUANTILES.items():
        seconds = quantile(q, bounds, buckets, count)
        out[f"{name}_ms"] = None if seconds is None else seconds * 1000
    return out


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def replicas(now: dict) -> dict[str, dict]:
    """The replicas in the controller's data-node report, by node."""
    nodes = ((now.get("data_nodes") or {}).get("nodes")) or {}
    return {name: node for name, node in sorted(nodes.items())
            if (parse_alias(name) or (0, 0))[1] > 0}


def sample(before: dict | None, now: dict) -> dict:
    """One point of the page's history: what happened between two answers (rates, latency
    percentiles, error and hit rates, per app server and per database node), and the gauges of
    `now` (replica lag, CPU, RSS). Without `before` only the gauges are there."""
    point = {"at": now["at"], "interval_s": None,
             "lag_ms": {name: node.get("lag_ms") for name, node in replicas(now).items()},
             "cpu_percent": {p["name"]: p.get("cpu_percent") for p in now.get("processes") or []},
             "rss_bytes": {p["name"]: p.get("rss_bytes") for p in now.get("processes") or []}}
    if before is None:
        return point
    m, b = now["metrics"], before["metrics"]
    seconds = max(now["at"] - before["at"], 1e-3)
    bounds = m["bounds"]
    comparable = b.get("bounds") == bounds  # the buckets changed (a new release): no histogram deltas
    servers, total = {}, {"count": 0.0, "4xx": 0.0, "5xx": 0.0, "buckets": [0.0] * len(bounds)}
    for name, counts in sorted(m["requests"].items()):
        delta = _server_delta(b["requests"].get(name) if comparable else None, counts)
        servers[name] = {"requests": delta["count"], "rps": delta["count"] / seconds, "5xx": delta["5xx"],
                         **_percentiles(bounds, delta["buckets"], delta["count"])}
        for field in ("count", "4xx", "5xx"):
            total[field] += delta[field]
        total["buckets"] = [x + y for x, y in zip(total["buckets"], delta["buckets"])]
    cache = {}
    for layer, counts in sorted(m["cache"].items()):
        old = b["cache"].get(layer, {})
        hits, misses = (increase(old.get(f), counts.get(f, 0.0)) for f in ("hits", "misses"))
        cache[layer] = {"hits": hits, "misses": misses, "hit_rate": _ratio(hits, hits + misses)}
    nodes = {}
    for node in sorted(set(m["db_queries"]) | set(m["pg"])):
        queries = increase(b["db_queries"].get(node), m["db_queries"].get(node, 0.0))
        old_tx = b["pg"].get(node, {}).get("transactions")
        tx = m["pg"].get(node, {}).get("transactions")
        nodes[node] = {"queries_per_s": queries / seconds,
                       "transactions_per_s": None if tx is None else increase(old_tx, tx) / seconds}
    point.update({
        "interval_s": seconds, "requests": total["count"], "rps": total["count"] / seconds,
        "5xx": total["5xx"], "4xx": total["4xx"], "error_rate": _ratio(total["5xx"], total["count"]),
        "client_error_rate": _ratio(total["4xx"], total["count"]),
        **_percentiles(bounds, total["buckets"], total["count"]),
        "servers": servers, "cache": cache, "nodes": nodes})
    return point


def since_start(now: dict) -> dict:
    """Counts since each app server (or Valkey) started: requests per app server, hit rate per layer."""
    m = now["metrics"]
    cache = {layer: _ratio(c.get("hits", 0.0), c.get("hits", 0.0) + c.get("misses", 0.0))
             for layer, c in m["cache"].items()}
    return {"requests": {name: c["count"] for name, c in m["requests"].items()}, "hit_rate": cache}


def shard_of(node: str, report_node: dict | None = None) -> int | None:
    """The shard a database node belongs to: the report's word, else its alias; None for meta."""
    if report_node and "shard" in report_node:
        return report_node["shard"]
    where = parse_alias(node)
    return where[0] if where else None


def shard_rows(now: dict, point: dict) -> list[dict]:
    """One row per shard: its nodes, queries per second the app servers sent it, transactions per
    second PostgreSQL counted on it, client connections and users (its primary's estimate)."""
    report = ((now.get("data_nodes") or {}).get("nodes")) or {}
    rates = point.get("nodes") or {}
    shards: dict[int, dict] = {}
    for node in sorted(set(report) | set(rates)):
        shard = shard_of(node, report.get(node))
        if shard is None:
            continue
        row = shards.setdefault(shard, {"shard": f"shard-{shard}", "nodes": [], "queries/s": None,
                                        "transactions/s": None, "connections": None, "users": None})
        row["nodes"].append(node)
        rate = rates.get(node) or {}
        for key, field in (("queries/s", "queries_per_s"), ("transactions/s", "transactions_per_s")):
            if rate.get(field) is not None:
                row[key] = (row[key] or 0.0) + rate[field]
        info = report.get(node) or {}
        if info.get("connections") is not None:
            row["connections"] = (row["connections"] or 0) + info["connections"]
        if info.get("users") is not None:
            row["users"] = (row["users"] or 0) + info["users"]
    return [{**row, "nodes": ", ".join(row["nodes"])} for _, row in sorted(shards.items())]


def timeline(events: list[dict]) -> list[dict]:
    """The autoscaler's and the faults' events (and load-test runs), oldest first."""
    return [e for e in events if str(e.get("event", "")).startswith(TIMELINE_EVENTS)]
