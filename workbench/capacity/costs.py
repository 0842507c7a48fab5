"""The per-request costs the fleet model needs, taken from a calibration (calibration.py), or the
defaults below when there is none.

The defaults are one calibration measured on the dev stack (2 app servers, 1 PostgreSQL primary, no
cache, loopback, the 2-core machine shared with other engineers) by measure.calibrate_live, the
learner's reads then writes, 2026-11-28 12:50 UTC; docs/benchmarks.md "Capacity model" has it. A page or CLI that uses them
says "default costs", never "calibrated".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Costs:
    app_cpu_ms_read: float = 4.48     # app-server CPU per read (both gunicorn trees)
    app_cpu_ms_write: float = 6.39
    db_cpu_ms_read: float = 0.23      # PostgreSQL CPU per read that reaches the database
    db_cpu_ms_write: float = 1.38
    db_ms_read: float = 0.95          # time in the database per read (Server-Timing db, loopback trip included)
    db_ms_write: float = 2.20
    lb_cpu_ms: float = 1.09           # Caddy CPU per request
    lb_ms: float = 0.41               # Caddy's duration minus the app server's time
    cache_rtt_ms: float = 0.48        # time in the cache per request that used it
    cache_cpu_ms_op: float = 0.02     # Valkey CPU per command (a GET, SET or DEL)
    app_cv: float = 0.30              # the spread of app CPU per request: (high - low) / 2 / mean
    source: str = "default (docs/benchmarks.md, capacity model)"

    def to_dict(self) -> dict:
        return asdict(self)


def _mean(d: dict | None, key: str | None = None):
    if not d:
        return None
    d = d.get(key) if key else d
    return d["mean"] if d else None


def from_calibration(cal: dict | None) -> Costs:
    """Costs from a calibration; whatever it lacks keeps its default (and `source` says which)."""
    c = Costs()
    if not cal:
        return c
    missing = []

    def take(field, value):
        if value is None:
            missing.append(field)
        else:
            setattr(c, field, round(float(value), 4))

    by_class = cal.get("cpu_ms_by_class") or {}
    own = cal.get("app_own_ms") or {}
    take("app_cpu_ms_read", _mean(by_class.get("read"), "app") or _mean(own, "read"))
    take("app_cpu_ms_write", _mean(by_class.get("write"), "app") or _mean(own, "write"))
    take("db_cpu_ms_read", _mean(by_class.get("read"), "db"))
    take("db_cpu_ms_write", _mean(by_class.get("write"), "db"))
    db = cal.get("db_ms_by_class") or {}
    take("db_ms_read", _mean(db, "read"))
    take("db_ms_write", _mean(db, "write"))
    take("lb_cpu_ms", _mean(cal.get("cpu_ms"), "lb"))
    take("lb_ms", _mean(cal.get("lb_ms")))
    take("cache_rtt_ms", _mean(cal.get("cache_rtt_ms")))
    probe = cal.get("cache_probe") or {}
    take("cache_cpu_ms_op", probe.get("cpu_ms_per_op"))
    app = (by_class.get("read") or {}).get("app") or own.get("read")
    if app and app["mean"]:
        c.app_cv = round(max((app["high"] - app["low"]) / 2 / app["mean"], 0.0), 4)
    c.source = f"calibration {cal.get('created_at')} (runs {', '.join(cal.get('runs', []))})"
    if missing:
        c.source += f"; defaults for {', '.join(missing)}"
    return c
