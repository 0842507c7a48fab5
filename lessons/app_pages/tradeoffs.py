"""The Trade-offs page: the seed's trade-offs as live experiments on the running stack.

1. Consistency vs availability: a replica that applies late, the stale-read rate with read-your-writes
   off and on and with synchronous replication, next to what a write costs in each case (measured).
2. Cache invalidation: the stale-read table of the caching strategies (`manage.py stale_probe`) and
   what write-behind loses when its queue dies (`manage.py write_behind_loss`).
3. Latency vs cost: the capacity model's p95-vs-cost curve for the learner's Clarify answers (modelled).
4. SQL vs NoSQL: the read model's throughput and staleness against the SQL path (measured).

The experiments themselves are in lessons/tradeoffs.py; each section here is a function taking a
widget-key prefix, so the Follow-ups page draws the same sections (lessons/followups/).
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from lessons import interview, measured, readmodel, tradeoffs, workspace
from lessons.client import ApiError, StackClient
from workbench.capacity import fleet

MODELLED = "modelled"
DASH = "\u2014"
CORES = [1, 2, 4, 8, 16, 32]


def _pct(value) -> str:
    return DASH if value is None else f"{value:.2%}"


def _ms(value) -> str:
    return DASH if value is None else f"{value:,.1f}"


def _p95(run: dict) -> str:
    """A run's p95 as lessons/measured.py shows it, or why it is not shown."""
    f = measured.figures(run)
    return measured.ms(f["p95_ms"]) if f["valid"] else "INVALID"


def _start(key: str, work) -> None:
    """Run an experiment under a progress slot; keep its result in the session, or say what failed."""
    slot = st.empty()
    try:
        st.session_state[key] = work(slot)
    except ApiError as exc:
        slot.empty()
        st.error(str(exc))


def _restored(result: dict) -> None:
    if result["restored"].startswith("Topology restored"):
        st.success(result["restored"], icon=":material/restore:")
    else:
        st.warning(result["restored"])


def _runs(rows: list[dict], title: str) -> None:
    with st.expander(f"{title}: the runs as saved (id, validity, percentiles)", expanded=False):
        for row in rows:
            measured.run_card(row["run"], row["case"])


# --- 1. consistency vs availability ----------------------------------------------------------------------
CONSISTENCY = """
One replica replays the primary's WAL late on purpose (`emulation.stale_replica`, `apply_delay_ms`:
what a busy or distant replica does), and every read goes to it. The **stale-read probe** writes
(one writer per probe user) and reads (other clients) for a few seconds and counts the reads that
missed a write already acknowledged. **Read-your-writes** sends a client's reads to the primary for
a while after its own write: it protects the writer, not the other readers. **Synchronous
replication** makes the commit wait for the replica: `remote_write` until it has the WAL,
`remote_apply` until it has applied it, so no read sees the past, and every write pays the
replica's delay (and stops when the replica is gone: the availability half of the trade).
"""


def consistency(prefix: str = "to") -> None:
    key = f"{prefix}_cons"
    st.markdown(CONSISTENCY)
    cases = st.multiselect("Cases", list(tradeoffs.CONSISTENCY_CASES), default=list(tradeoffs.CONSISTENCY_CASES),
                           key=f"{key}_cases")
    cols = st.columns(4)
    delay = cols[0].number_input("Replica apply delay (ms)", 20, 2000, 200, step=20, key=f"{key}_delay")
    duration = cols[1].number_input("Seconds per case", 1, 30, 4, key=f"{key}_duration",
                                    help="The probe's length, and the write run's.")
    rate = cols[2].number_input("Writes/s in the write run", 1, 200, 20, key=f"{key}_rate")
    if st.button("Run the consistency experiment", key=f"{key}_start", type="primary", disabled=not cases,
                 icon=":material/play_arrow:"):
        _start(key, lambda slot: tradeoffs.consistency(cases, delay, duration, rate, slot))
    result = st.session_state.get(key)
    if result:
        _consistency_result(result)


def _consistency_result(r: dict) -> None:
    st.markdown(f"**Measured** {r['at'][:19].replace('T', ' ')} UTC: 1 replica applying {r['delay_ms']:g} ms late, "
                f"cache off, {r['duration_s']:g} s per case; writes at {r['rate']:g}/s (open model, post creates).")
    rows = []
    for row in r["rows"]:
        a, own, run = row["probe"]["all"], row["own"], row["run"]
        lag = f"{_ms(max(row['lag_ms']))} ms" if row["lag_ms"] else DASH
        rows.append({"case": row["case"], "stale reads (other clients)": f"{a['stale']:,} of {a['reads']:,}",
                     "stale share": _pct(a["stale_fraction"]), "age p50 / max (ms)":
                     f"{_ms(a['age_p50_ms'])} / {_ms(a['age_max_ms'])}",
                     "writer's own reads stale": f"{own['stale']} of {own['pairs'] - own['errors']}",
                     "own reads answered by": ", ".join(f"{k} {v}" for k, v in own["nodes"].items()) or DASH,
                     "replica lag": lag, "write p95": _p95(run), "write run": run["id"]})
    st.table(pd.DataFrame(rows).set_index("case"))
    st.caption("Stale reads: the probe's readers are other clients than its writers. Own reads: "
               f"{tradeoffs.OWN_PAIRS} times a profile "
               "update and at once a read of it, both with one `X-Client-Id`. Replica lag: the largest `X-DB-Lag-Ms` "
               "the replica reported on reads sent while the probe ran. Write p95: from the intended send time, as the run saved it. Shared CPU: every "
               "process runs on this one machine.")
    fig = go.Figure([go.Scatter(x=[measured.figures(row["run"])["p95_ms"]],
                                y=[(row["probe"]["all"]["stale_fraction"] or 0) * 100], name=row["case"],
                                mode="markers", marker=dict(size=14)) for row in r["rows"]])
    fig.update_layout(title="What a write costs against how many reads are stale (measured)",
                      xaxis_title="write p95 (ms)", yaxis_title="stale reads (%)", height=340,
                      margin=dict(t=40, b=40))
    st.plotly_chart(fig)
    _runs(r["rows"], "Write runs")
    _restored(r)


# --- 2. cache invalidation ---------------------------------------------------------------------------------
INVALIDATION = """
Each strategy under the same probe (`python manage.py stale_probe`, the table docs/benchmarks.md
keeps): **event** invalidation drops what a write changed before the write is acknowledged;
**TTL only** leaves each entry until it expires. `cache-aside` fills on a miss, `write-through`
also writes the new value, `write-behind` acknowledges once the write is queued, and loses the
queue if the queue's store dies unpersisted (measured below).
"""


@st.cache_data(ttl=15, show_spinner=False)
def _latest_table(api_url: str) -> dict | None:
    return tradeoffs.latest_stale_table()


def invalidation(prefix: str = "to") -> None:
    key = f"{prefix}_inv"
    st.markdown(INVALIDATION)
    groups = tradeoffs.invalidation_groups()
    cols = st.columns([3, 1, 1])
    chosen = cols[0].multiselect("Strategies", groups, key=f"{key}_groups",
                                 default=[g for g in groups if g.startswith(("cache-aside,", "write-"))],
                                 help="`cache off` also runs the lagging-replica case (the command matches by "
                                      "the start of a case's name).")
    ttls = cols[1].multiselect("TTLs of TTL only (s)", [1, 5, 30], default=[1, 5], key=f"{key}_ttls")
    duration = cols[2].number_input("Seconds per case", 1, 60, 5, key=f"{key}_duration")
    if st.button("Measure the stale-read table", key=f"{key}_start", type="primary", icon=":material/play_arrow:",
                 disabled=not chosen or not ttls):
        _start(key, lambda slot: tradeoffs.invalidation(chosen, sorted(ttls), duration, slot))
        _latest_table.clear()
    result = st.session_state.get(key)
    try:
        table = result["table"] if result else _latest_table(StackClient().cfg.api_url)
    except ApiError as exc:
        st.error(str(exc))
        return
    if table:
        stale_table(table)
    else:
        st.info("No stale-read table saved for this stack yet: measure one with the button above (or "
                "`python manage.py stale_probe`).")
    if result:
        _restored(result)
    _write_behind(prefix)


def stale_table(saved: dict) -> None:
    """The table as `manage.py stale_probe` writes it into docs/benchmarks.md, and its stale shares."""
    from workbench.management.commands.stale_probe import render
    st.markdown(render(saved, saved["options"]))
    rows = saved["rows"]
    fig = go.Figure(go.Bar(x=[(r["all"]["stale_fraction"] or 0) * 100 for r in rows], y=[r["case"] for r in rows],
                           orientation="h", text=[_pct(r["all"]["stale_fraction"]) for r in rows]))
    fig.update_layout(title="Stale reads by strategy (measured)", xaxis_title="stale reads (%)",
                      height=120 + 32 * len(rows), margin=dict(t=40, b=40), yaxis=dict(autorange="reversed"))
    st.plotly_chart(fig)


def _write_behind(prefix: str) -> None:
    key = f"{prefix}_wbl"
    st.markdown("**What write-behind loses** (`python manage.py write_behind_loss`): write-behind on, its flusher "
                "paused so every acknowledged write waits in the queue, then the queue's store (the `state` Valkey) "
                "SIGKILLed and the acknowledged posts counted in PostgreSQL.")
    cols = st.columns([2, 1, 2])
    fsync = cols[0].radio("State Valkey fsync", ["off", "everysec", "always"], horizontal=True, key=f"{key}_fsync")
    writes = cols[1].number_input("Writes", 10, 1000, 100, step=10, key=f"{key}_writes")
    if fsync == "off":
        cols[2].caption("With `off` the restarted state Valkey also reloads what it had persisted before: an "
                        "older topology, counters and leases (docs/reliability.md, Write-behind).")
    if st.button("Kill the queue and count", key=f"{key}_start", icon=":material/bolt:"):
        _start(key, lambda slot: tradeoffs.write_behind_loss(fsync, writes, slot))
    r = st.session_state.get(key)
    if r:
        cols = st.columns(5)
        cols[0].metric("state_fsync", r["fsync"])
        cols[1].metric("Acknowledged", f"{r['acknowledged']:,}", help=f"{r['queued']:,} queued, "
                       f"{r['fallback']:,} written synchronously (the queue was down)")
        cols[2].metric("In PostgreSQL", f"{r['in_db']:,}")
        cols[3].metric("Lost", f"{r['lost']:,}")
        cols[4].metric("Not acknowledged", f"{r['failed']:,}")
        _restored(r)


# --- 3. latency vs cost (modelled) -------------------------------------------------------------------------
def cost(prefix: str = "to") -> None:
    key = f"{prefix}_cost"
    client = StackClient()
    try:
        doc = workspace.load(client, "clarify")
    except ApiError as exc:
        st.warning(f"Your Clarify answers could not be read, so the seed's figures are used. {exc}")
        doc = {}
    answers, _ = interview.answers_from(doc.get("data"))
    mine = bool(doc.get("data"))
    cores = st.columns([1, 2])[0].select_slider("Cores per node", CORES, value=16, key=f"{key}_cores")
    design = tradeoffs.design_from(answers, cores)
    try:
        curve = _curve(vars(design))
    except ValueError as exc:
        st.error(f"The model cannot size this: {exc}. Change the answers on the Clarify page.")
        return
    budget = answers["budget_month"] or None
    st.caption(("From your Clarify answers" if mine else "From the seed's figures (no Clarify answers saved)") +
               f": a fleet for the peak, {answers['qps_peak']:,} req/s, p95 < {answers['p95_ms']} ms, "
               f"{answers['read_percent']}% reads, {answers['regions']} region(s); budget "
               + (f"${budget:,} a month." if budget else "not given (Clarify asks for one)."))
    rows = curve["rows"]
    ceilings = [f"utilisation ceiling {r['max_util']:.0%}" for r in rows]
    fig = go.Figure([go.Scatter(x=[r["month"] for r in rows], y=[r[f"{p}_ms"] for r in rows], mode="lines+markers",
                                name=f"{p} ({MODELLED})", text=ceilings) for p in ("p95", "p99")])
    top = max(r["p99_ms"] for r in rows)
    if design.p95_ms <= 2 * top:   # a target far above the curve would flatten it to a line
        fig.add_hline(y=design.p95_ms, line_dash="dot", annotation_text=f"p95 target {design.p95_ms:g} ms")
    if budget:
        fig.add_vline(x=budget, line_dash="dash", line_color="red", annotation_text=f"budget ${budget:,}")
    fig.update_layout(title=f"p95 vs cost ({MODELLED})", xaxis_title=f"$ per month ({MODELLED})",
                      yaxis_title=f"p95, server side (ms, {MODELLED})", height=360, margin=dict(t=40, b=40))
    st.plotly_chart(fig)
    st.table(pd.DataFrame([{
        "utilisation ceiling": f"{r['max_util']:.0%}", f"app servers ({MODELLED})": f"{r['app_servers']:,}",
        f"$ per month ({MODELLED})": f"{r['month']:,.0f}", f"p95 ms ({MODELLED})": f"{r['p95_ms']:.1f}",
        f"p99 ms ({MODELLED})": f"{r['p99_ms']:.1f}",
        "within budget": DASH if not budget else ("yes" if r["month"] <= budget else "OVER"),
        "meets p95": "yes" if r["p95_ms"] <= design.p95_ms else "MISSES"} for r in rows]).set_index("utilisation ceiling"))
    low, high = min(rows, key=lambda r: r["month"]), max(rows, key=lambda r: r["month"])
    st.caption(f"Every figure here is {MODELLED} (workbench/capacity/): each point is the fleet sized with that "
               f"utilisation ceiling, from {high['max_util']:.0%} (${high['month']:,.0f} a month, p95 "
               f"{high['p95_ms']:.1f} ms) to {low['max_util']:.0%} (${low['month']:,.0f}, p95 {low['p95_ms']:.1f} ms); "
               "more headroom means more nodes and less queueing. Per-request costs: "
               + ("this stack's calibration (`python manage.py capacity --measure`)" if curve["calibrated"] else
                  "the defaults (docs/benchmarks.md); `python manage.py capacity --measure` calibrates this machine's")
               + ". Unit prices are the model's illustrative defaults; the Capacity model page edits them.")


@st.cache_data(max_entries=16, show_spinner=False)
def _curve(design: dict) -> dict:
    return tradeoffs.cost_curve(fleet.Design(**design))


# --- 4. SQL vs NoSQL ------------------------------------------------------------------------------------------
SQL_NOSQL = """
The same answer two ways: `GET /users/{id}?view=profile` (the user and their latest posts) built from
SQL on each read (two queries in one snapshot on the user's shard), or read as one document from the
read model (a key-value store, the `state` Valkey) that a relay keeps up to date from a transactional
outbox. Two short closed-loop runs (95% profile reads, 5% writes, Zipf popularity, application cache
off), then how far the documents ran behind PostgreSQL.
"""


def read_model(prefix: str = "to") -> None:
    key = f"{prefix}_rm"
    st.markdown(SQL_NOSQL)
    cols = st.columns([1, 1, 2])
    duration = cols[0].number_input("Seconds per run", 1, 60, 5, key=f"{key}_duration")
    connections = cols[1].number_input("Connections (closed loop)", 1, 64, 8, key=f"{key}_connections")
    cols[2].caption("When the read model is off, switching it on makes the relay build every user's document "
                    "first (the page waits, showing the count): seconds for the test dataset, minutes for a "
                    "large one on a busy machine. Switching it back off drops the documents.")
    if st.button("Run both paths", key=f"{key}_start", type="primary", icon=":material/play_arrow:"):
        _start(key, lambda slot: tradeoffs.read_model(duration, connections, slot))
    r = st.session_state.get(key)
    if r:
        _read_model_result(r)
    with st.expander("SQL or NoSQL: the discussion", expanded=bool(r)):
        st.markdown(readmodel.LESSON.replace("measured below", "measured above"))  # written for the status page
        st.markdown(DISCUSSION)


DISCUSSION = """
What the runs show is the seed's recommendation at work: **SQL for the writes, a NoSQL copy for
the hot read**. The document costs one key lookup instead of two queries, so it should answer more
reads per second on the same cores (the runs above measure by how much, here); what it gives up is freshness (the staleness above: commit to
document update) and flexibility (it answers this one read only; any other question goes to SQL).
The source of truth stays transactional: a profile update and its outbox row commit together, so
the copy can lag but never diverge for good. Use it where a read is hot, shaped in advance and can
be a little behind; keep reads that must see the latest write on the primary.
"""


def _read_model_result(r: dict) -> None:
    st.markdown(f"**Measured** {r['at'][:19].replace('T', ' ')} UTC: closed loop, {r['connections']} connections, "
                f"{r['duration_s']:g} s each, cache off.")
    base = measured.figures(r["rows"][0]["run"])["ok/s"]
    rows = []
    for row in r["rows"]:
        f = measured.figures(row["run"])
        said = row["run"]["summary"]["attribution"].get("X-Read-Model", {})
        stale = (row["readmodel"] or {}).get("staleness_ms") or {}
        rows.append({"path": row["case"], "throughput (ok/s)": f"{f['ok/s']:,.1f}",
                     "vs SQL path": f"{f['ok/s'] / base:.2f}x" if base else DASH, "p95": _p95(row["run"]),
                     "X-Read-Model": ", ".join(f"{k} {v:,}" for k, v in said.items()) or DASH,
                     "staleness p50 / p95 / max (ms)": (f"{_ms(stale.get('p50'))} / {_ms(stale.get('p95'))} / "
                                                        f"{_ms(stale.get('max'))}") if stale else DASH,
                     "run": f["run"]})
    st.table(pd.DataFrame(rows).set_index("path"))
    doc = next((row["readmodel"] for row in r["rows"] if row["readmodel"]), None)
    if doc:
        st.caption(f"Staleness over the latest {doc['staleness_ms']['samples']:,} document updates (admin read-model "
                   f"API, right after the run); outbox left: {doc['outbox']['pending']:,}; {doc['documents']:,} "
                   "documents. Shared CPU: the app servers, PostgreSQL, Valkey, the relay and the load generator all "
                   "run on this one machine.")
    _runs([{"case": row["case"], "run": row["run"]} for row in r["rows"]], "Runs")
    _restored(r)


def render() -> None:
    st.title("Trade-offs")
    st.caption("The seed's trade-offs, measured on this stack. Each experiment changes the topology for its runs and "
               "puts it back afterwards; figures labelled modelled come from the capacity model.")
    st.header("Consistency vs availability")
    consistency()
    st.header("Cache invalidation strategies")
    invalidation()
    st.header(f"Latency vs cost ({MODELLED})")
    cost()
    st.header("SQL vs NoSQL")
    read_model()
