"""The capacity page: from what was measured on this machine to the seed's 10M req/s. Sliders for the
targets and the unit prices; the fleet, its cost and its nines; the spike simulator's plots; the
validation of the model against this machine. Every modelled figure says so.

It reads the calibration and the validation the CLI saved in the stack's data directory
(`python manage.py capacity --measure`, `--validate`); it never sends load itself."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from workbench.capacity import calibration, cost, costs, fleet, plan, simulate
from workbench.stack import config

MODELLED = "modelled"
RATES = [1_000, 10_000, 100_000, 1_000_000, 3_000_000, 10_000_000, 30_000_000, 100_000_000]
PRICE_LABELS = {"lb_node_month": "load balancer node, $/month", "app_node_month": "app server, $/month",
                "cache_node_month": "cache node, $/month", "db_node_month": "database node, $/month",
                "egress_per_gb": "egress, $/GB", "cross_region_per_gb": "cross-region transfer, $/GB"}


def _saved(name: str) -> dict | None:
    try:
        return calibration.load(config.load().data_dir, name)
    except Exception:  # no data dir, unreadable: the page goes on with defaults
        return None


@st.cache_data(max_entries=16, show_spinner=False)
def _plan(design: dict, cost_fields: dict, prices: dict, budget: float | None, replication: str) -> dict:
    return plan.plan(fleet.Design(**design), costs.Costs(**cost_fields), prices, budget, replication)


@st.cache_data(max_entries=8, show_spinner="Simulating...")
def _simulate(fields: dict) -> dict:
    return simulate.run_fleet(simulate.Fleet(**fields))


def _targets(cal: dict | None) -> tuple[fleet.Design, dict, float | None, str]:
    st.subheader("Targets")
    c1, c2, c3, c4 = st.columns(4)
    rps = c1.select_slider("Rate (req/s)", RATES, value=10_000_000, format_func=lambda v: f"{v:,}")
    p95 = c2.slider("p95 target (ms)", 10, 500, 100, step=10)
    reads = c3.slider("Read share", 0.0, 1.0, 0.9, 0.05)
    spike = c4.slider("Spike (x normal)", 1.0, 20.0, 10.0, 1.0)
    c1, c2, c3, c4 = st.columns(4)
    hit = c1.slider("Cache hit ratio", 0.0, 0.99, 0.9, 0.01)
    regions = c2.slider("Regions", 1, 6, 3)
    util = c3.slider("Utilisation ceiling", 0.3, 0.95, 0.7, 0.05)
    cores = c4.select_slider("Cores per node", [4, 8, 16, 32, 64], value=16)
    replication = st.radio("Replication between regions", ["async", "remote_write", "remote_apply"], horizontal=True)
    with st.expander("Unit prices and budget (editable; illustrative defaults, not quotes)"):
        cols = st.columns(3)
        prices = {k: cols[i % 3].number_input(PRICE_LABELS[k], min_value=0.0, value=float(v), key=f"price-{k}")
                  for i, (k, v) in enumerate(cost.PRICES.items())}
        budget = st.number_input("Budget, $/month (0: none)", min_value=0.0, value=0.0, step=100_000.0)
    design = fleet.Design(rps=float(rps), p95_ms=float(p95), read_ratio=reads, spike=spike, cache_hit=hit,
                          regions=regions, max_util=util, app_cores=cores, lb_cores=cores, db_cores=cores)
    return design, prices, budget or None, replication


def _costs_section(cal: dict | None) -> costs.Costs:
    c = costs.from_calibration(cal)
    st.subheader("Per-request costs (measured)" if cal else "Per-request costs (defaults)")
    if cal:
        st.caption(f"Calibrated {cal.get('created_at')} from runs {', '.join(cal.get('runs', []))} "
                   f"({cal.get('source')}); the spread is the 10th-90th percentile. Recalibrate with "
                   "`python manage.py capacity --measure` (live) or `--calibrate RUN` (a saved run).")
    else:
        st.info("No calibration saved for this stack: the model uses default costs (docs/benchmarks.md, capacity "
                "model). Measure this machine's with `python manage.py capacity --measure`.")
    st.dataframe(pd.DataFrame([{"cost": k, "value": v} for k, v in c.to_dict().items() if k != "source"]),
                 hide_index=True)
    return c


def _fleet_section(r: dict) -> None:
    d = r["design"]
    st.subheader(f"The fleet ({MODELLED})")
    n, peak = r["normal"], r["peak"]
    cols = st.columns(5)
    cols[0].metric(f"App servers ({MODELLED})", f"{n['total']['app servers']:,}")
    cols[1].metric(f"Shards x replicas ({MODELLED})", f"{n['shards'] * d['regions']:,} x {n['replicas_per_shard']}")
    cols[2].metric(f"Cache nodes ({MODELLED})", f"{n['total']['cache nodes']:,}")
    cols[3].metric(f"p95 ({MODELLED})", f"{n['latency_ms']['p95']:.1f} ms")
    cols[4].metric(f"Availability ({MODELLED})", f"{r['availability']['nines']:.2f} nines")
    rows = [{"tier": t["name"], f"nodes, normal ({MODELLED})": n["total"][t["name"]],
             f"nodes, peak ({MODELLED})": peak["total"][t["name"]], "per region": t["nodes"],
             "utilisation": f"{t['utilisation']:.0%}", "tier p95 (ms)": t["p95_ms"], "note": t["note"]}
            for t in n["tiers"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    st.caption(f"End-to-end, server side ({MODELLED}): p50 {n['latency_ms']['p50']:.1f}, p95 "
               f"{n['latency_ms']['p95']:.1f}, p99 {n['latency_ms']['p99']:.1f} ms: "
               f"{'meets' if n['meets_p95'] else 'MISSES'} p95 < {d['p95_ms']:g} ms.")

    st.subheader(f"Cost ({MODELLED})")
    cols = st.columns(3)
    cols[0].metric(f"Per month, normal fleet ({MODELLED})", f"${r['bill']['normal']['month']:,.0f}")
    cols[1].metric(f"Per month, peak fleet ({MODELLED})", f"${r['bill']['peak']['month']:,.0f}")
    cols[2].metric(f"Per million requests ({MODELLED})", f"${r['bill']['normal']['per_million']:.4f}")
    st.caption(f"Budget: {r['budget']['note']}.")
    if r["curve"]:
        curve = pd.DataFrame(r["curve"])
        fig = go.Figure(go.Scatter(x=curve["month"], y=curve["p95_ms"], mode="lines+markers",
                                   text=[f"ceiling {u:.0%}" for u in curve["max_util"]]))
        fig.update_layout(title=f"p95 vs cost ({MODELLED})", xaxis_title="$ per month", yaxis_title="p95 (ms)",
                          height=320, margin=dict(t=40, b=40))
        st.plotly_chart(fig)

    st.subheader(f"Availability ({MODELLED})")
    a = r["availability"]
    st.caption(f"{a['availability']:.6f} = {a['nines']:.2f} nines, {a['downtime_min_a_year']:,.1f} minutes down a "
               f"year: {'meets' if a['meets'] else 'MISSES'} 99.99%.")
    st.dataframe(pd.DataFrame(a["components"]), hide_index=True)

    st.subheader(f"Multi-region ({MODELLED})")
    st.dataframe(pd.DataFrame(r["regions"]), hide_index=True)
    st.caption("User-seen latency: the server-side samples plus the user's round trip, and a cross-region trip "
               "where geo-routing is off or a write's primary is elsewhere. Assumptions: workbench/parameters.toml "
               "[capacity].")

    st.subheader(f"The seed's phases ({MODELLED})")
    st.dataframe(pd.DataFrame([{"phase": p["phase"], "seed's figure (req/s)": p["seed_rps"],
                                f"the phase carries ({MODELLED})": "scales out" if p["model_max_rps"] is None
                                else f"{p['model_max_rps']:,.0f}", "holds": p["holds"],
                                "limited by": p["limited_by"]} for p in r["phases"]]), hide_index=True)


def _simulation_section(d: fleet.Design, c: costs.Costs) -> None:
    st.subheader(f"A spike, simulated ({MODELLED})")
    cols = st.columns(3)
    boot = cols[0].slider("Autoscaling delay (s)", 0, 180, 60, 10)
    shed = cols[1].slider("Shed after queueing (ms, 0: off)", 0, 200, 50, 10)
    limit_x = cols[2].slider("Rate limit (x normal, 0: off)", 0.0, 10.0, 0.0, 0.5)
    app_ms = d.read_ratio * c.app_cpu_ms_read + (1 - d.read_ratio) * c.app_cpu_ms_write
    cores, nodes = 4, 1   # one small cell of the fleet, so the page simulates in about a second
    rate = nodes * cores * d.max_util * 1000 / app_ms / 2
    r = _simulate({"rate": rate, "spike": d.spike, "service_ms": app_ms, "cores_per_node": cores, "nodes": nodes,
                   "max_nodes": nodes * int(max(d.spike, 1) * 2), "target_util": d.max_util, "boot_s": float(boot),
                   "shed_ms": float(shed) or None, "rate_limit": rate * limit_x or None, "horizon_s": 90.0,
                   "spike_at_s": 15.0, "spike_for_s": 45.0})
    st.caption(f"One cell: {nodes} app servers x {cores} cores at {rate:,.0f} req/s, x{d.spike:g} from 15 s to 60 s. "
               "The whole fleet is many such cells; a big fleet queues less, so these tails are pessimistic. "
               f"Dropped ({MODELLED}): {r['total']['dropped_share']:.1%}; p95 of the served "
               f"({MODELLED}): {r['total']['p95_ms']} ms.")
    s = pd.DataFrame(r["seconds"])
    traffic = go.Figure([go.Scatter(x=s["t"], y=s[k], name=k, stackgroup="one" if k != "arrived" else None)
                         for k in ("served", "limited", "shed")] + [go.Scatter(x=s["t"], y=s["arrived"], name="arrived")])
    traffic.update_layout(title=f"Requests per second ({MODELLED})", height=300, margin=dict(t=40, b=30))
    st.plotly_chart(traffic)
    latency = go.Figure([go.Scatter(x=s["t"], y=s[k], name=k) for k in ("p50_ms", "p95_ms", "p99_ms")]
                        + [go.Scatter(x=s["t"], y=s["nodes"], name="nodes", yaxis="y2", line=dict(dash="dot"))])
    latency.update_layout(title=f"Latency of the served (ms) and nodes running ({MODELLED})", height=300,
                          margin=dict(t=40, b=30), yaxis2=dict(overlaying="y", side="right", title="nodes"))
    st.plotly_chart(latency)


def _validation_section() -> None:
    st.subheader("The model against this machine (modelled next to measured)")
    saved = _saved("validation")
    if not saved or not saved.get("rows"):
        st.info("No validation saved for this stack yet: `python manage.py capacity --validate` measures it "
                "(several minutes) and writes the table into docs/benchmarks.md.")
        return
    rows = []
    for row in saved["rows"]:
        half, high = row["loads"].get("0.5", {}), row["loads"].get("0.8", {})
        rows.append({"topology": row["topology"], f"throughput at SLO ({MODELLED})": row["predicted_rps"],
                     "throughput at SLO (measured)": row["measured_rps"], "within 25%": row["rps_ok"],
                     f"p95 at 50% ({MODELLED}, ms)": half.get("predicted_p95_ms"),
                     "p95 at 50% (measured, ms)": half.get("measured_p95_ms"), "within 25% ": half.get("within"),
                     f"p95 at 80% ({MODELLED} interval, ms)": "{} - {}".format(*high.get("interval_ms", ["-", "-"])),
                     "p95 at 80% (measured, ms)": high.get("measured_p95_ms"), "inside": high.get("inside")})
    st.dataframe(pd.DataFrame(rows), hide_index=True)


def render() -> None:
    st.title("Capacity model")
    st.caption("From this machine's measurements to the seed's 10M req/s. Every figure labelled "
               f"'{MODELLED}' comes from the model (workbench/capacity/), not from a measurement.")
    cal = _saved("calibration")
    d, prices, budget, replication = _targets(cal)
    c = _costs_section(cal)
    try:
        r = _plan(vars(d), c.to_dict(), prices, budget, replication)
    except ValueError as exc:
        st.error(f"The model cannot size this: {exc}")
        return
    _fleet_section(r)
    _simulation_section(d, c)
    _validation_section()
