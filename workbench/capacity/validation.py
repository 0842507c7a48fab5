"""The model against this machine: for each topology the live stack can run (1 and 2 app servers),
the machine model's prediction (machine.py, from a calibration made on that topology) next to the
measurement. Parameters: parameters.toml [capacity.validation], committed before measuring.

  throughput at the SLO   predicted: the highest rate whose modelled p95 is within the SLO;
                          measured: the bench ramp (workbench/loadgen/ramp.py), same SLO
  p95 at 50% load         at half the measured throughput, predicted vs measured
  p95 at 80% load         the measurement against the interval the calibration's spread gives
"""
from __future__ import annotations

import os

from datetime import datetime, timezone

from workbench import parameters
from workbench.loadgen.client import RunClient, TopologyClient
from workbench.loadgen.ramp import find_capacity

from . import calibration, machine, measure


def params() -> dict:
    return parameters.capacity()["validation"]


def within(predicted: float | None, measured: float | None, tolerance: float) -> bool | None:
    if predicted is None or measured in (None, 0):
        return None
    return abs(predicted - measured) / measured <= tolerance


def compare(cal: dict, measured_c: float, loads: dict[float, dict], p: dict) -> dict:
    """One row: the calibration's models against the measured capacity and load runs
    ({share: {"p95_ms", "valid", "rate"}})."""
    mid, low, high = machine.spread_models(cal)
    slo, tol = p["slo_p95_ms"], p["tolerance"]
    predicted_c = mid.throughput_at(slo)
    row = {"predicted_rps": round(predicted_c, 1), "measured_rps": measured_c,
           "rps_ok": within(predicted_c, measured_c, tol), "loads": {}}
    for share, m in loads.items():
        rate = m["rate"]
        entry = {"rate": rate, "measured_p95_ms": m["p95_ms"], "valid": m["valid"], "run": m.get("run"),
                 "predicted_p95_ms": round(mid.percentile(rate), 2),
                 # A cheaper request (low) gives the lower p95 of the interval.
                 "interval_ms": [round(low.percentile(rate), 2), round(high.percentile(rate), 2)]}
        entry["within"] = within(entry["predicted_p95_ms"], m["p95_ms"], tol) if m["valid"] else None
        lo, hi = entry["interval_ms"]
        entry["inside"] = (lo <= m["p95_ms"] <= hi) if m["valid"] and m["p95_ms"] is not None else None
        row["loads"][share] = entry
    row["model"] = {"per_request_ms": mid.per_request_ms, "low": low.per_request_ms, "high": high.per_request_ms,
                    "fixed_cores": round(mid.fixed_cores, 3), "saturation_rps": round(mid.saturation_rps, 1),
                    "unloaded_p95_ms": cal["unloaded"]["p95_ms"], "cv2": mid.cv2}
    return row


def run(cfg, out=print) -> list[dict]:
    """Measure every topology of the parameters; the rows for render()."""
    p = params()
    runs = RunClient(cfg)
    topo = TopologyClient(cfg)
    rows = []
    for servers in p["app_servers"]:
        out(f"topology: app_servers={servers} (everything else at its default)")
        topo.apply({"app_servers": servers}, replace=True)
        cal = measure.calibrate_live(cfg, [{"rate": r, "duration_s": p["calibration_duration_s"]}
                                           for r in p["calibration_rates"]], label=f"validate {servers} calibration")
        calibration.save(cfg.data_dir, cal, f"validation-app{servers}")
        out(f"  calibrated: {cal['cpu_fit']['total']}")
        ramp = find_capacity(runs, {}, slo_p95_ms=p["slo_p95_ms"], step_s=p["step_s"],
                             label=f"validate {servers} ramp", on_step=lambda s: out(f"  ramp {s}"))
        c = ramp["capacity_rps"]
        loads = {}
        for share in p["load_points"]:
            result = runs.run({"mode": "open", "rate": round(share * c, 1), "duration_s": p["load_duration_s"]},
                              f"validate {servers} {share:.0%}")
            s = result["summary"]
            loads[share] = {"rate": round(share * c, 1), "p95_ms": s["latency"]["p95_ms"], "valid": s["valid"],
                            "run": result["id"]}
            out(f"  {share:.0%} of C: {loads[share]}")
        row = compare(cal, c, loads, p)
        row.update(topology=f"app_servers={servers}", ramp=ramp, calibration_runs=cal["runs"],
                   background_cores=cal.get("background_cores"))
        rows.append(row)
    topo.apply({}, replace=True)
    return rows


def _ok(flag) -> str:
    return "-" if flag is None else ("yes" if flag else "**no**")


def render(rows: list[dict], cfg, machine_info: dict, command: str) -> str:
    p = params()
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}` on {machine_info['cores']} cores / "
        f"{machine_info['memory_bytes'] / 2**30:.0f} GiB, the generator and the whole stack sharing the machine "
        f"(1-minute load average when the table was written: {os.getloadavg()[0]:.2f}; anything else running "
        "on the machine shows in the calibration's fixed cores). Topology: the defaults (1 PostgreSQL primary, "
        f"no cache, Caddy round-robin) with the app servers shown, each {cfg.app_workers} gthread workers x "
        f"{cfg.app_threads} threads. Workload: the default mix (90% reads). Parameters: workbench/parameters.toml "
        "[capacity.validation], committed before measuring.",
        "",
        f"Modelled: the machine model (workbench/capacity/machine.py) from a calibration of each topology at "
        f"{', '.join(f'{r:g}' for r in p['calibration_rates'])} req/s ({p['calibration_duration_s']:g} s each, CPU "
        f"sampled per tier). Measured: throughput at p95 < {p['slo_p95_ms']:g} ms by the bench ramp "
        f"({p['step_s']:g} s steps), then {p['load_duration_s']:g} s open-model runs at 50% and 80% of it. "
        f"Target: within {p['tolerance']:.0%}; at 80% the measurement inside the modelled interval.",
        "",
        "| topology | CPU ms per request (10th-90th) | fixed cores | throughput at SLO, modelled | measured | within 25% | "
        "p95 at 50%, modelled (ms) | measured | within 25% | p95 at 80%, modelled interval (ms) | measured | inside |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row["model"]
        half, high = row["loads"].get(0.5, {}), row["loads"].get(0.8, {})
        lines.append(
            f"| {row['topology']} | {m['per_request_ms']:.2f} ({m['low']:.2f}-{m['high']:.2f}) | {m['fixed_cores']:.2f} | "
            f"{row['predicted_rps']:,.0f} | {row['measured_rps']:,.0f} | {_ok(row['rps_ok'])} | "
            f"{half.get('predicted_p95_ms', '-')} | {_measured(half)} | {_ok(half.get('within'))} | "
            f"{_interval(high)} | {_measured(high)} | {_ok(high.get('inside'))} |")
    lines += ["", "Run ids: " + "; ".join(
        f"{r['topology']}: calibration {', '.join(r['calibration_runs'])}, ramp "
        f"{', '.join(s['run'] for s in r['ramp']['steps'])}, loads "
        f"{', '.join(v.get('run', '') for v in r['loads'].values() if v.get('run'))}" for r in rows)]
    return "\n".join(lines)


def _measured(entry: dict) -> str:
    if not entry:
        return "-"
    value = entry.get("measured_p95_ms")
    return ("-" if value is None else f"{value:.2f}") + ("" if entry.get("valid") else " (INVALID)")


def _interval(entry: dict) -> str:
    if not entry:
        return "-"
    lo, hi = entry["interval_ms"]
    return f"{lo:.2f} - {hi:.2f}"
