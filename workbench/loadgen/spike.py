"""The `spike` suite of `python manage.py bench_topology` (issue 8 item 6): a traffic spike with load
shedding (api/gateway/shedding.py) off and on.

The seed's "10x normal load": each repetition first measures the capacity C (a closed run), takes
normal load as 0.2 x C and the spike as 2 x C, then, for shedding off and on in turn, runs the open
model at the normal rate and at the spike rate. It reports each run's admitted p95 (the latency of
the successes only, from the intended send), the share shed (503 with X-Shed), other errors, and the
generator's lag; a run whose generator lagged (over 1% of sends more than 1 ms late) is invalid
and shown so, and adds no figure. Target with shedding on: admitted p95 under 100 ms in the spike.
"""
from __future__ import annotations

import time

from workbench import topology
from workbench.loadgen.report import median

WORKLOAD = {"read_ratio": 1.0, "reads": {"user": 1}}  # GET /users/{id}, no cache: every request reads PostgreSQL
NORMAL, SPIKE = 0.2, 2.0                               # x the capacity C measured in the same repetition
TARGET_P95_MS = 100.0
CASES = (("shedding off", {"enabled": False}), ("shedding on", {"enabled": True}))
WHAT = ("GET /users/{id} only, no cache; per repetition the capacity C (closed loop), then the open model at "
        f"{NORMAL:g} x C (normal) and {SPIKE:g} x C (the spike, 10x normal), with load shedding off and on")


DRAIN_TIMEOUT_S = 120.0
QUICK_S = 0.05


def drained(health_url: str, out) -> None:
    """Wait until the stack has worked off a spike's backlog: three quick answers in a row from
    /healthz through Caddy. Without this the next topology change queued behind the backlog (the
    admin call timed out after 30 s) and the next capacity run measured the backlog (C fell to 60%)."""
    import requests
    started = time.monotonic()
    quick = 0
    while quick < 3:
        if time.monotonic() - started > DRAIN_TIMEOUT_S:
            out(f"  the stack still answered slowly {DRAIN_TIMEOUT_S:.0f} s after the spike; going on")
            return
        sent = time.monotonic()
        try:
            requests.get(health_url, timeout=DRAIN_TIMEOUT_S)
            quick = quick + 1 if time.monotonic() - sent < QUICK_S else 0
        except requests.RequestException:
            quick = 0
        time.sleep(0.2)
    out(f"  backlog worked off in {time.monotonic() - started:.1f} s")


def run(runs, topo, o: dict, out, health_url: str) -> tuple[dict, int]:
    """{label: {"normal": [...], "spike": [...], "capacity": [...], "runs": [...]}} over o["repeats"],
    and the shedding budget (ms) the runs had: the topology's own, only `enabled` is switched."""
    table = {label: {"capacity": [], "normal": [], "spike": [], "runs": []} for label, _ in CASES}
    before = topo.data()["topology"]
    try:
        for rep in range(o["repeats"]):
            topo.apply({"shedding": {"enabled": False}})
            time.sleep(topology.REFRESH_S + 0.2)
            closed = runs.run({**WORKLOAD, "mode": "closed", "connections": o["connections"],
                               "duration_s": o["duration"]}, f"bench spike capacity #{rep + 1}")
            capacity = closed["summary"]["achieved_rps"] or 0.0
            out(f"  #{rep + 1} capacity C = {capacity:,.0f} req/s (closed, {o['connections']} connections)")
            for label, shedding in CASES:
                topo.apply({"shedding": shedding})
                time.sleep(topology.REFRESH_S + 0.2)  # every app worker runs the case's topology
                row = table[label]
                row["capacity"].append(capacity)
                row["runs"].append(closed["id"])
                for phase, factor in (("normal", NORMAL), ("spike", SPIKE)):
                    rate = max(round(capacity * factor, 1), 1.0)
                    opened = runs.run({**WORKLOAD, "mode": "open", "rate": rate, "duration_s": o["duration"]},
                                      f"bench spike {label} {phase} #{rep + 1}")
                    if phase == "spike":
                        drained(health_url, out)
                    figures = _figures(opened["summary"], rate)
                    row[phase].append(figures)
                    row["runs"].append(opened["id"])
                    out(f"  #{rep + 1} {label}, {phase} {rate:,.0f} req/s: admitted p95 {figures['admitted_p95_ms']} ms, "
                        f"shed {figures['shed_share']:.1%}, lag p99 {figures['lag_p99_ms']} ms "
                        f"({'valid' if figures['valid'] else 'INVALID: ' + figures['invalid_reason']})")
    finally:
        topo.apply({"shedding": before["shedding"]})
    return table, before["shedding"]["queue_budget_ms"]


def _figures(summary: dict, rate: float) -> dict:
    sent = summary["sent"] or 0
    shed = summary.get("attribution", {}).get("X-Shed", {}).get("queue-time", 0)
    errors = summary["error_count"] - shed
    admitted = summary.get("admitted_latency") or {}
    return {"rate": rate, "sent": sent, "achieved_rps": summary["achieved_rps"],
            "admitted_p95_ms": admitted.get("p95_ms"), "p95_ms": summary["latency"]["p95_ms"],
            "shed_share": shed / sent if sent else 0.0, "other_errors": errors,
            "lag_p99_ms": summary["generator_lag"]["p99_ms"], "late_share": summary["generator_lag"]["late_share"],
            "valid": summary["valid"], "invalid_reason": summary.get("invalid_reason", "")}


def _cell(figures: list[dict], key: str, fmt: str) -> str:
    value = median([f[key] for f in figures if f["valid"]])
    return "-" if value is None else format(value, fmt)


def render(preamble: list[str], table: dict, budget_ms: int, provenance: list[str]) -> str:
    lines = preamble + [
        "Medians over the interleaved repetitions (each measures its own C, then off and on in turn); latency "
        "from the intended send time.",
        "",
        f"Target with shedding on: admitted p95 under {TARGET_P95_MS:g} ms in the spike. Shedding budget: "
        f"`shedding.queue_budget_ms` = {budget_ms} ms.",
        "",
        "| case | C (req/s) | phase | rate (req/s) | admitted p95 (ms) | p95, all (ms) | shed | other errors | "
        "generator lag p99 (ms) | late sends | runs valid |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        for phase in ("normal", "spike"):
            figures = row[phase]
            p95 = _cell(figures, "admitted_p95_ms", ".1f")
            if phase == "spike" and label == "shedding on" and p95 != "-":
                p95 += " (met)" if float(p95) < TARGET_P95_MS else " (missed)"
            valid = sum(f["valid"] for f in figures)
            lines.append(f"| {label} | {median(row['capacity']) or 0:,.0f} | {phase} | {_cell(figures, 'rate', ',.0f')} | "
                         f"{p95} | {_cell(figures, 'p95_ms', '.1f')} | {_cell(figures, 'shed_share', '.1%')} | "
                         f"{sum(f['other_errors'] for f in figures):,} | "
                         f"{median([f['lag_p99_ms'] for f in figures]) or 0:.2f} | "
                         f"{max((f['late_share'] for f in figures), default=0):.2%} | "
                         f"{valid}/{len(figures)}{'' if valid == len(figures) else ' (INVALID runs add no figure)'} |")
    lines += ["", "Admitted p95: the p95 of the successes only, timed from the intended send (open model, no "
              "coordinated omission); p95, all: every response, the quick 503s included. Shed: the share of sends "
              "answered 503 with X-Shed (the load generator's attribution). A run is invalid when more than 1% of "
              "its sends left more than 1 ms late (the generator, not the server, set the pace); the generator lag "
              "columns show each run's own lag, invalid runs included.",
              *provenance]
    return "\n".join(lines)
