"""What the caching layers report, for the admin API and the dashboard: per layer its counters
(added up over every app server, api.caching.metrics) and hit ratio; the `cache` Valkey's own view
(keys, memory, evictions, expiries); write-behind's queue (api.caching.behind, when present); and
the latest stale-read table saved by `manage.py stale_probe`."""
from __future__ import annotations

import json

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
    """The cache Valkey's INFO: its evictions are the application cache layer's evictions."""
    try:
        info = valkey.client().info()
        keys = valkey.client().dbsize()
    except Exception as exc:  # noqa: BLE001 - a report of a cache that is down says so
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"keys": keys, **{name: info.get(name) for name in VALKEY_INFO}}


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
