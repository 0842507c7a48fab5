"""Back-of-envelope estimates for the interview's Estimate step (the dashboard's Estimate page), and
the same figures read off a measured run, so each estimate can stand next to a measurement.

Pure: no I/O. `estimate(answers, assumptions)` gives each figure with its formula in symbols (LaTeX)
and worked with the numbers, so a learner can follow every step. `measured(run)` reads a saved
load-test run (the controller's GET /runs/{id}); `compare(...)` lines the two up. Every figure of
`estimate` is an estimate; the richer model with queues, costs and regions is the rest of this
package (fleet.py, plan.py).

Symbols: Q = requests/s (avg, peak), rho = read share, N = records now, b = bytes per record,
n = share of writes that add a record, Y = years ahead, R = regions, H = cache hit ratio,
h = hot share of the records, o = cache overhead per byte, m = memory per cache node,
q = requests/s one core serves, k = cores per app server, u = utilisation ceiling,
w = writes/s one shard primary takes, v = reads/s one replica serves, s = data one shard holds.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

DAY_S = 86_400
YEAR_DAYS = 365
MONTH_S = 30.44 * DAY_S
GB = 1e9
TB = 1e12


@dataclass(frozen=True)
class Answers:
    """What the Clarify page asks that the arithmetic needs; defaults are the seed challenge's."""
    qps_avg: float = 10_000_000.0       # "10 million requests per second"
    qps_peak: float = 100_000_000.0     # "traffic spikes (10x normal load)"
    read_share: float = 0.9             # "90/10"
    records_now: float = 5e9
    record_bytes: float = 1_000.0
    new_record_share: float = 0.8       # the load generator's writes: 80% new posts, 20% profile updates
    horizon_years: float = 3.0
    p95_ms: float = 100.0               # "sub-100ms latency (p95)"
    availability: float = 99.99         # percent
    regions: int = 3
    active_active: bool = True


@dataclass(frozen=True)
class Assumptions:
    """Per-node capacities and sizes the estimate takes as given: editable, never measured."""
    request_bytes: float = 300.0
    response_bytes: float = 1_000.0
    core_rps: float = 500.0             # one Django core, one indexed query per request
    server_cores: int = 16
    max_util: float = 0.7               # headroom for a lost node, imbalance and a spike's first seconds
    cache_hit: float = 0.9
    hot_share: float = 0.2
    cache_overhead: float = 1.5         # a cached entry's key, encoding and allocator overhead
    cache_node_gb: float = 64.0
    primary_writes: float = 5_000.0     # writes/s one shard primary takes
    replica_reads: float = 20_000.0     # reads/s one replica serves
    shard_tb: float = 2.0               # data one shard holds (backups and rebuilds stay short)

    @classmethod
    def from_dict(cls, values: dict) -> "Assumptions":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class Figure:
    key: str
    name: str
    value: float
    unit: str
    latex: str      # the formula, in symbols
    worked: str     # the same with the numbers in
    note: str = ""


BYTE_UNITS = ("B", "B/day", "bit/s")
COUNTED = ("servers", "nodes", "shards", "replicas")  # whole machines: every one counts


def human(value: float | None, unit: str = "") -> str:
    """1234567 -> '1.23 M'; bytes and bits take SI prefixes on the unit (decimal: 1 GB = 10^9 B)."""
    if value is None:
        return "\u2014"
    if unit in COUNTED:
        return f"{value:,.0f} {unit}"
    value = float(f"{value:.3g}")  # 999,999.99 is 1 M, not 1,000 k
    steps = ([(1e15, "P"), (TB, "T"), (GB, "G"), (1e6, "M"), (1e3, "k")] if unit in BYTE_UNITS
             else [(1e12, "tn"), (1e9, "bn"), (1e6, "M"), (1e3, "k")])
    size, prefix = next(((size, prefix) for size, prefix in steps if abs(value) >= size), (1, ""))
    number = f"{value / size:.3g}"
    if unit in BYTE_UNITS:
        return f"{number} {prefix}{unit}"
    return " ".join(part for part in (number, prefix, unit) if part)


def min_replicas(availability: float) -> int:
    """Replicas per shard kept for failover whatever the read load: one below four nines, two from
    four nines up (a replica may be down for maintenance while another takes over the primary)."""
    return 2 if availability >= 99.99 else 1


def region_peak(a: Answers) -> tuple[float, str, str]:
    """The peak one region must carry, with its formula: active-active, each region its share plus
    a failed region's (R / (R - 1)); active-passive or a single region, all of it."""
    if a.active_active and a.regions > 1:
        return (a.qps_peak / (a.regions - 1), r"Q_{region} = \frac{Q_{peak}}{R} \cdot \frac{R}{R-1} = \frac{Q_{peak}}{R-1}",
                f"{human(a.qps_peak)} / ({a.regions} - 1)")
    return a.qps_peak, r"Q_{region} = Q_{peak}", f"{human(a.qps_peak)} (one region takes it all)"


def estimate(a: Answers, s: Assumptions) -> list[Figure]:
    out: list[Figure] = []

    def add(*args, **kw) -> float:
        out.append(Figure(*args, **kw))
        return args[2]

    spike = a.qps_peak / a.qps_avg if a.qps_avg else math.inf
    add("qps_peak", "Peak requests/s", a.qps_peak, "req/s", r"Q_{peak} = k \cdot Q_{avg}",
        f"{spike:,.3g} x {human(a.qps_avg)} = {human(a.qps_peak)}", note="From your answers (k: the spike factor).")
    q_region, latex, worked = region_peak(a)
    add("qps_region", "Peak one region carries", q_region, "req/s", latex, f"{worked} = {human(q_region)}")
    reads = add("reads_peak", "Reads/s at peak", a.read_share * a.qps_peak, "reads/s", r"Q_r = \rho \cdot Q_{peak}",
                f"{a.read_share:g} x {human(a.qps_peak)} = {human(a.read_share * a.qps_peak)}")
    writes = add("writes_peak", "Writes/s at peak", (1 - a.read_share) * a.qps_peak, "writes/s",
                 r"Q_w = (1 - \rho) \cdot Q_{peak}",
                 f"{1 - a.read_share:.3g} x {human(a.qps_peak)} = {human((1 - a.read_share) * a.qps_peak)}")

    growth = (1 - a.read_share) * a.qps_avg * a.new_record_share * a.record_bytes * DAY_S
    add("growth_day", "Storage growth per day", growth, "B/day", r"G = (1 - \rho) \cdot Q_{avg} \cdot n \cdot b \cdot 86400",
        f"{1 - a.read_share:.3g} x {human(a.qps_avg)} x {a.new_record_share:g} x {a.record_bytes:,.0f} B x 86,400 s "
        f"= {human(growth, 'B/day')}")
    now = a.records_now * a.record_bytes
    logical = now + YEAR_DAYS * a.horizon_years * growth
    add("storage", f"Data in {a.horizon_years:g} years (one copy)", logical, "B", r"S = N \cdot b + 365 \cdot Y \cdot G",
        f"{human(a.records_now)} x {a.record_bytes:,.0f} B + 365 x {a.horizon_years:g} x {human(growth, 'B/day')} "
        f"= {human(logical, 'B')}")

    b_in, b_out = a.qps_peak * s.request_bytes * 8, a.qps_peak * s.response_bytes * 8
    add("bandwidth_in", "Ingress at peak", b_in, "bit/s", r"B_{in} = Q_{peak} \cdot b_{req} \cdot 8",
        f"{human(a.qps_peak)} x {s.request_bytes:,.0f} B x 8 = {human(b_in, 'bit/s')}")
    add("bandwidth_out", "Egress at peak", b_out, "bit/s", r"B_{out} = Q_{peak} \cdot b_{resp} \cdot 8",
        f"{human(a.qps_peak)} x {s.response_bytes:,.0f} B x 8 = {human(b_out, 'bit/s')}")
    egress_day = a.qps_avg * s.response_bytes * DAY_S
    add("egress_day", "Egress per day (at the average)", egress_day, "B/day", r"E = Q_{avg} \cdot b_{resp} \cdot 86400",
        f"{human(a.qps_avg)} x {s.response_bytes:,.0f} B x 86,400 s = {human(egress_day, 'B/day')}",
        note="What a cloud bills as data transfer out.")

    hot = s.hot_share * a.records_now * a.record_bytes * s.cache_overhead
    add("cache_bytes", "Cache for the hot set, per region", hot, "B", r"M = h \cdot N \cdot b \cdot o",
        f"{s.hot_share:g} x {human(a.records_now)} x {a.record_bytes:,.0f} B x {s.cache_overhead:g} = {human(hot, 'B')}",
        note="Each region caches its own hot set.")
    cache_nodes = math.ceil(hot / (s.cache_node_gb * GB)) if hot else 0
    add("cache_nodes", "Cache nodes", cache_nodes * a.regions, "nodes",
        r"C = R \cdot \left\lceil \frac{M}{m} \right\rceil",
        f"{a.regions} x ceil({human(hot, 'B')} / {s.cache_node_gb:g} GB) = {a.regions} x {cache_nodes:,}",
        note="All regions together.")

    per_server = s.core_rps * s.server_cores * s.max_util
    add("server_rps", "Requests/s one app server takes", per_server, "req/s", r"c = q \cdot k \cdot u",
        f"{s.core_rps:,.0f} x {s.server_cores} cores x {s.max_util:g} = {human(per_server)}",
        note="An assumption: compare it with the measured figure below.")
    servers_region = math.ceil(q_region / per_server)
    add("app_servers", "App servers at the peak", servers_region * a.regions, "servers",
        r"A = R \cdot \left\lceil \frac{Q_{region}}{c} \right\rceil",
        f"{a.regions} x ceil({human(q_region)} / {human(per_server)}) = {a.regions} x {servers_region:,}",
        note="All regions together.")
    at_avg = math.ceil(a.qps_avg / a.regions / per_server)
    add("app_servers_avg", "App servers at the average", at_avg * a.regions, "servers",
        r"A_{avg} = R \cdot \left\lceil \frac{Q_{avg}}{R \cdot c} \right\rceil",
        f"{a.regions} x ceil({human(a.qps_avg)} / ({a.regions} x {human(per_server)})) = {a.regions} x {at_avg:,}",
        note="All regions together. The gap to the peak's figure is what autoscaling (or shedding) covers.")

    by_writes = math.ceil(writes / s.primary_writes) if writes else 1
    by_size = math.ceil(logical / (s.shard_tb * TB)) if logical else 1
    shards = max(by_writes, by_size, 1)
    add("shards", "Shards", shards, "shards",
        r"P = \max\left(\left\lceil \frac{Q_w}{w} \right\rceil, \left\lceil \frac{S}{s} \right\rceil\right)",
        f"max(ceil({human(writes)} / {human(s.primary_writes)}), ceil({human(logical, 'B')} / {s.shard_tb:g} TB)) "
        f"= max({by_writes:,}, {by_size:,})",
        note=("The write rate" if by_writes >= by_size else "The data size") + " decides it.")
    misses = reads * (1 - s.cache_hit)
    by_reads = math.ceil(misses / a.regions / shards / s.replica_reads) if misses else 0
    floor = min_replicas(a.availability)
    replicas = max(by_reads, floor)
    add("replicas", "Replicas per shard, per region", replicas, "replicas",
        r"r = \max\left(\left\lceil \frac{Q_r (1 - H)}{R \cdot P \cdot v} \right\rceil, r_{min}\right)",
        f"max(ceil({human(reads)} x {1 - s.cache_hit:.3g} / ({a.regions} x {shards:,} x {human(s.replica_reads)})), "
        f"{floor}) = max({by_reads:,}, {floor})",
        note=f"r_min = {floor} for {a.availability:g}% (failover needs a replica to promote).")
    nodes = shards * (1 + replicas * a.regions)
    add("db_nodes", "Database nodes", nodes, "nodes", r"D = P \cdot (1 + r \cdot R)",
        f"{shards:,} x (1 + {replicas} x {a.regions}) = {nodes:,}", note="One primary per shard, r replicas in each region.")
    add("stored", "Data stored, every copy", logical * (1 + replicas * a.regions), "B", r"S_{stored} = S \cdot (1 + r \cdot R)",
        f"{human(logical, 'B')} x (1 + {replicas} x {a.regions}) = {human(logical * (1 + replicas * a.regions), 'B')}")

    down = (1 - a.availability / 100) * MONTH_S / 60
    add("downtime", "Downtime allowed per month", down, "min", r"T_{down} = (1 - A) \cdot 30.44 \cdot 24 \cdot 60",
        f"{1 - a.availability / 100:.3g} x 43,834 min = {down:,.3g} min")
    return out


def by_key(figures: list[Figure]) -> dict[str, Figure]:
    return {f.key: f for f in figures}


def budget_per_million(budget_month: float, qps_avg: float) -> float | None:
    """What the budget allows per million requests: budget / (Q_avg x seconds in a month / 10^6)."""
    if not budget_month or not qps_avg:
        return None
    return budget_month / (qps_avg * MONTH_S / 1e6)


# --- what a run measured ----------------------------------------------------------------------
CACHE_HITS = ("hit", "hit-l1")
CACHE_LOOKUPS = ("hit", "hit-l1", "miss", "stale")


def measured(run: dict) -> dict:
    """The figures a saved run (GET /runs/{id}) measured that the estimate has a twin for. Per-node
    figures come from one machine whose cores every process shares (the generator included)."""
    s, t, w = run["summary"], run.get("topology") or {}, run["workload"]
    processes = t.get("processes") or {}
    running = t.get("running") or {}
    servers = processes.get("app_servers_running") or running.get("app_servers") or t.get("app_servers")
    achieved = s.get("achieved_rps")
    xcache = (s.get("attribution") or {}).get("X-Cache") or {}
    lookups = sum(n for k, n in xcache.items() if k in CACHE_LOOKUPS)
    return {
        "id": run["id"], "label": run.get("label") or "", "mode": w["mode"], "valid": bool(s.get("valid")),
        "invalid_reason": s.get("invalid_reason") or "", "asked_rps": w.get("rate") if w["mode"] == "open" else None,
        "achieved_rps": achieved, "p50_ms": s["latency"].get("p50_ms"), "p95_ms": s["latency"].get("p95_ms"),
        "p99_ms": s["latency"].get("p99_ms"), "error_share": (s["error_count"] / s["sent"]) if s.get("sent") else None,
        "app_servers": servers, "per_server_rps": (achieved / servers) if achieved is not None and servers else None,
        "replicas": running.get("replicas", t.get("replicas")), "shards": t.get("shards", t.get("shard_groups")),
        "cache_mode": (t.get("cache") or {}).get("mode"),
        "cache_hit": (sum(xcache.get(k, 0) for k in CACHE_HITS) / lookups) if lookups else None,
        "read_share": w.get("read_ratio"), "cores": (run.get("machine") or {}).get("cores"),
        "cpu_max": ((run.get("machine") or {}).get("cpu") or {}).get("max_percent"),
        "started_at": run.get("started_at"),
    }


def compare(figures: list[Figure], a: Answers, s: Assumptions, m: dict) -> list[dict]:
    """Rows of (figure, estimate, measured here, what the measurement is): each estimate beside the
    run's figure, with None where the run has none (an invalid run's latencies are not the server's)."""
    f = by_key(figures)
    per_server = m["per_server_rps"]
    q_region = region_peak(a)[0]
    need = a.regions * math.ceil(q_region / per_server) if per_server else None  # the estimate's formula, c measured
    closed = m["mode"] == "closed"
    rate_note = ("closed loop: as fast as the stack answered, a ceiling" if closed else
                 "open model: the rate asked for, not a ceiling (a closed-loop run measures one)")
    return [
        {"figure": "Requests/s per app server", "estimate": human(f["server_rps"].value, "req/s"),
         "measured": human(per_server, "req/s"), "kind": f"measured, shared-CPU (one {m['cores']}-core machine); {rate_note}"},
        {"figure": "App servers for your peak", "estimate": f"{f['app_servers'].value:,.0f}",
         "measured": "\u2014" if need is None else f"{need:,}",
         "kind": "estimate from the measured per-server rate (if each did what one did here)"},
        {"figure": "p95 latency", "estimate": f"{a.p95_ms:g} ms (your target)",
         "measured": f"{m['p95_ms']:,.2f} ms" if m["valid"] and m["p95_ms"] is not None else "INVALID run: not shown",
         "kind": "measured end to end through Caddy, from the intended send; shared-CPU"},
        {"figure": "Cache hit ratio", "estimate": f"{s.cache_hit:.0%} (assumed)",
         "measured": "\u2014" if m["cache_hit"] is None else f"{m['cache_hit']:.0%}",
         "kind": f"measured from X-Cache (cache {m['cache_mode'] or 'unknown'})"},
        {"figure": "Read share", "estimate": f"{a.read_share:.0%} (your answer)",
         "measured": "\u2014" if m["read_share"] is None else f"{m['read_share']:.0%}",
         "kind": "the run's workload, as asked"},
        {"figure": "App servers / shards / replicas", "estimate":
            f"{f['app_servers'].value:,.0f} / {f['shards'].value:,.0f} / {f['replicas'].value:,.0f} per shard per region",
         "measured": f"{m['app_servers'] or 0} / {m['shards'] or 1} / {m['replicas'] or 0}",
         "kind": "the stack's topology during the run (every node on the same machine)"},
    ]


def as_dict(figures: list[Figure]) -> dict:
    """The figures as saved in the member's `estimate` workspace: key -> {value, unit}."""
    return {f.key: {"value": f.value, "unit": f.unit} for f in figures}


def defaults() -> tuple[dict, dict]:
    return asdict(Answers()), asdict(Assumptions())
