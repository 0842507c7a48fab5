"""The Estimate page: the back-of-envelope arithmetic of the interview, driven by the Clarify answers
(the signed-in member's `clarify` workspace), with every formula shown (workbench/capacity/envelope.py)
and each estimate set beside what this stack measured in a saved load-test run (the controller's
GET /runs and GET /runs/{id}). The assumptions and the figures are saved in the `estimate` workspace.

Labels: every computed figure is an estimate; a measured per-node figure is a shared-CPU figure,
because every process of the stack (and the load generator) runs on the same small machine."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons import interview, workspace
from lessons.client import ApiError, StackClient
from workbench.capacity import envelope

KIND = "estimate"
GROUPS = [
    ("Traffic", ["qps_peak", "qps_region", "reads_peak", "writes_peak"]),
    ("Storage", ["growth_day", "storage", "stored"]),
    ("Bandwidth", ["bandwidth_in", "bandwidth_out", "egress_day"]),
    ("Cache", ["cache_bytes", "cache_nodes"]),
    ("Servers and databases", ["server_rps", "app_servers", "app_servers_avg", "shards", "replicas", "db_nodes"]),
    ("Availability", ["downtime"]),
]
ASSUMPTIONS = {  # field: (label, min, max, step, help)
    "request_bytes": ("Request size (B)", 1.0, 1e7, 100.0, "Average request, headers and body."),
    "response_bytes": ("Response size (B)", 1.0, 1e7, 100.0, "Average response, headers and body."),
    "core_rps": ("Requests/s per core", 1.0, 1e6, 50.0, "What one core of an app server answers; Django with one "
                 "indexed query is a few hundred to a thousand (TechEmpower's public figures, FACTS.md)."),
    "server_cores": ("Cores per app server", 1, 256, 1, None),
    "max_util": ("Utilisation ceiling", 0.1, 1.0, 0.05, "How busy a server may run at the peak; the rest is "
                 "headroom for a lost node and uneven load."),
    "cache_hit": ("Cache hit ratio", 0.0, 0.999, 0.01, "Share of reads the cache answers."),
    "hot_share": ("Hot share of records", 0.0, 1.0, 0.05, "Share of the records worth caching (80/20: 0.2)."),
    "cache_overhead": ("Cache overhead (x bytes)", 1.0, 10.0, 0.1, "Keys, encoding and allocator overhead."),
    "cache_node_gb": ("Memory per cache node (GB)", 1.0, 4096.0, 8.0, None),
    "primary_writes": ("Writes/s per shard primary", 1.0, 1e7, 500.0, None),
    "replica_reads": ("Reads/s per replica", 1.0, 1e8, 1000.0, None),
    "shard_tb": ("Data per shard (TB)", 0.01, 1000.0, 0.5, "Past this, backups and rebuilds of a shard take too long."),
}
MESSAGE = "es_message"


def _key(name: str) -> str:
    return f"es_{name}"


def _fill(saved: dict) -> None:
    values = {**envelope.defaults()[1], **(saved.get("assumptions") or {})}
    for name, (_, lo, hi, _, _) in ASSUMPTIONS.items():
        value = values.get(name)
        default = getattr(envelope.Assumptions, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
        st.session_state[_key(name)] = type(default)(value) if ok else default


def _assumptions_form() -> envelope.Assumptions:
    with st.expander("Assumptions: per-node capacities and sizes (estimates, editable)", icon=":material/tune:"):
        cols = st.columns(4)
        for index, (name, (label, lo, hi, step, help_text)) in enumerate(ASSUMPTIONS.items()):
            cols[index % 4].number_input(label, min_value=lo, max_value=hi, step=step, key=_key(name), help=help_text)
        st.button("Back to the default assumptions", key="es_defaults", on_click=_fill, args=({},))
    return envelope.Assumptions.from_dict({name: st.session_state[_key(name)] for name in ASSUMPTIONS})


def _figures(figures: list[envelope.Figure]) -> None:
    by_key = envelope.by_key(figures)
    for title, keys in GROUPS:
        st.markdown(f"##### {title}")
        for key in keys:
            f = by_key[key]
            cols = st.columns([1.5, 1.5, 2], vertical_alignment="center")
            cols[0].metric(f.name, envelope.human(f.value, f.unit), help="An estimate, computed from your answers "
                           "and the assumptions; nothing here is measured.")
            cols[1].latex(f.latex)
            cols[2].caption(f"{f.worked}" + (f". {f.note}" if f.note else ""))


def _measured(client: StackClient, figures, answers: envelope.Answers, assumed: envelope.Assumptions) -> dict | None:
    st.subheader("Next to what this stack measured")
    try:
        runs = client.runs()
    except ApiError as exc:
        st.error(f"The saved runs could not be read, so no measurement is shown. {exc}")
        return None
    if not runs:
        st.info("No saved load-test run yet: start one on the Load test page (or `python manage.py loadtest`), then "
                "come back to see the estimates next to it.")
        return None
    by_id = {r["id"]: r for r in runs}
    if st.session_state.get("es_run") not in by_id:
        st.session_state["es_run"] = runs[0]["id"]
    run_id = st.selectbox("Run to compare with (newest first)", list(by_id), key="es_run",
                          format_func=lambda i: f"{i}" + (f" \u00b7 {by_id[i]['label']}" if by_id[i].get("label") else "")
                          + f" \u00b7 {by_id[i]['mode']}" + ("" if by_id[i]["valid"] else " \u00b7 INVALID"))
    try:
        m = envelope.measured(client.run(run_id))
    except ApiError as exc:
        st.error(f"Run {run_id} could not be read. {exc}")
        return None
    with st.container(horizontal=True, vertical_alignment="center"):
        st.badge("measured", icon=":material/speed:", color="blue")
        st.badge(f"shared-CPU: one {m['cores']}-core machine", color="orange")
        st.badge("VALID" if m["valid"] else "INVALID", color="green" if m["valid"] else "red")
    st.markdown(f"Run `{run_id}`" + (f" \u00b7 {m['label']}" if m["label"] else "") + f" \u00b7 {m['mode']} model "
                f"\u00b7 started {(m['started_at'] or '')[:19].replace('T', ' ')} UTC \u00b7 {m['app_servers']} app "
                f"server(s), {m['replicas'] or 0} replica(s), {m['shards'] or 1} shard(s), cache {m['cache_mode']}")
    cols = st.columns(3)
    cols[0].metric("p95, measured (shared-CPU)", f"{m['p95_ms']:,.2f} ms" if m["valid"] and m["p95_ms"] is not None
                   else "not shown (INVALID)", help="From the intended send time, through Caddy, as saved in the run.")
    cols[1].metric("Achieved, measured", envelope.human(m["achieved_rps"], "req/s"),
                   help="Successful answers per second over the run."
                        + (f" The run asked for {m['asked_rps']:g} req/s (open model): not a ceiling."
                           if m["asked_rps"] is not None else " Closed loop: as fast as the stack answered."))
    cols[2].metric("Per app server (shared-CPU)", envelope.human(m["per_server_rps"], "req/s"),
                   help=f"Achieved / {m['app_servers']} app server(s), all on the same cores.")
    if not m["valid"]:  # a property of the run, not a failure of the page: a warning
        st.warning(f"This run is INVALID ({m['invalid_reason']}): its latencies are the generator's, not the "
                 "server's, so its p95 is not shown.")
    st.table(pd.DataFrame(envelope.compare(figures, answers, assumed, m)).rename(columns={
        "figure": "figure", "estimate": "estimate (yours)", "measured": "measured here", "kind": "what the "
        "measured figure is"}).set_index("figure"))
    st.caption("Per-node figures measured here are shared-CPU figures: the app servers, PostgreSQL, Valkey, Caddy "
               f"and the load generator all share one {m['cores']}-core machine, so one app server here is neither one "
               "of your servers nor a fixed fraction of one. Every figure on this page that is not marked measured "
               "is an estimate.")
    return m


def _save(figures, clarify_version: int, m: dict | None) -> None:
    data = {"assumptions": {name: st.session_state[_key(name)] for name in ASSUMPTIONS},
            "figures": envelope.as_dict(figures), "clarify_version": clarify_version,
            "run": None if m is None else {"id": m["id"], "p95_ms": m["p95_ms"] if m["valid"] else None,
                                           "per_server_rps": m["per_server_rps"]}}
    try:
        saved = workspace.save(StackClient(), KIND, data, overwrite=True)
    except ApiError as exc:
        st.session_state[MESSAGE] = ("error", f"The estimate was not saved. {exc}")
    else:
        st.session_state[MESSAGE] = ("success", workspace.saved_note(saved))


def render():
    st.title("Estimate")
    st.caption("Back-of-envelope arithmetic from your Clarify answers: each figure with its formula, then next to what "
               "this stack measured. Computed figures are estimates; measured ones are marked.")
    client = StackClient()
    clarify = None
    try:
        clarify = workspace.load(client, "clarify", fresh=True)  # the Clarify page may have saved since
        own = workspace.load(client, KIND)
    except ApiError as exc:
        st.error(f"Your saved answers could not be read; the seed's defaults are used. {exc}")
        own = {"data": {}}
    answers, ignored = interview.answers_from((clarify or {}).get("data"))
    if clarify is not None and not clarify.get("data"):
        st.info("No Clarify answers saved yet: these estimates use the seed's defaults. Answer the questions on the "
                "Clarify page to make them yours.")
    elif clarify is not None:
        st.caption(f"From your Clarify answers, version {clarify['version']}: {answers['qps_avg']:,} req/s on average, "
                   f"{answers['qps_peak']:,} at the peak, {answers['read_percent']}% reads, {answers['regions']} "
                   f"region(s) {answers['region_mode']}, {answers['availability']:g}%.")
    if ignored:
        st.warning("Saved answers not understood, the seed's defaults used instead: "
                   + ", ".join(interview.LABELS[n] for n in ignored) + ".")
    if not st.session_state.get("es_filled"):
        _fill(own.get("data") or {})
        st.session_state["es_filled"] = True

    assumed = _assumptions_form()
    a = interview.to_envelope(answers)
    figures = envelope.estimate(a, assumed)
    with st.container(horizontal=True, vertical_alignment="center"):
        st.subheader("Estimates")
        st.badge("estimate", icon=":material/calculate:", color="violet")
    _figures(figures)
    per_million = envelope.budget_per_million(answers["budget_month"], answers["qps_avg"])
    if per_million is not None:
        st.latex(r"\$_{10^6} = \frac{budget}{Q_{avg} \cdot 2.63 \times 10^6 / 10^6}")
        st.caption(f"Your budget of ${answers['budget_month']:,} a month allows ${per_million:,.4f} per million "
                   "requests at the average rate (an estimate; the Capacity model page prices a fleet).")

    m = _measured(client, figures, a, assumed)
    cols = st.columns([1, 3], vertical_alignment="center")
    cols[0].button("Save this estimate", type="primary", icon=":material/save:", key="es_save", on_click=_save,
                   args=(figures, (clarify or {}).get("version", 0), m))
    kind, text = st.session_state.pop(MESSAGE, (None, None))
    if kind:
        getattr(cols[1], kind)(text)
    else:
        cols[1].caption("Saves the assumptions, the figures and the run they were compared with in your workspace.")
