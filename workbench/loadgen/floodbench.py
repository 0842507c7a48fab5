"""The `flood` suite of `python manage.py bench_topology` (issue 12, hostile input): does a
volumetric flood from many loopback addresses (workbench/loadgen/flood.py), absorbed by the rate
limiter, slow down the normal traffic it lets through?

One configuration throughout: the rate limiter on with one per-IP rule, normal clients spread over
`normal_sources` addresses, each well under the rule's rate. Each repetition runs, in this order,
the normal traffic alone (A), the same with the flood (B), and alone again (A'), each an open-model
run of the normal workload; the flood starts a second before B and stops after it. A and A' are
the same configuration measured twice, so |p95(A) - p95(A')| is this machine's noise band for the
repetition. Target: the normal traffic's admitted p95 with the flood stays within twice the band
of the runs without it: median over repetitions of p95(B) - mean(p95(A), p95(A')) <= 2 x median band.
The parameters are committed in workbench/parameters.toml, [flood], chosen before measuring.
"""
from __future__ import annotations

import time

from workbench import parameters, topology
from workbench.loadgen.flood import Flood
from workbench.loadgen.report import median

WORKLOAD = {"read_ratio": 1.0, "reads": {"user": 1}}  # GET /users/{id}; the flood asks for the same
CASES = ("A: no flood", "B: flood", "A': no flood")


def settings() -> dict:
    return parameters.load()["flood"]


def what() -> str:
    p = settings()
    return (f"GET /users/{{id}} only, no cache; the normal traffic from {p['normal_sources']} loopback addresses "
            f"(open model, --rate in all), the flood from {p['flood_sources']} others ({p['flood_connections']} "
            f"connections each, as fast as answered); the rate limiter on with one rule per client IP "
            f"(a burst of {p['capacity']}, {p['refill_per_s']:g} a second), the same in every run")


def run(runs, topo, o: dict, out, api_url: str) -> dict:
    p = settings()
    rule = {"name": "bench-flood-per-ip", "per": ["ip"], "capacity": p["capacity"], "refill_per_s": p["refill_per_s"]}
    normal = {**WORKLOAD, "mode": "open", "rate": o["rate"], "duration_s": o["duration"],
              "source_ips": p["normal_sources"]}
    table = {label: {"runs": [], "figures": []} for label in CASES}
    floods = []
    before = topo.data()["topology"]
    try:
        topo.apply({"rate_limit": {"enabled": True, "rules": [rule]}, "cache": {"mode": "off"}})
        time.sleep(topology.REFRESH_S + 0.2)  # every app worker runs the configuration
        target = f"{api_url}/api/v1/users/{_a_user(api_url)}"
        for rep in range(o["repeats"]):
            for label in CASES:
                flood = None
                if label.startswith("B"):
                    flood = Flood(target, sources=p["flood_sources"], connections=p["flood_connections"],
                                  duration_s=o["duration"] + 2 * p["lead_s"], max_requests=p["max_requests"]).start()
                    time.sleep(p["lead_s"])
                result = runs.run(normal, f"bench flood {label} #{rep + 1}")
                summary = flood.stop() if flood else None
                if summary:
                    floods.append(summary)
                figures = _figures(result["summary"])
                table[label]["figures"].append(figures)
                table[label]["runs"].append(result["id"])
                out(f"  #{rep + 1} {label}: admitted p95 {figures['p95_ms']} ms, normal refused {figures['limited']}, "
                    f"errors {figures['errors']}" + (f"; flood {summary['sent_per_s']:,.0f} req/s, "
                                                     f"{summary['limited_share']:.1%} refused" if summary else "")
                    + ("" if figures["valid"] else f" (INVALID: {figures['invalid_reason']})"))
    finally:
        topo.apply({"rate_limit": before["rate_limit"], "cache": before["cache"]})
    return {"table": table, "floods": floods}


def _a_user(api_url: str) -> str:
    import requests
    return requests.get(f"{api_url}/api/v1/users?limit=1", timeout=10).json()["data"]["results"][0]["id"]


def _figures(summary: dict) -> dict:
    admitted = summary.get("admitted_latency") or {}
    statuses = summary.get("attribution", {}).get("X-RateLimit-Status", {})
    return {"p95_ms": admitted.get("p95_ms"), "p50_ms": admitted.get("p50_ms"), "sent": summary["sent"],
            "errors": summary["error_count"], "limited": statuses.get("limited", 0),
            "lag_p99_ms": summary["generator_lag"]["p99_ms"], "valid": summary["valid"],
            "invalid_reason": summary.get("invalid_reason", "")}


def verdict(table: dict) -> dict:
    """Per repetition with all three runs valid: the A/A band and B's excess over the A mean."""
    bands, excess = [], []
    for a, b, a2 in zip(*(table[label]["figures"] for label in CASES)):
        if not (a["valid"] and b["valid"] and a2["valid"]) or None in (a["p95_ms"], b["p95_ms"], a2["p95_ms"]):
            continue
        bands.append(abs(a["p95_ms"] - a2["p95_ms"]))
        excess.append(b["p95_ms"] - (a["p95_ms"] + a2["p95_ms"]) / 2)
    band, over = median(bands), median(excess)
    met = None if band is None or over is None else over <= 2 * band
    return {"band_ms": band, "excess_ms": over, "met": met, "repetitions": len(bands)}


def render(preamble: list[str], result: dict, provenance: list[str]) -> str:
    table, floods = result["table"], result["floods"]
    v = verdict(table)
    lines = preamble + [
        "Medians over the repetitions (A, B, A' in that order in each); latency from the intended send, successes "
        "only (admitted).",
        "",
        "| case | admitted p50 (ms) | admitted p95 (ms) | normal requests refused (429) | errors | generator lag p99 (ms) "
        "| runs valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        figures = [f for f in row["figures"] if f["valid"]]
        cell = lambda key: "-" if median([f[key] for f in figures]) is None else f"{median([f[key] for f in figures]):.2f}"  # noqa: E731
        lines.append(f"| {label} | {cell('p50_ms')} | {cell('p95_ms')} | {sum(f['limited'] for f in row['figures']):,} | "
                     f"{sum(f['errors'] for f in row['figures']):,} | "
                     f"{median([f['lag_p99_ms'] for f in row['figures']]) or 0:.2f} | "
                     f"{len(figures)}/{len(row['figures'])} |")
    sent = median([f["sent_per_s"] for f in floods])
    share = median([f["limited_share"] for f in floods])
    other = sum(n for f in floods for code, n in f["statuses"].items() if code not in (200, 429))
    errors = sum(n for f in floods for n in f["errors"].values())
    lines += ["", f"The flood: {sent or 0:,.0f} requests a second (median over the B runs), {share or 0:.1%} of them "
              f"refused with 429; {other:,} other statuses, {errors:,} transport errors.", ""]
    if v["met"] is None:
        lines.append("Target (B's p95 within twice the A/A noise band): no repetition had all three runs valid; "
                     "no verdict.")
    else:
        lines.append(f"Target: B's admitted p95 exceeds the mean of A and A' by {v['excess_ms']:+.2f} ms (median of "
                     f"{v['repetitions']} repetitions); the A/A noise band is {v['band_ms']:.2f} ms, so the limit is "
                     f"{2 * v['band_ms']:.2f} ms: {'met' if v['met'] else 'missed'}.")
    lines += ["The flood's clients run in the bench's own process on the same 2 cores as the load generator, Caddy, "
              "the app servers and PostgreSQL: what a refused request still costs (Caddy, a gateway check, one "
              "EVALSHA) and the flood generator's own CPU both come out of the normal traffic's share.",
              *provenance]
    return "\n".join(lines)
