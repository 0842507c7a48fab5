"""The seed's scaling phases (seed/challenge-01-scalable-api.md, "Scaling Strategy") as presets of the
live topology, for the dashboard's Scale page. Pure data and arithmetic: no Streamlit, no I/O.

Each preset sets the same fields (below), so pressing one gives the same topology whichever ran
before. `shards` is not a topology change: the page reshards online to reach it. `emulation` is
what the second of the preset's two runs adds ("emulation on"); the first runs with emulation off.
The supporting index stays on in every preset: without it every posts page is a sequential scan,
which would swamp every phase before 3 (docs/benchmarks.md, "Query optimization").
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

LABEL = "scale: {key} emulation {arm}"           # a run's label, how the page finds its runs again
LABEL_RE = re.compile(r"^scale: (\w+) emulation (off|on)$")
ARMS = ("off", "on")
EMULATION_OFF = {"enabled": False, "remote_replica": 0, "stale_replica": 0}


def _base(app_servers: int, replicas: int, lb_policy: str, pgbouncer: bool, cache: dict) -> dict:
    return {"app_servers": app_servers, "replicas": replicas, "lb_policy": lb_policy, "pgbouncer": pgbouncer,
            "indexes": {"post_user_time": True}, "emulation": dict(EMULATION_OFF),
            "cache": {"mode": "off", "l1": False, "query_cache": False, **cache}}


@dataclass(frozen=True)
class Preset:
    key: str                 # widget keys and run labels
    name: str
    seed_rps: int            # the seed's stated figure for the phase
    model_phase: str         # its name in workbench/capacity/fleet.PHASES
    what: str                # what it switches on, in a line
    topology: dict           # the PATCH, emulation off
    shards: int
    emulation: dict = field(default_factory=lambda: {"enabled": True})   # the "on" run's emulation

    def label(self, arm: str) -> str:
        return LABEL.format(key=self.key, arm=arm)


PRESETS = (
    Preset("start", "Start small", 1_000, "Start small",
           "one app server, one database, no cache",
           _base(1, 0, "round_robin", False, {}), shards=1),
    Preset("phase1", "Phase 1: caching", 10_000, "Phase 1: caching",
           "+ the application cache in Valkey (cache-aside); still one app server",
           _base(1, 0, "round_robin", False, {"mode": "cache-aside"}), shards=1),
    Preset("phase2", "Phase 2: horizontal scaling", 100_000, "Phase 2: horizontal scaling",
           "+ 3 app servers behind Caddy (least connections), 2 read replicas",
           _base(3, 2, "least_conn", False, {"mode": "cache-aside"}), shards=1),
    Preset("phase3", "Phase 3: database optimisation", 1_000_000, "Phase 3: sharding",
           "+ 2 shards (online reshard), PgBouncer pooling, the query cache",
           _base(3, 2, "least_conn", True, {"mode": "cache-aside", "query_cache": True}), shards=2),
    Preset("phase4", "Phase 4: multi-region", 10_000_000, "Phase 4: multi-region",
           "+ the per-process L1 cache; emulated: replica-2 in another region (65 ms away), plus the model",
           _base(3, 2, "least_conn", True, {"mode": "cache-aside", "query_cache": True, "l1": True}), shards=2,
           emulation={"enabled": True, "remote_replica": 2}),
)
BY_KEY = {p.key: p for p in PRESETS}


def parse_label(label: str | None) -> tuple[str, str] | None:
    """(preset key, arm) of a run the Scale page started, from its label; None for any other run."""
    m = LABEL_RE.match(label or "")
    return (m.group(1), m.group(2)) if m and m.group(1) in BY_KEY else None


def newest_runs(listing: list[dict]) -> dict:
    """{preset key: {arm: run id}} from the controller's list of runs (newest first)."""
    found: dict = {}
    for run in listing:
        parsed = parse_label(run.get("label"))
        if parsed:
            found.setdefault(parsed[0], {}).setdefault(parsed[1], run["id"])
    return found


# --- what a saved result holds, flat ---------------------------------------------------------------
CACHE_HITS = ("hit", "hit-l1")
CACHE_LOOKUPS = CACHE_HITS + ("miss", "down")


def cache_hit_rate(attribution: dict) -> float | None:
    """Share of cache lookups answered by a cache (X-Cache hit or hit-l1); None when no request
    looked (the cache was off, or every request bypassed it). `down` counts as a lookup that missed."""
    counts = attribution.get("X-Cache") or {}
    lookups = sum(counts.get(k, 0) for k in CACHE_LOOKUPS)
    return sum(counts.get(k, 0) for k in CACHE_HITS) / lookups if lookups else None


def topology_note(t: dict) -> str:
    """The parts of a run's saved topology the presets change, in a line."""
    c = t.get("cache") or {}
    layers = [name for name, on in (("L1", c.get("l1")), ("query cache", c.get("query_cache"))) if on]
    shards = t.get("shards", 1)
    return (f"{t.get('app_servers')} app server(s) ({t.get('lb_policy')}), {t.get('replicas')} replica(s)"
            f"{' per shard' if shards > 1 else ''}, {shards} shard(s), cache {c.get('mode')}"
            + (f" + {' + '.join(layers)}" if layers else "") + f", PgBouncer {'on' if t.get('pgbouncer') else 'off'}")


def _within(patch: dict, doc: dict) -> bool:
    return all(_within(v, doc.get(k) or {}) if isinstance(v, dict) else doc.get(k) == v for k, v in patch.items())


def matching(topology: dict) -> Preset | None:
    """The preset the topology is in (emulation off), if any."""
    return next((p for p in PRESETS if topology.get("shards") == p.shards and not topology.get("reshard_shards")
                 and _within(p.topology, topology)), None)
