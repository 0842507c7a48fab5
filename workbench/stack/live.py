"""The controller's `GET /live?since=N`: everything the dashboard's Live metrics page shows, in one
answer, so that the page polls once per refresh (issue 10, item 8).

- `metrics`: the stack's Prometheus view (metrics.collect, the same scrape as `GET /metrics`) cut
  down to what the page needs: per app server the request-latency histogram summed over route,
  method and status (cumulative buckets, so the page can take deltas between refreshes), 4xx and
  5xx counts; cache hits and misses per layer; queries per database node; PostgreSQL transactions
  per node; Valkey INFO per node; Caddy's requests in flight per app server; which targets answered.
- `processes`, `data_nodes` (replica lag, connections, users per shard), `upstreams`, `served`,
  `chaos`: as `GET /status` has them (the supervisor's CPU percent and RSS per process tree).
- `events`: the controller's events logged after number `since`, each with its number `seq`;
  `cursor` is the newest number, for the next call; `missed` counts events that left the log (it
  keeps the last 200) before this caller saw them.

Everything is counters as read now: rates are the caller's deltas between two answers, over `at`.
"""
from __future__ import annotations

import concurrent.futures
import math
import time
from urllib.parse import parse_qs, urlsplit

import psutil
from prometheus_client.parser import text_string_to_metric_families

from . import metrics

REQUESTS = "workbench_http_request_duration_seconds"
STATUS_FIELDS = ("phase", "error", "processes", "data_nodes", "upstreams", "served", "chaos")


class QueryError(ValueError):
    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field


def cursor(path: str) -> int:
    """The `since` of `/live?since=N` (0 when absent); QueryError naming the parameter at fault."""
    values = parse_qs(urlsplit(path).query, keep_blank_values=True)
    unknown = sorted(set(values) - {"since"})
    if unknown:
        raise QueryError(unknown[0], f"unknown query parameter {unknown[0]!r}; /live takes only `since`")
    raw = values.get("since", ["0"])
    if len(raw) != 1 or not raw[0].isascii() or not raw[0].isdigit() or len(raw[0]) > 18:
        raise QueryError("since", "since must be one whole number >= 0 (the `cursor` of the previous answer)")
    return int(raw[0])


def _add(table: dict, key, field: str, value: float) -> None:
    row = table.setdefault(key, {})
    row[field] = row.get(field, 0.0) + value


def summarize(text: str) -> dict:
    """The Prometheus text of metrics.collect, reduced to the figures the page shows. Pure."""
    requests: dict = {}
    bounds: set[float] = set()
    out = {"requests": requests, "bounds": [], "cache": {}, "db_queries": {}, "pg": {}, "valkey": {},
           "in_flight": {}, "up": {}}
    for family in text_string_to_metric_families(text):
        for name, labels, value in ((s.name, s.labels, s.value) for s in family.samples):
            if name.startswith(REQUESTS):
                server = requests.setdefault(labels.get("app_server", "?"), {"count": 0.0, "sum": 0.0,
                                                                             "4xx": 0.0, "5xx": 0.0, "le": {}})
                if name == REQUESTS + "_bucket":
                    le = float(labels["le"])
                    if math.isfinite(le):
                        bounds.add(le)
                        server["le"][le] = server["le"].get(le, 0.0) + value
                elif name == REQUESTS + "_count":
                    server["count"] += value
                    status = labels.get("status", "")
                    if status[:1] in ("4", "5"):
                        server[status[0] + "xx"] += value
                elif name == REQUESTS + "_sum":
                    server["sum"] += value
            elif name in ("workbench_cache_hits_total", "workbench_cache_misses_total"):
                _add(out["cache"], labels["layer"], name.split("_")[2], value)
            elif name == "workbench_db_queries_total":
                out["db_queries"][labels["node"]] = out["db_queries"].get(labels["node"], 0.0) + value
            elif name in ("workbench_pg_xact_commit_total", "workbench_pg_xact_rollback_total"):
                _add(out["pg"], labels["node"], "transactions", value)
            elif name.startswith("workbench_valkey_"):
                field = name.removeprefix("workbench_valkey_").removesuffix("_total")
                _add(out["valkey"], labels["node"], field, value)
                out["valkey"][labels["node"]]["role"] = labels["role"]
            elif name == "workbench_caddy_upstream_in_flight":
                out["in_flight"][labels["app_server"]] = value
            elif name == "up":
                out["up"][f"{labels['job']}/{labels['instance']}"] = value
    out["bounds"] = sorted(bounds)
    for server in requests.values():  # cumulative counts aligned with `bounds`; the +Inf bucket is `count`
        le = server.pop("le")
        server["buckets"] = [le.get(b, 0.0) for b in out["bounds"]]
    return out


def events_since(ctl, since: int) -> dict:
    """The controller's events numbered above `since` (the log numbers each one as it is logged)."""
    with ctl.events_lock:
        events, logged = list(ctl.events), ctl.logged
    if since > logged:  # a cursor from an earlier controller (its numbering starts again): all of this one's
        since = 0
    first = logged - len(events) + 1  # the number of the oldest event still in the log
    return {"events": [{"seq": first + i, **e} for i, e in enumerate(events) if first + i > since],
            "cursor": logged, "missed": max(0, first - 1 - since)}


def snapshot(ctl, since: int = 0) -> dict:
    """One answer of `GET /live`: the scrape runs in a thread while the supervisor's status is read."""
    at = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        scrape = pool.submit(metrics.collect, ctl)
        status = ctl.status()
        text = scrape.result().decode()
    memory = psutil.virtual_memory()
    return {"at": round(at, 3), "took_s": round(time.time() - at, 3),
            "machine": {"cpus": psutil.cpu_count(), "memory_bytes": memory.total},
            **{k: status.get(k) for k in STATUS_FIELDS}, "metrics": summarize(text), **events_since(ctl, since)}
