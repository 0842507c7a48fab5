"""The controller's data-node report (`GET /status` -> `data_nodes`) and the topology's pending
changes, shaped into the rows the status page shows. Pure: no Streamlit, no HTTP.

Only what the report holds is shown; anything it does not hold is a dash, never a guess.
"""
from __future__ import annotations

import json

DASH = "\u2014"


def _order(name: str) -> tuple:
    """primary, then the replicas, then anything else (meta)."""
    return name != "primary", not name.startswith("replica-"), name


def _health(name: str, node: dict) -> str:
    if name.startswith("replica-") and "state" not in node:  # only a counter left: it no longer runs
        return "not running"
    if "healthy" in node and name != "meta":  # the primary, a running replica, PgBouncer
        return "healthy" if node["healthy"] else "DOWN"
    return DASH  # meta: the controller counts its queries but does not sample it


def _shown(value, fmt: str = "{}") -> str:
    return DASH if value is None else fmt.format(value)


def node_rows(report: dict | None, lag_label: str = "replay lag (ms)") -> list[dict]:
    """One row per data node: health, replication and sync state, port, the apply delay the
    controller set (recovery_min_apply_delay), replay lag in ms and in WAL bytes (replicas only: the
    primary is the source), open connections, queries answered."""
    report = report or {}
    delays = (report.get("running") or {}).get("replica_delays_ms") or {}
    rows = []
    for name, node in sorted((report.get("nodes") or {}).items(), key=lambda kv: _order(kv[0])):
        replica = name.startswith("replica-")
        rows.append({
            "node": name,
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
    return rows


def _value(value) -> str:
    return DASH if value is None else value if isinstance(value, str) else json.dumps(value)


def pending_rows(pending: list[dict] | None) -> list[dict]:
    """The topology's pending changes: field, what the topology wants, what runs now."""
    return [{"field": p["field"], "wanted": _value(p.get("wanted")), "running": _value(p.get("running"))}
            for p in pending or []]
