"""The controller's data-node report (`GET /status` -> `data_nodes`) and the topology's pending
changes, shaped into the rows the status page shows. Pure: no Streamlit, no HTTP.

Only what the report holds is shown; anything it does not hold is a dash, never a guess.
"""
from __future__ import annotations

import json

DASH = "\u2014"


def _replica(name: str) -> bool:
    return name.startswith("replica-") or "-replica-" in name  # replica-2, shard-3-replica-1


def _shard(name: str, node: dict) -> int | None:
    """The shard a node belongs to, as the controller reports it; None for meta and PgBouncer."""
    if "shard" in node:
        return node["shard"]
    return 1 if name == "primary" or name.startswith("replica-") else None


def _order(item: tuple) -> tuple:
    """Shard by shard: its primary, then its replicas; then anything else (meta, PgBouncer)."""
    name, node = item
    shard = _shard(name, node)
    return shard is None, shard or 0, _replica(name), name


def _health(name: str, node: dict) -> str:
    if _replica(name) and "state" not in node:  # only a counter left: it no longer runs
        return "not running"
    # The primary, a running replica, PgBouncer, and meta once the controller samples it (a report
    # with only meta's counters says nothing of its health).
    if "healthy" in node and (name != "meta" or "state" in node):
        return "healthy" if node["healthy"] else "DOWN"
    return DASH


def _shown(value, fmt: str = "{}") -> str:
    return DASH if value is None else fmt.format(value)


def node_rows(report: dict | None, lag_label: str = "replay lag (ms)") -> list[dict]:
    """One row per data node: health, replication and sync state, port, the apply delay the
    controller set (recovery_min_apply_delay), replay lag in ms and in WAL bytes (replicas only: the
    primary is the source), open connections, queries answered. With more than one shard the rows
    come shard by shard, with the shard and, on each shard's primary, its users and posts (the
    primary's live-row estimates)."""
    report = report or {}
    delays = (report.get("running") or {}).get("replica_delays_ms") or {}
    found = sorted((report.get("nodes") or {}).items(), key=_order)
    sharded = len({_shard(name, node) for name, node in found} - {None}) > 1
    rows = []
    for name, node in found:
        replica = _replica(name)
        row = {"node": name}
        if sharded:
            shard = _shard(name, node)
            row["shard"] = DASH if shard is None else f"shard-{shard}"
        row.update({
            "health": _health(name, node),
            "replication": node.get("state") or DASH,
            "sync": node.get("sync_state") or DASH,
            "port": _shown(node.get("port")),
            "apply delay (ms)": _shown(delays.get(name), "{:,}") if "state" in node else DASH,
            lag_label: _shown(node.get("lag_ms"), "{:.1f}") if replica else DASH,
            "lag (WAL bytes)": _shown(node.get("lag_bytes"), "{:,}") if replica else DASH,
            "connections": _shown(node.get("connections")),
            "queries": f"{node.get('queries', 0):,}",  # the counter starts empty with the stack
        })
        if sharded:
            row["users"] = _shown(node.get("users"), "{:,}")
            row["posts"] = _shown(node.get("posts"), "{:,}")
        rows.append(row)
    return rows


def running_value(value):
    """A running value for a metric: a number or a word as it is; a value per shard (a change that
    has reached some shards only) as `shard: value` pairs."""
    if value is None:
        return DASH
    if isinstance(value, dict):
        return ", ".join(f"{name}: {_value(v)}" for name, v in value.items())
    return value


def _value(value) -> str:
    return DASH if value is None else value if isinstance(value, str) else json.dumps(value)


def pending_rows(pending: list[dict] | None) -> list[dict]:
    """The topology's pending changes: field, what the topology wants, what runs now."""
    return [{"field": p["field"], "wanted": _value(p.get("wanted")), "running": _value(p.get("running"))}
            for p in pending or []]
