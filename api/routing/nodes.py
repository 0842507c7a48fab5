"""What the database nodes are doing now: health, replication lag and connections per node, and what
the controller is running. The controller samples it (workbench/stack/replicas.py) and publishes
it as one JSON document in the `state` Valkey; every app worker keeps a copy at most REFRESH_S old.

The router reads it to skip a replica that is down or too far behind, and to pick the least
lagged one; responses carry the answering replica's lag from it (X-DB-Lag-Ms). No Django here:
the controller imports this module too.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KEY = "workbench:nodes"
REFRESH_S = 0.25
# A report older than this means the controller is not watching: replicas are not trusted then,
# since one could be down or far behind without anyone noticing.
STALE_S = 5.0


@dataclass(frozen=True)
class Report:
    at: float = 0.0                        # time.time() of the sample
    nodes: dict = field(default_factory=dict)    # name -> {healthy, lag_ms, lag_bytes, connections, ...}
    running: dict = field(default_factory=dict)  # topology.CONTROLLED_FIELDS as they run now
    progress: str | None = None            # what the controller is doing to match the topology
    version: int = 0                       # the topology version the controller works towards

    def fresh(self, now: float | None = None) -> bool:
        return (now or time.time()) - self.at < STALE_S

    def usable_replicas(self, count: int, max_lag_ms: float, shard: int = 1) -> list[str]:
        """The shard's replicas 1..count that are up, streaming and within max_lag_ms, as of a
        fresh report."""
        from .shards import replica_alias
        if not self.fresh():
            return []
        out = []
        for i in range(1, count + 1):
            name = replica_alias(shard, i)
            node = self.nodes.get(name)
            if node and node.get("healthy") and node.get("lag_ms", math.inf) <= max_lag_ms:
                out.append(name)
        return out

    def lag_ms(self, name: str) -> float:
        # None while the node is down or not streaming (a request may have used it just before).
        return float(self.nodes.get(name, {}).get("lag_ms") or 0.0)

    def to_dict(self) -> dict:
        return {"at": self.at, "nodes": self.nodes, "running": self.running, "progress": self.progress,
                "version": self.version}


def publish(client, report: Report) -> None:
    client.set(KEY, json.dumps(report.to_dict()))


def read(client) -> Report:
    raw = client.get(KEY)
    if raw is None:
        return Report()
    data = json.loads(raw)
    return Report(data["at"], data["nodes"], data["running"], data.get("progress"), data.get("version", 0))


# --- this process's copy -------------------------------------------------------------------------
_lock = threading.Lock()
_local: Report | None = None
_checked_at = -math.inf


def current() -> Report:
    """This process's copy, at most about REFRESH_S old. Never raises: if the state Valkey cannot
    be reached the last copy stays (and turns stale, which sends reads to the primary)."""
    global _local, _checked_at
    if _local is not None and time.monotonic() - _checked_at < REFRESH_S:
        return _local
    if not _lock.acquire(blocking=_local is None):
        return _local  # another thread is refreshing; this one keeps the copy meanwhile
    try:
        if _local is None or time.monotonic() - _checked_at >= REFRESH_S:
            _checked_at = time.monotonic()
            try:
                from api.state import state_client
                _local = read(state_client())
            except Exception as exc:  # routing must never fail a request
                log.warning("node report refresh failed: %s", exc)
                if _local is None:
                    _local = Report()
        return _local
    finally:
        _lock.release()
