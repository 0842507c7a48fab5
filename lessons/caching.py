"""The caching section of the Stack status page: what each caching layer is set to, how often it
answered, what the cache Valkey evicted, write-behind's queue, and the latest stale-read table.
Numbers come from GET /api/v1/admin/cache (counters added up over every app server)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons.widgets import metrics

LESSON = """
**Caching** keeps answers close to the reader, in layers:
- **L1**, a small LRU inside each app server: no network at all, but each server has its own copy,
  so a write must reach every server (a pub/sub message) and a short TTL bounds what a lost
  message costs.
- **The application cache** (the `cache` Valkey): one shared copy of rendered responses.
  `cache-aside` fills it on a miss; `write-through` also writes the new value on a write;
  `write-behind` acknowledges a write once it is queued and writes the database later, which is
  fast and loses the queue if the queue's store dies unpersisted.
- **The query cache**: rows of database queries, per shard, dropped when a write touches their table.

Invalidation by **events** drops what a write changed at once; **TTL only** leaves stale entries until
they expire. The stale-read table below measures the difference.
"""


def _counter_rows(layers: dict) -> list[dict]:
    rows = []
    for name, layer in layers.items():
        c = layer["counters"]
        ratio = layer.get("hit_ratio")
        rows.append({"layer": layer["title"], "hits": c.get("hits", 0) + c.get("single_flight_waits", 0),
                     "misses": c.get("misses", 0), "hit ratio": "\u2014" if ratio is None else f"{ratio:.1%}",
                     "fills": c.get("fills", 0), "invalidations": c.get("invalidations", 0),
                     "evictions": (layer.get("server") or {}).get("evicted_keys") if name == "valkey"
                     else c.get("evictions", 0),
                     "errors": c.get("errors", 0)})
    return rows


def render(data: dict) -> None:
    st.subheader("Caching")
    if "error" in data:
        st.warning(f"The admin cache API did not answer: {data['error']}")
        return
    cache = data["cache"]
    metrics({"Application cache": cache["mode"], "Invalidation": cache.get("invalidation", "events"),
             "L1": "on" if cache.get("l1") else "off", "Query cache": "on" if cache.get("query_cache") else "off"})
    with st.expander("What the layers are"):
        st.markdown(LESSON)
    st.table(pd.DataFrame(_counter_rows(data["layers"])).set_index("layer"))
    mine = data["layers"]["l1"].get("this_process")
    if mine:
        st.caption(f"L1 of the worker that answered ({mine['app_server']}, pid {mine['pid']}): {mine['size']:,} of "
                   f"{mine['capacity']:,} entries; invalidation subscriber "
                   f"{'connected' if mine['connected'] else 'NOT connected (the L1 serves nothing meanwhile)'}.")
    server = data["layers"]["valkey"].get("server") or {}
    if "error" in server:
        st.warning(f"The cache Valkey did not answer: {server['error']} (reads go to the database: X-Cache `down`).")
    else:
        what = (f"Cache Valkey Cluster ({server['cache_nodes']} nodes)" if server.get("cache_nodes", 1) > 1
                else "Cache Valkey")
        st.caption(f"{what}: {server['keys']:,} keys, {server['used_memory'] / 2**20:.1f} MiB used of "
                   f"{server['maxmemory'] / 2**20:.0f} MiB (allkeys-lru), {server['evicted_keys']:,} evicted, "
                   f"{server['expired_keys']:,} expired. Counters since the stack started, over every app server.")
    if len(server.get("nodes") or []) > 1:
        _cluster_nodes(server["nodes"])
    behind = data.get("write_behind")
    if behind:
        _write_behind(behind)
    probe = data.get("stale_probe")
    if probe:
        st.markdown(f"**Stale reads** (`python manage.py stale_probe`, measured {probe['at'][:16].replace('T', ' ')} UTC)")
        st.table(pd.DataFrame([{
            "case": r["case"], "reads": f"{r['all']['reads']:,}", "stale": f"{r['all']['stale']:,}",
            "stale share": f"{(r['all']['stale_fraction'] or 0):.2%}",
            "age p50 (ms)": _ms(r["all"]["age_p50_ms"]), "age max (ms)": _ms(r["all"]["age_max_ms"]),
            "writes": f"{r['writes']:,}"} for r in probe["rows"]]).set_index("case"))
        st.caption("A read is stale when a write of what it read was acknowledged before the read was sent "
                   "and the answer lacks it; its age is how long before the send that write was acknowledged.")
    else:
        st.caption("No stale-read table yet: run `python manage.py stale_probe` to measure one.")


def _cluster_nodes(nodes: list[dict]) -> None:
    """Per node of the cache cluster: each owns an even share of the slots, so keys and hits should
    spread evenly; a node that is down shows as DOWN (its slots' reads are misses meanwhile)."""
    rows = []
    for n in nodes:
        if "error" in n:
            rows.append({"node": n["node"], "port": str(n["port"]), "health": "DOWN", "keys": DASH, "memory (MiB)": DASH,
                         "hits": DASH, "misses": DASH, "hit ratio": DASH, "evicted": DASH})
            continue
        ratio = n.get("hit_ratio")
        rows.append({"node": n["node"], "port": str(n["port"]), "health": "up", "keys": f"{n['keys']:,}",
                     "memory (MiB)": f"{(n.get('used_memory') or 0) / 2**20:.1f}",
                     "hits": f"{n.get('keyspace_hits') or 0:,}", "misses": f"{n.get('keyspace_misses') or 0:,}",
                     "hit ratio": DASH if ratio is None else f"{ratio:.1%}", "evicted": f"{n.get('evicted_keys') or 0:,}"})
    st.markdown("**Cache cluster nodes** (Valkey's own INFO per node: every key lookup, found or not, since the "
                "node started; shared CPU on one machine)")
    st.table(pd.DataFrame(rows).set_index("node"))


DASH = "\u2014"


def _ms(value) -> str:
    return DASH if value is None else f"{value:,.1f}"


def _write_behind(status: dict) -> None:
    """Write-behind's queue: what waits in the state Valkey stream, and what the flusher did."""
    st.markdown("**Write-behind queue** (a stream in the `state` Valkey, applied by the `flusher` process)")
    if "error" in status:
        st.warning(f"Write-behind status unavailable: {status['error']}")
        return
    metrics({"Queued, not yet flushed": f"{status['depth']:,}", "Oldest waiting (s)": f"{status['lag_s']:.3f}",
             "State Valkey fsync": status["state_fsync"],
             "Flusher": "paused" if status["paused"] else status.get("flusher", {}).get("state", "\u2014")})
    st.caption(f"Counted in the state Valkey: {status['queued']:,} queued, {status['flushed']:,} "
               f"flushed, {status['rejected']:,} rejected (their user or post was deleted first), "
               f"{status['fallback']:,} written synchronously because the state Valkey did not answer. With "
               "fsync `off`, a crash of the state Valkey loses what is queued: "
               "`python manage.py write_behind_loss` measures it.")
