"""Per-request costs, each with its spread, from what a load-test run left behind.

Three sources, each optional beyond the run itself:
- the run's saved result (workbench/loadgen/runs.py): the mix, the rate, the latency histogram;
- Caddy's access log lines of the run's window (<data dir>/logs/caddy-access.log): per request,
  Caddy's own duration and the app server's Server-Timing (app, queue, gateway, cache, qcache, db,
  render) with X-Db-Node, so every cost has a distribution, per request type and per node;
- CPU seconds per process tree sampled during the run (workbench/capacity/measure.py): what each
  tier (Caddy, app servers, PostgreSQL, Valkey, the generator) spent per request, per window.

Derived costs, in milliseconds per request unless named otherwise:
  app_ms[kind]   wall time in the app server per request type (Server-Timing app)
  app_cpu_ms     the app tier's own work: CPU per request when sampled, else app - db - cache - qcache
  db_ms[node]    time in the database per request, per node (Server-Timing db, which includes the
                 loopback round trip)
  cache_rtt_ms   time in the cache per request that touched it (Server-Timing cache)
  lb_ms          Caddy's duration minus the app server's time (app + queue): the LB hop and its work
  cpu_ms[tier]   CPU per request per tier (sampled runs only)
A Spread is (mean, low, high, n) with low/high the 10th and 90th percentiles of the samples.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from workbench.loadgen import engine
from workbench.loadgen.recorder import server_timing

LOW_Q, HIGH_Q = 0.10, 0.90
TIERS = ("lb", "app", "db", "cache", "state", "generator")
KEEP_SAMPLES = 2000  # latency samples kept in a calibration for the machine model's convolution


@dataclass
class Spread:
    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values) -> "Spread | None":
        values = sorted(v for v in values if v is not None and math.isfinite(v))
        if not values:
            return None
        return cls(round(statistics.fmean(values), 4), round(_quantile(values, LOW_Q), 4),
                   round(_quantile(values, HIGH_Q), 4), len(values))

    @classmethod
    def from_dict(cls, d: dict | None) -> "Spread | None":
        return cls(**d) if d else None

    def scaled(self, k: float) -> "Spread":
        return Spread(self.mean * k, self.low * k, self.high * k, self.n)


def _quantile(sorted_values: list, q: float) -> float:
    """Linear interpolation between closest ranks."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --- request kinds, as the load generator names them (workbench/loadgen/workload.py) -------------
_KINDS = [
    ("GET", re.compile(r"^/api/v\d+/users/\d+/posts/\d+$"), "post"),
    ("GET", re.compile(r"^/api/v\d+/users/\d+/posts\?.*since="), "posts_range"),
    ("GET", re.compile(r"^/api/v\d+/users/\d+/posts(\?|$)"), "user_posts"),
    ("GET", re.compile(r"^/api/v\d+/users/\d+\?view=profile"), "user_profile"),
    ("GET", re.compile(r"^/api/v\d+/users/\d+$"), "user"),
    ("GET", re.compile(r"^/api/v\d+/users\?limit=100"), "large_page"),
    ("GET", re.compile(r"^/api/v\d+/users(\?|$)"), "users_page"),
    ("GET", re.compile(r"^/api/v\d+/search/"), "search"),
    ("POST", re.compile(r"^/api/v\d+/users/\d+/posts$"), "create_post"),
    ("PATCH", re.compile(r"^/api/v\d+/users/\d+$"), "update_user"),
    ("PATCH", re.compile(r"^/api/v\d+/users/\d+/posts/\d+$"), "update_post"),
]
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def kind_of(method: str, uri: str) -> str | None:
    for m, pattern, kind in _KINDS:
        if m == method and pattern.search(uri):
            return kind
    return None


def access_records(lines, start_ts: float, end_ts: float) -> list[dict]:
    """Caddy access-log lines (JSON) of API requests answered within [start_ts, end_ts], as
    {ts, method, kind, status, caddy_ms, node, cache, timing}. Health probes, metrics scrapes and
    anything without Server-Timing are left out: they are not the run's traffic."""
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            ts = float(d["ts"])
        except (ValueError, KeyError, TypeError):
            continue
        if not start_ts <= ts <= end_ts:
            continue
        request, headers = d.get("request") or {}, d.get("resp_headers") or {}
        uri, method = request.get("uri", ""), request.get("method", "")
        timing = (headers.get("Server-Timing") or [""])[0]
        if not uri.startswith("/api/") or not timing:
            continue
        out.append({"ts": ts, "method": method, "kind": kind_of(method, uri), "status": d.get("status"),
                    "caddy_ms": float(d.get("duration", 0)) * 1000, "node": (headers.get("X-Db-Node") or [None])[0],
                    "cache": (headers.get("X-Cache") or [None])[0], "timing": server_timing(timing)})
    return out


def run_window(result: dict) -> tuple[float, float]:
    """The run's wall-clock window in epoch seconds, a second's margin each side. `started_at` is
    the schedule's zero (runs.started_iso); the generator opened its connections START_LEAD_S
    before it, and `wall_s` runs from then to the last answer."""
    zero = datetime.fromisoformat(result["started_at"]).timestamp()
    return zero - engine.START_LEAD_S - 1.0, zero + float(result["wall_s"]) + 1.0


def read_access_log(log_dir: Path, result: dict) -> list[dict]:
    start, end = run_window(result)
    lines = []
    for name in ("caddy-access.log.1", "caddy-access.log"):  # Caddy rolls the log; read both
        path = log_dir / name
        if path.exists():
            with open(path, encoding="utf-8", errors="replace") as f:
                lines += f.readlines()
    return access_records(lines, start, end)


# --- costs from the records ----------------------------------------------------------------------
def _own_app(t: dict) -> float:
    return max(t.get("app", 0.0) - t.get("db", 0.0) - t.get("cache", 0.0) - t.get("qcache", 0.0), 0.0)


def request_costs(records: list[dict]) -> dict:
    """Spreads of each per-request cost over the records (answered requests, any status < 500)."""
    ok = [r for r in records if (r["status"] or 0) < 500]
    by_kind: dict[str, list] = {}
    for r in ok:
        by_kind.setdefault(r["kind"] or "other", []).append(r)
    reads = [r for r in ok if r["method"] not in WRITE_METHODS]
    writes = [r for r in ok if r["method"] in WRITE_METHODS]
    db_by_node: dict[str, list] = {}
    for r in ok:
        if r["node"] and r["node"] != "none" and "db" in r["timing"]:
            db_by_node.setdefault(r["node"], []).append(r["timing"]["db"])
    out = {
        "requests": len(ok),
        "app_ms": {k: asdict(Spread.of(r["timing"].get("app") for r in rs)) for k, rs in sorted(by_kind.items())
                   if Spread.of(r["timing"].get("app") for r in rs)},
        "app_own_ms": {cls: _d(Spread.of(_own_app(r["timing"]) for r in rs)) for cls, rs in
                       (("read", reads), ("write", writes))},
        "db_ms": {node: _d(Spread.of(v)) for node, v in sorted(db_by_node.items())},
        "db_ms_by_class": {cls: _d(Spread.of(r["timing"].get("db", 0.0) for r in rs)) for cls, rs in
                           (("read", reads), ("write", writes))},
        "cache_rtt_ms": _d(Spread.of(r["timing"]["cache"] for r in ok if "cache" in r["timing"])),
        "lb_ms": _d(Spread.of(max(r["caddy_ms"] - r["timing"].get("app", 0.0) - r["timing"].get("queue", 0.0), 0.0)
                              for r in ok)),
        "queue_ms": _d(Spread.of(r["timing"].get("queue", 0.0) for r in ok)),
    }
    return out


def _d(spread: Spread | None) -> dict | None:
    return asdict(spread) if spread else None


def cpu_costs(samples: list[dict], rate: float, start: float, end: float, idle: dict | None = None) -> dict:
    """CPU per tier from cumulative CPU-seconds samples [{t, tiers: {tier: s}, machine: s}] taken
    during an open-model run at `rate` that sent from `start` to `end` (the samples' clock). Each
    window between consecutive samples wholly inside the sending period is one value: `cpu_ms`, CPU
    ms per request with the tier's idle use (`idle`, cores busy with no load) taken off, and
    `windows`, the cores each tier kept busy, for the fit over rates (cpu_fit). `background_cores`:
    what the rest of the machine (other users) kept busy meanwhile."""
    per_tier: dict[str, list] = {}
    background, windows = [], []
    idle = idle or {}
    for a, b in zip(samples, samples[1:]):
        if a["t"] < start or b["t"] > end:
            continue
        dt = b["t"] - a["t"]
        if dt <= 0:
            continue
        used = {tier: max(b["tiers"][tier] - a["tiers"].get(tier, b["tiers"][tier]), 0.0) for tier in b["tiers"]}
        for tier, seconds in used.items():
            per_tier.setdefault(tier, []).append(max(seconds - idle.get(tier, 0.0) * dt, 0.0) * 1000 / (rate * dt))
        other = max((b["machine"] - a["machine"]) - sum(used.values()), 0.0) / dt if "machine" in a else None
        if other is not None:
            background.append(other)
        windows.append({"rate": rate, "cores": {t: round(s / dt, 5) for t, s in used.items()},
                        "background": None if other is None else round(other, 5)})
    totals = [sum(vals) for vals in zip(*per_tier.values())] if per_tier else []
    return {"cpu_ms": {tier: _d(Spread.of(v)) for tier, v in per_tier.items()},
            "cpu_ms_total": _d(Spread.of(totals)), "background_cores": _d(Spread.of(background)),
            "windows": windows}


def cpu_fit(windows: list[dict], resamples: int = 400, seed: int = 1) -> dict | None:
    """Per tier, cores = fixed + rate x per_request, by least squares over windows of runs at two or
    more rates: what a tier spends per request apart from what it spends per second whatever the
    rate (the generator's timer naps, the controller's sampling). The per-request cost's spread is
    the 10th-90th percentile of the fit over windows resampled with replacement (bootstrap)."""
    import random
    if len({w["rate"] for w in windows}) < 2:
        return None
    windows = [{**w, "cores": {**w["cores"], "total": sum(w["cores"].values())}} for w in windows]
    tiers = sorted({t for w in windows for t in w["cores"]})
    rng = random.Random(seed)

    def fit(ws, tier):
        xs = [w["rate"] for w in ws]
        ys = [w["cores"].get(tier, 0.0) for w in ws]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        if sxx == 0:
            return None
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        return slope, my - slope * mx

    out = {}
    for tier in tiers:
        base = fit(windows, tier)
        boot = []
        for _ in range(resamples):
            f = fit([rng.choice(windows) for _ in windows], tier)
            if f:
                boot.append(f[0] * 1000)
        boot.sort()
        out[tier] = {"per_request_ms": round(base[0] * 1000, 4), "fixed_cores": round(base[1], 4),
                     "low": round(_quantile(boot, LOW_Q), 4), "high": round(_quantile(boot, HIGH_Q), 4),
                     "n": len(windows)}
    bg = [w["background"] for w in windows if w["background"] is not None]
    out["_background_cores"] = _d(Spread.of(bg))
    return out


def latency_samples(result: dict, limit: int = KEEP_SAMPLES) -> list[float]:
    """Up to `limit` latencies (ms) spread evenly over the run's HDR histogram (from the intended send)."""
    from hdrh.histogram import HdrHistogram
    h = HdrHistogram.decode(result["histogram"])
    total = h.get_total_count()
    if not total:
        return []
    n = min(limit, total)
    return [h.get_value_at_percentile(100.0 * (i + 0.5) / n) / 1000 for i in range(n)]


def calibrate(results: list[dict], records_by_run: dict | None = None, cpu_by_run: dict | None = None,
              source: str = "runs") -> dict:
    """The calibration: per-request costs with spread, from one or more runs. With runs of different
    read ratios, the per-class CPU costs (read, write) are solved from them (least squares); with one
    ratio, a read and a write are taken to cost the same (said in `notes`)."""
    records_by_run = records_by_run or {}
    cpu_by_run = cpu_by_run or {}
    records = [r for res in results for r in records_by_run.get(res["id"], [])]
    costs = request_costs(records) if records else {}
    notes = []
    first = results[0]
    mix: dict[str, int] = {}
    for res in results:
        for kind, n in res["summary"]["by_kind"].items():
            mix[kind] = mix.get(kind, 0) + n
    total = sum(mix.values()) or 1
    reads = sum(n for k, n in mix.items() if not k.startswith(("create", "update", "delete")))
    cal = {
        "source": source, "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "runs": [r["id"] for r in results],
        "rate": [r["workload"]["rate"] for r in results],
        "read_ratio": round(reads / total, 4),
        "mix": {k: round(v / total, 4) for k, v in sorted(mix.items())},
        "machine": {"cores": first["machine"]["cores"], "memory_bytes": first["machine"].get("memory_bytes")},
        "topology": {k: first.get("topology", {}).get(k) for k in ("version", "app_servers", "replicas", "shards",
                                                                  "cache", "lb_policy", "emulation")},
        "server_timing_ms": first["summary"].get("server_timing_ms", {}),
        **costs,
    }
    if not records:
        notes.append("no access-log records for the run's window: per-request spreads unavailable")
    # CPU per tier: from sampled runs; per class by least squares over the runs' read ratios.
    sampled = [(res, cpu_by_run[res["id"]]) for res in results if res["id"] in cpu_by_run]
    if sampled:
        cal["cpu_ms"] = _merge_cpu([c["cpu_ms"] for _, c in sampled])
        cal["background_cores"] = _merge_spread([c.get("background_cores") for _, c in sampled])
        cal["cpu_ms_by_class"] = _by_class(sampled)
        busy = (cal["background_cores"] or {}).get("mean") or 0.0
        if busy > 0.25 * (first["machine"]["cores"] or 1):
            notes.append(f"other processes kept {busy:.2f} of {first['machine']['cores']} cores busy: the wall-time "
                         "costs (db_ms, lb_ms, app_ms) include their contention; the CPU costs less so")
        fit = cpu_fit([w for _, c in sampled for w in c.get("windows", [])])
        if fit:
            cal["cpu_fit"] = fit
        if len({_ratio(res) for res, _ in sampled}) < 2:
            notes.append("one read ratio only: reads and writes are taken to cost the same CPU")
    else:
        notes.append("no CPU samples: CPU per tier is the wall-time proxy (app - db - cache - qcache)")
    samples = latency_samples(first)
    if samples:
        mean = statistics.fmean(samples)
        var = statistics.pvariance(samples)
        cal["unloaded"] = {"rate": first["workload"]["rate"], "mean_ms": round(mean, 4),
                           "cv2": round(var / mean ** 2, 4) if mean else None,
                           "p50_ms": first["summary"]["latency"]["p50_ms"],
                           "p95_ms": first["summary"]["latency"]["p95_ms"], "samples_ms": samples}
    cal["valid"] = all(r["summary"]["valid"] for r in results)
    if not cal["valid"]:
        notes.append("a run was INVALID (its generator fell behind): its latencies are not the server's")
    cal["notes"] = notes
    return cal


def _ratio(result: dict) -> float:
    return float(result["workload"]["read_ratio"])


def _merge_spread(spreads: list) -> dict | None:
    spreads = [s for s in spreads if s]
    if not spreads:
        return None
    n = sum(s["n"] for s in spreads)
    return {"mean": round(sum(s["mean"] * s["n"] for s in spreads) / n, 4), "low": min(s["low"] for s in spreads),
            "high": max(s["high"] for s in spreads), "n": n}


def _merge_cpu(per_run: list[dict]) -> dict:
    tiers = sorted({t for c in per_run for t in c})
    return {t: _merge_spread([c.get(t) for c in per_run]) for t in tiers}


def _by_class(sampled: list) -> dict:
    """{read: {tier: Spread}, write: {...}}: per tier, the costs a (read) and b (write) that best fit
    cost_i = r_i a + (1 - r_i) b over the runs; with one ratio, a = b = the measured cost."""
    ratios = [_ratio(res) for res, _ in sampled]
    tiers = sorted({t for _, c in sampled for t in c["cpu_ms"] if c["cpu_ms"][t]})
    out = {"read": {}, "write": {}}
    for tier in tiers:
        rows = [(r, c["cpu_ms"][tier]) for r, (_, c) in zip(ratios, sampled) if c["cpu_ms"].get(tier)]
        if len({r for r, _ in rows}) < 2:
            merged = _merge_spread([s for _, s in rows])
            out["read"][tier] = out["write"][tier] = merged
            continue
        fit = {}
        for field in ("mean", "low", "high"):
            a, b = _fit_two([(r, s[field]) for r, s in rows])
            fit[field] = (a, b)
        n = sum(s["n"] for _, s in rows)
        for cls, idx in (("read", 0), ("write", 1)):
            values = sorted(max(fit[f][idx], 0.0) for f in ("mean", "low", "high"))
            out[cls][tier] = {"mean": round(max(fit["mean"][idx], 0.0), 4), "low": round(values[0], 4),
                              "high": round(values[2], 4), "n": n}
    return out


def _fit_two(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of y = r a + (1 - r) b."""
    srr = sum(r * r for r, _ in points)
    sqq = sum((1 - r) ** 2 for r, _ in points)
    srq = sum(r * (1 - r) for r, _ in points)
    sry = sum(r * y for r, y in points)
    sqy = sum((1 - r) * y for r, y in points)
    det = srr * sqq - srq * srq
    if abs(det) < 1e-12:
        mean = statistics.fmean(y for _, y in points)
        return mean, mean
    return (sry * sqq - sqy * srq) / det, (srr * sqy - srq * sry) / det


# --- storage -------------------------------------------------------------------------------------
def calibration_dir(data_dir: Path) -> Path:
    path = Path(data_dir) / "capacity"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save(data_dir: Path, cal: dict, name: str = "calibration") -> Path:
    path = calibration_dir(data_dir) / f"{name}.json"
    path.write_text(json.dumps(cal, indent=1))
    return path


def load(data_dir: Path, name: str = "calibration") -> dict | None:
    path = Path(data_dir) / "capacity" / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
