"""Everything the model says about one design, as one dict (the CLI prints it, the dashboard shows
it): the fleet at the normal rate and at the spike's peak, its cost, its nines, the multi-region
table, the p95-vs-cost curve and the seed's phases. Every figure in it is modelled."""
from __future__ import annotations

from dataclasses import replace

from workbench import parameters

from . import availability, cost, fleet, regions
from .costs import Costs


def plan(d: fleet.Design, c: Costs, prices: dict | None = None, budget: float | None = None,
         replication: str = "async", assumptions: dict | None = None, curve: bool = True) -> dict:
    p = {**parameters.capacity(), **(assumptions or {})}
    normal = fleet.size(d, c)
    peak = fleet.size(d.at(d.rps * d.spike), c) if d.spike > 1 else normal
    bills = {"normal": cost.monthly(normal, prices), "peak": cost.monthly(peak, prices)}
    server = fleet.path_samples(d, c, [fleet.Tier(**t) for t in normal["tiers"]], normal["per_region_rps"], n=5000)
    return {
        "modelled": True, "costs": c.to_dict(), "design": normal["design"],
        "normal": normal, "peak": peak, "bill": bills,
        "budget": cost.budget_check(bills["peak"], budget),
        "availability": availability.design(normal, p),
        "replication": regions.replication(replication, p),
        "regions": regions.table(server, d.regions, d.read_ratio, p),
        "curve": cost.curve(d, c, prices) if curve else [],
        "phases": fleet.phases(d, c),
    }


def _n(x) -> str:
    return f"{x:,.0f}" if isinstance(x, (int, float)) else str(x)


def text(r: dict) -> str:
    d = r["design"]
    lines = [f"MODELLED sizing for {d['rps']:,.0f} req/s (peak x{d['spike']:g} = {d['rps'] * d['spike']:,.0f}), "
             f"p95 < {d['p95_ms']:g} ms, {d['read_ratio']:.0%} reads, cache hit {d['cache_hit']:.0%}, "
             f"{d['regions']} region(s), utilisation ceiling {d['max_util']:.0%}",
             f"costs per request: {r['costs']['source']}", "",
             f"{'tier':<16}{'nodes normal':>14}{'nodes at peak':>15}{'per region':>12}{'util':>7}{'tier p95 ms':>13}  note"]
    for t in r["normal"]["tiers"]:
        lines.append(f"{t['name']:<16}{_n(r['normal']['total'][t['name']]):>14}{_n(r['peak']['total'][t['name']]):>15}"
                     f"{_n(t['nodes']):>12}{t['utilisation']:>7.0%}{t['p95_ms']:>13.2f}  {t['note']}")
    for key in ("normal", "peak"):
        f = r[key]
        lat = f["latency_ms"]
        lines.append(f"{key}: {f['shards']} shards x (1 primary + {f['replicas_per_shard']} replicas) per region; "
                     f"cache memory {f['cache_memory_gib']:,.0f} GiB; end-to-end p50 {lat['p50']:.1f} / p95 "
                     f"{lat['p95']:.1f} / p99 {lat['p99']:.1f} ms (server side) -> "
                     f"{'meets' if f['meets_p95'] else 'MISSES'} p95 < {d['p95_ms']:g} ms")
    lines.append("")
    for key in ("normal", "peak"):
        b = r["bill"][key]
        lines.append(f"cost, fleet for the {key} rate: ${b['month']:,.0f} a month, ${b['per_million']:.4f} per million "
                     "requests (" + ", ".join(f"{k} ${v:,.0f}" for k, v in b["lines"].items()) + ")")
    lines.append(f"budget: {r['budget']['note']}")
    a = r["availability"]
    lines += ["", f"availability {a['availability']:.6f} = {a['nines']:.2f} nines ({a['downtime_min_a_year']:,.1f} min "
                  f"down a year) -> {'meets' if a['meets'] else 'MISSES'} 99.99%"]
    lines += [f"  {c['component']:<16}{c['availability']:.6f} ({c['nines']:.2f} nines)  {c['how']}" for c in a["components"]]
    lines += ["", "multi-region (user-seen, server side plus round trips):",
              f"  {'mode':<14}{'geo-routing':>12}{'lag ms':>8}{'RPO ms':>8}{'RTO s':>7}{'write +ms':>10}{'p50':>8}{'p95':>8}{'p99':>8}"]
    for x in r["regions"]:
        lines.append(f"  {x['mode']:<14}{'on' if x['geo_routing'] else 'off':>12}{x['lag_ms']:>8.1f}{x['rpo_ms']:>8.1f}"
                     f"{x['rto_s']:>7.0f}{x['write_added_ms']:>10.1f}{x['p50']:>8.1f}{x['p95']:>8.1f}{x['p99']:>8.1f}")
    if r["curve"]:
        lines += ["", "p95 vs cost (utilisation ceiling -> nodes, cost, p95):"]
        lines += [f"  {x['max_util']:.0%}: {x['app_servers']:,} app servers, ${x['month']:,.0f}/month, p95 "
                  f"{x['p95_ms']:.1f} ms" for x in r["curve"]]
    lines += ["", "the seed's phases (what each phase's fixed parts carry at the utilisation ceiling):"]
    for ph in r["phases"]:
        limit = "scales out" if ph["model_max_rps"] is None else f"{ph['model_max_rps']:,.0f} req/s"
        lines.append(f"  {ph['phase']:<30} seed ~{ph['seed_rps']:>10,} req/s  model: {limit:<16} "
                     f"{'holds' if ph['holds'] else 'DOES NOT HOLD'} ({ph['limited_by']})")
    return "\n".join(lines)


def design_from(options: dict) -> fleet.Design:
    d = fleet.Design()
    fields = {k: v for k, v in options.items() if k in fleet.Design.__dataclass_fields__ and v is not None}
    return replace(d, **fields)
