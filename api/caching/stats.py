"""What the caching layers report, for the admin API and the dashboard: per layer its counters
(added up over every app server, api.caching.metrics) and hit ratio; the `cache` Valkey's own view
(keys, memory, evictions, expiries; per node when it is a cluster); write-behind's queue (api.caching.behind, when present); and
the latest stale-read table saved by `manage.py stale_probe`."""
from __future__ import annotations

import json

import redis
from django.conf import settings

from . import local, metrics, valkey

LAYERS = (("l1", "per-process L1 (LRU in each app server)", metrics.L1),
          ("valkey", "application cache (the `cache` Valkey)", metrics.COUNTERS),
          ("query", "database query cache", metrics.QUERY))
VALKEY_INFO = ("used_memory", "maxmemory", "evicted_keys", "expired_keys", "keyspace_hits", "keyspace_misses")


def summary(state) -> dict:
    """`state`: a client of the `state` Valkey (where the counters are added up)."""
    layers = {}
    for name, title, counters in LAYERS:
        totals = counters.totals(state)
        looked = totals.get("hits", 0) + totals.get("misses", 0) + totals.get("single_flight_waits", 0)
        served = totals.get("hits", 0) + totals.get("single_flight_waits", 0)
        layers[name] = {"title": title, "counters": totals,
                        "hit_ratio": round(served / looked, 4) if looked else None}
    layers["valkey"]["server"] = _valkey_server()
    # Each app-server process has its own L1: this is the one of the worker that answered.
    layers["l1"]["this_process"] = {**local.stats(), "app_server": settings.APP_SERVER_NAME}
    return {"layers": layers, "write_behind": _write_behind(), "stale_probe": latest_stale_probe()}


def _valkey_server() -> dict:
    """The cache Valkey's INFO: its evictions are the application cache layer's evictions. With a
    cluster (`cache_nodes` 3 or 6), the sums over its nodes, and `nodes`: each node's keys, memory,
    hits and misses (INFO keyspace_hits/misses: every GET of a script counts, found or not), evictions."""
    n = valkey.nodes()
    rows = []
    for i, url in enumerate(valkey.node_urls(n), 1):
        row = {"node": "valkey-cache" if n == 1 else f"valkey-cache-{i}", "port": int(url.rsplit(":", 1)[1].split("/")[0])}
        try:
            row.update(_node_info(url))
            looked = (row["keyspace_hits"] or 0) + (row["keyspace_misses"] or 0)
            row["hit_ratio"] = round(row["keyspace_hits"] / looked, 4) if looked else None
        except Exception as exc:  # noqa: BLE001 - a report of a node that is down says so
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    up = [r for r in rows if "error" not in r]
    if not up:
        return {"error": rows[0]["error"] if n == 1 else "; ".join(f"{r['node']}: {r['error']}" for r in rows),
                "cache_nodes": n, "nodes": rows}
    total = {"keys": sum(r["keys"] for r in up), **{name: sum(r.get(name) or 0 for r in up) for name in VALKEY_INFO}}
    return {**total, "cache_nodes": n, "nodes_down": len(rows) - len(up), "nodes": rows}


def _node_info(url: str) -> dict:
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        info = client.info()
        return {"keys": client.dbsize(), **{name: info.get(name) for name in VALKEY_INFO}}
    finally:
        client.close()


def _write_behind() -> dict | None:
    try:
        from . import behind
    except ImportError:  # write-behind is not part of this build
        return None
    try:
        return behind.status()
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def latest_stale_probe() -> dict | None:
    """The newest table `manage.py stale_probe` saved in the data dir, or None."""
    from workbench.loadgen.staleprobe import saved_dir
    folder = saved_dir(settings.STACK.data_dir)
    files = sorted(folder.glob("stale-probe-*.json")) if folder.is_dir() else []
    for path in reversed(files):
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None
