"""The controller's `GET /metrics`: one Prometheus text view of the whole stack (issue 11).

- every running app server's /metrics (api/metrics.py), scraped over loopback with the controller
  token, each sample labelled `app_server`;
- Valkey: INFO of each role's node (state, cache, and the cache cluster's nodes when it runs);
- PostgreSQL: pg_stat_database of each data node and meta, and the replication lag from the data
  nodes' last report (datanodes.py);
- Caddy: its admin API's own /metrics, and the requests in flight per upstream.

All scrapes run at once, each bounded by SCRAPE_TIMEOUT_S; a target that does not answer is left
out, with `up{job=..., instance=...} 0` in its place.
"""
from __future__ import annotations

import concurrent.futures
import time

import psycopg
import redis
import requests
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from . import caddy, cachecluster, datanodes

SCRAPE_TIMEOUT_S = 1.5
PG_TIMEOUT_S = 2  # libpq's connect_timeout has a floor of 2 s
PG_COLUMNS = ("xact_commit", "xact_rollback", "blks_hit", "blks_read", "tup_returned", "tup_fetched",
              "tup_inserted", "tup_updated", "tup_deleted")
PG_STATS = f"SELECT {', '.join(PG_COLUMNS)} FROM pg_stat_database WHERE datname = current_database()"
VALKEY_GAUGES = {"used_memory": "workbench_valkey_used_memory_bytes", "connected_clients": "workbench_valkey_connected_clients"}
VALKEY_COUNTERS = {"keyspace_hits": "workbench_valkey_keyspace_hits", "keyspace_misses": "workbench_valkey_keyspace_misses",
                   "evicted_keys": "workbench_valkey_evicted_keys"}


def _app_server(cfg, name: str, port: int) -> list:
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S,
                            headers={"Authorization": f"Bearer {cfg.controller_token() or ''}"})
    response.raise_for_status()
    families = list(text_string_to_metric_families(response.text))
    for family in families:
        family.samples = [s._replace(labels={**s.labels, "app_server": name}) for s in family.samples]
    return families


def _valkey(role: str, node: str, url: str) -> list:
    client = redis.Redis.from_url(url, socket_timeout=SCRAPE_TIMEOUT_S, socket_connect_timeout=SCRAPE_TIMEOUT_S)
    try:
        info = client.info()
    finally:
        client.close()
    labels = ["role", "node"]
    out = []
    for field, metric in VALKEY_GAUGES.items():
        family = GaugeMetricFamily(metric, f"Valkey INFO {field}.", labels=labels)
        family.add_metric([role, node], float(info.get(field, 0)))
        out.append(family)
    for field, metric in VALKEY_COUNTERS.items():
        family = CounterMetricFamily(metric, f"Valkey INFO {field}.", labels=labels)
        family.add_metric([role, node], float(info.get(field, 0)))
        out.append(family)
    keys = GaugeMetricFamily("workbench_valkey_keys", "Keys in all databases (INFO keyspace).", labels=labels)
    keys.add_metric([role, node], float(sum(v.get("keys", 0) for k, v in info.items()
                                            if k.startswith("db") and isinstance(v, dict))))
    out.append(keys)
    return out


def _postgres(cfg, node: str) -> list:
    with psycopg.connect(datanodes.node_url(cfg, node), connect_timeout=PG_TIMEOUT_S, autocommit=True) as conn:
        conn.execute(f"SET statement_timeout = {int(SCRAPE_TIMEOUT_S * 1000)}")
        row = conn.execute(PG_STATS).fetchone()
    out = []
    for column, value in zip(PG_COLUMNS, row or ()):
        family = CounterMetricFamily(f"workbench_pg_{column}", f"pg_stat_database.{column} of the node's database.",
                                     labels=["node"])
        family.add_metric([node], float(value or 0))
        out.append(family)
    return out


def _caddy(cfg) -> list:
    text = requests.get(f"http://127.0.0.1:{cfg.caddy_admin_port}/metrics", timeout=SCRAPE_TIMEOUT_S).text
    families = list(text_string_to_metric_families(text))
    in_flight = GaugeMetricFamily("workbench_caddy_upstream_in_flight", "Requests in flight per app server, "
                                  "as Caddy's reverse proxy counts them.", labels=["app_server"])
    for row in caddy.upstreams(cfg) or []:
        in_flight.add_metric([row["app_server"]], float(row["in_flight"]))
    return families + [in_flight]


def _targets(ctl) -> list[tuple[str, str, object]]:
    """(job, instance, scrape) for everything running now."""
    cfg = ctl.cfg
    targets = []
    for k in (ctl.apps.running() if ctl.apps else []):
        targets.append(("app", f"app-{k}", lambda k=k: _app_server(cfg, f"app-{k}", cfg.app_port(k))))
    targets.append(("valkey", "state", lambda: _valkey("state", "state", cfg.state_url)))
    nodes = ctl.data_nodes
    cluster = [i for i in range(1, 7) if nodes and cachecluster.name(i) in nodes._live()]
    if cluster:
        for i in cluster:
            url = f"redis://127.0.0.1:{cfg.cache_node_port(i)}/0"
            targets.append(("valkey", f"cache-{i}", lambda i=i, url=url: _valkey("cache", f"cache-{i}", url)))
    else:
        targets.append(("valkey", "cache", lambda: _valkey("cache", "cache", cfg.cache_url)))
    report = nodes.last_report if nodes else None
    pg_nodes = ["meta"] + sorted(name for name, node in (report.nodes if report else {}).items()
                                 if name != "meta" and node.get("state") not in ("pooler",) and node.get("port"))
    for node in pg_nodes:
        targets.append(("postgres", node, lambda node=node: _postgres(cfg, node)))
    targets.append(("caddy", "caddy", lambda: _caddy(cfg)))
    return targets


def _lag(ctl) -> list:
    report = ctl.data_nodes.last_report if ctl.data_nodes else None
    seconds = GaugeMetricFamily("workbench_pg_replication_lag_seconds", "Replay lag of each replica behind its "
                                "primary (the controller's data-node report).", labels=["node"])
    lag_bytes = GaugeMetricFamily("workbench_pg_replication_lag_bytes", "WAL bytes each replica has not replayed.",
                                  labels=["node"])
    age = GaugeMetricFamily("workbench_pg_report_age_seconds", "How old that report is.")
    if report is not None:
        age.add_metric([], max(0.0, time.time() - report.at))
        for name, node in sorted(report.nodes.items()):
            if node.get("state") in ("primary", "pooler") or name == "meta":
                continue
            if node.get("lag_ms") is not None:
                seconds.add_metric([name], float(node["lag_ms"]) / 1000)
            if node.get("lag_bytes") is not None:
                lag_bytes.add_metric([name], float(node["lag_bytes"]))
    return [seconds, lag_bytes, age]


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def collect(ctl) -> bytes:
    """The Prometheus text of the stack: every target scraped at once, each within its timeout."""
    targets = _targets(ctl)
    up = GaugeMetricFamily("up", "1 if the target answered this scrape, 0 if it was skipped.",
                           labels=["job", "instance"])
    merged: dict[str, object] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(targets))) as pool:
        futures = [(job, instance, pool.submit(scrape)) for job, instance, scrape in targets]
        for job, instance, future in futures:
            try:
                families = future.result(timeout=SCRAPE_TIMEOUT_S + PG_TIMEOUT_S + 1)
            except Exception:  # noqa: BLE001 - a node that does not answer is skipped, marked down
                up.add_metric([job, instance], 0.0)
                continue
            up.add_metric([job, instance], 1.0)
            for family in families:  # one family per name, its samples from every target
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([up, *merged.values(), *_lag(ctl)]))
    return generate_latest(registry)
