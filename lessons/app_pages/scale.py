"""The Scale page: the seed's phases (Start small, then caching, horizontal scaling, database
optimisation, multi-region) as one-click presets on the live stack (lessons/phases.py).

A press applies the preset's topology through the admin API and waits until the controller runs it;
a preset with another shard count reshards online, followed through the admin shards API; then two
measured runs through the controller (lessons/measured.py), emulation off and on, shown side by side
with the seed's figure for the phase and what the capacity model says the phase's fleet carries
(labelled modelled). Charts compare the phases' saved runs; a run can be pinned as the baseline.

A reshard goes through the stack controller (POST /reshard runs `manage.py reshard` as its child) and
is followed through GET /api/v1/admin/shards (lessons/reshard.py). The pinned baseline is kept in the
signed-in member's `baseline` workspace (lessons/workspace.py), so a new session starts from it."""
from __future__ import annotations

import time

import pandas as pd
import plotly.graph_objects as go
import requests
import streamlit as st
from plotly.subplots import make_subplots

from lessons import measured, phases, workspace
from lessons import reshard as resharding
from lessons.app_pages.load_test import CPU_SATURATED
from lessons.client import ApiError, StackClient
from lessons.data_nodes import pending_rows
from workbench import topology
from workbench.capacity import calibration, costs, fleet, plan
from workbench.loadgen import report
from workbench.loadgen.client import RunError, TopologyClient, TopologyError
from workbench.stack import config

SETTLE_S = 180           # a topology change: app servers start, replicas copy, PgBouncer starts
RESHARD_S = 300          # the demo dataset reshards in 10-20 s; a loaded machine takes longer
POLL_S = 0.5
MODELLED = "modelled"
SHARED = "measured here, shared CPU"
RUNS = "scale_runs"            # {preset key: {arm: run id}}
BASELINE = "scale_baseline"    # the pinned run's id
PIN_ERROR = "scale_pin_error"  # why the pin could not be saved or read
LAST = "scale_last"            # the last press: {"preset", "steps", "error"}
SHOW = "scale_show"
ARM_TITLE = {"off": "emulation off", "on": "emulation on"}
COLORS = {"off": "#1f77b4", "on": "#ff7f0e"}
DASH = "\u2014"
NO_DB = {"none": "no database (a cache hit)"}
SEEDS = {"off": 1, "on": 2}    # each arm its own keys (the load generator's random seed)


# --- changing the stack, with progress ------------------------------------------------------------
def topology_client() -> TopologyClient:
    return TopologyClient(config.load())


def _refused(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    errors = body.get("errors") or []
    named = "; ".join(f"`{e.get('field')}`: {e.get('detail')}" for e in errors)
    return named or body.get("detail") or str(body)[:300]


def _pending_text(pending: list[dict]) -> str:
    return ", ".join(f"{r['field']} {r['running']} \u2192 {r['wanted']}" for r in pending_rows(pending))


def apply(patch: dict, slot, what: str) -> float:
    """PATCH the topology and wait until the controller runs it, saying what is still pending in
    `slot`. Returns the seconds it took. Raises ApiError saying what failed and what to do."""
    tc = topology_client()
    started = time.monotonic()
    try:
        response = tc.send("PATCH", patch)
    except requests.RequestException as exc:
        raise ApiError(f"{what}: the admin API does not answer at `{tc.url}` ({type(exc).__name__}). Start the "
                       "workbench with `python manage.py up`, or check WORKBENCH_PORT_BASE.") from None
    if response.status_code != 200:
        fix = (" PgBouncer is a Debian package: `apt-get install pgbouncer`, or set WORKBENCH_PGBOUNCER_BIN."
               if "pgbouncer" in response.text.lower() else "")
        raise ApiError(f"{what}: the topology change was refused (HTTP {response.status_code}): "
                       f"{_refused(response)}.{fix}", response.status_code)
    while True:
        try:
            data = tc.data()
        except (TopologyError, requests.RequestException, ValueError) as exc:
            raise ApiError(f"{what}: the topology could not be read back: {exc}. Check the stack with "
                           "`python manage.py status`.") from None
        waiting = topology.still_applying(data["pending"])
        elapsed = time.monotonic() - started
        if not waiting:
            return elapsed
        if elapsed > SETTLE_S:
            raise ApiError(f"{what}: the controller has not applied {_pending_text(waiting)} after {SETTLE_S} s "
                           f"({data.get('progress') or 'no progress reported'}). Look at `python manage.py status` "
                           "and the controller's log in the data directory's logs/.")
        slot.info(f"{what}: the controller is applying {_pending_text(waiting)} ({elapsed:.0f} s)"
                  + (f"; {data['progress']}" if isinstance(data.get("progress"), str) else ""),
                  icon=":material/pending:")
        time.sleep(POLL_S)


def reshard(to: int, slot) -> dict:
    """Move the data to `to` shards online (the strategy unchanged) through the controller, following
    it in `slot` (lessons/reshard.py); then wait until the controller has retired what it no longer
    needs. Returns the finished job as the admin shards API reports it. Raises ApiError."""
    job = resharding.run(StackClient(), to, None, slot, RESHARD_S)
    try:
        topology_client().settled(SETTLE_S)   # the old shards retired, the new ones' replicas up
    except (TopologyError, requests.RequestException) as exc:
        raise ApiError(f"The reshard finished, but the controller has not settled since: {exc}.") from None
    return job


def _going(client: StackClient) -> str | None:
    """Why a preset cannot start now: a run or a reshard going."""
    try:
        current = measured.client().list().get("current")
    except (RunError, requests.RequestException, ValueError) as exc:
        return measured.problem(measured.client(), exc)
    if current and current.get("status") == "running":
        return (f"Run {current['id']} is going (the stack measures one run at a time): wait for it, then press "
                "the preset again.")
    job = client.shards().get("last_reshard")
    if job and job["state"] in ("moving", "rolling_back"):
        return (f"{resharding.line(job)}. A preset waits until it is done (or finished with `python manage.py "
                "reshard --resume` if it was interrupted).")
    return None


def run_preset(preset: phases.Preset, workload: dict, box) -> tuple[dict, list[str]]:
    """Apply the preset, reshard if its shard count differs, run emulation off then on. Returns the
    run ids by arm and the steps done (each with its measured time). Raises ApiError, with the steps
    done so far in `exc.steps`."""
    steps: list[str] = []
    slot = box.empty()
    ids: dict = {}
    emulating = False
    try:
        took = apply(preset.topology, slot, f"Applying {preset.name}")
        steps.append(f"Topology applied in {took:.1f} s: {preset.what}.")
        box.write(steps[-1])
        shards = topology_client().data()["topology"]["shards"]
        if shards != preset.shards:
            started = time.monotonic()
            job = reshard(preset.shards, slot)
            steps.append(f"Resharded online in {time.monotonic() - started:.1f} s: {resharding.line(job)}.")
            box.write(steps[-1])
        for arm in phases.ARMS:
            if arm == "on":
                emulating = True
                took = apply({"emulation": preset.emulation}, slot, "Switching emulation on")
                steps.append(f"Emulation on in {took:.1f} s ({report.emulation_note({'emulation': {**_emulation(), **preset.emulation}})}).")
                box.write(steps[-1])
            result = measured.measure({**workload, "seed": SEEDS[arm]}, preset.label(arm), slot)
            ids[arm] = result["id"]
            steps.append(f"Run {result['id']} ({ARM_TITLE[arm]}) saved.")
            box.write(steps[-1])
        emulating = False
        took = apply({"emulation": phases.EMULATION_OFF}, slot, "Switching emulation off")
        steps.append(f"Emulation off again in {took:.1f} s: the stack stays in {preset.name}.")
        box.write(steps[-1])
    except ApiError as exc:
        if emulating:   # leave the stack as the preset has it, not emulating
            try:
                apply({"emulation": phases.EMULATION_OFF}, slot, "Switching emulation off")
            except ApiError as again:
                steps.append(f"Emulation could not be switched off again: {again}")
        exc.steps, exc.ids = steps, ids
        raise
    finally:
        slot.empty()
    return ids, steps


def _emulation() -> dict:
    """The emulation settings now (rtt, per-node limit, region round trip), for the step's note."""
    try:
        return topology_client().data()["topology"]["emulation"]
    except (TopologyError, requests.RequestException, ValueError, KeyError):
        return {}


# --- the model ------------------------------------------------------------------------------------
@st.cache_data(max_entries=4, show_spinner=False)
def _model(cost_fields: dict) -> dict:
    """The capacity model's view of the seed's phases and of multi-region, at the Capacity page's
    default design (10M req/s, p95 < 100 ms, 90% reads, 90% cache hits, 3 regions)."""
    r = plan.plan(fleet.Design(), costs.Costs(**cost_fields), curve=False)
    return {"phases": {p["phase"]: p for p in r["phases"]}, "regions": r["regions"], "design": r["design"]}


def model() -> tuple[dict, str]:
    try:
        cal = calibration.load(config.load().data_dir)
    except OSError:
        cal = None
    c = costs.from_calibration(cal)
    return _model(c.to_dict()), c.source


def modelled_text(row: dict) -> str:
    return "scales out" if row["model_max_rps"] is None else f"{row['model_max_rps']:,.0f} req/s"


def modelled_help(row: dict) -> str:
    fleet_text = ", ".join(f"{n:,} {name}" for name, n in row["fleet"].items())
    if row["model_max_rps"] is None:
        return (f"Nothing in this phase is fixed: shards, replicas and app servers are added. For the seed's "
                f"~{row['seed_rps']:,} req/s the model sizes {fleet_text}, p95 {row['p95_ms']:.1f} ms ({MODELLED}).")
    return (f"What the phase's fixed parts carry at a 70% utilisation ceiling, limited by {row['limited_by']}: "
            f"{'holds' if row['holds'] else 'does NOT hold'} the seed's ~{row['seed_rps']:,} req/s. Sized for the "
            f"seed's figure: {fleet_text}, p95 {row['p95_ms']:.1f} ms ({MODELLED}). 16-core nodes; "
            "workbench/capacity/fleet.py.")


# --- the workload ---------------------------------------------------------------------------------
def _workload() -> dict:
    with st.expander("Workload of each run (open model by default; short, so a press takes well under a minute)",
                     icon=":material/tune:"):
        cols = st.columns(4)
        mode = cols[0].radio("Model", ["open", "closed"], key="scale_mode", horizontal=True,
                             captions=["latency at a fixed rate", "throughput: N connections"])
        if mode == "open":
            load = cols[1].number_input("Rate (req/s)", 1, 2000, 100, step=10, key="scale_rate",
                                        help="Arrivals per second, whatever the stack does; each request is timed "
                                             "from its intended send.")
        else:
            load = cols[1].number_input("Connections", 1, 64, 8, key="scale_connections",
                                        help="Each sends its next request when answered: the achieved rate is what "
                                             "the stack carries, but latency misses the waits it did not send.")
        duration = cols[2].number_input("Duration (s)", 1, 30, 5, key="scale_duration")
        reads = cols[3].slider("Read ratio", 0.0, 1.0, 0.9, 0.05, key="scale_read_ratio")
        popularity = st.radio("Key popularity", ["zipf", "uniform"], key="scale_popularity", horizontal=True,
                              captions=["a few hot users (Zipf 1.1), as real traffic: what a cache is for",
                                        "every seeded user alike: a short run rarely asks for a key twice"])
        st.caption("The two runs of a preset draw different keys (their own random seed), so the second does not "
                   "simply read what the first put in the cache; it still runs second, on a cache the first warmed.")
    workload = {"mode": mode, "duration_s": float(duration), "read_ratio": float(reads), "popularity": popularity}
    workload["rate" if mode == "open" else "connections"] = float(load) if mode == "open" else int(load)
    return workload


# --- showing runs ---------------------------------------------------------------------------------
def _pin(run_id: str | None) -> None:
    """Pin (or unpin) in this session and in the member's `baseline` workspace, so the pin survives
    a new session; a save that fails keeps the session's pin and says why."""
    st.session_state[BASELINE] = run_id
    try:
        workspace.save(StackClient(), "baseline", {"run": run_id}, overwrite=True)
        st.session_state.pop(PIN_ERROR, None)
    except ApiError as exc:
        st.session_state[PIN_ERROR] = f"The pin holds for this session only: saving it failed. {exc}"


def _saved_pin(client: StackClient) -> None:
    """A new session starts from the pin saved in the workspace."""
    if BASELINE in st.session_state:
        return
    try:
        st.session_state[BASELINE] = (workspace.load(client, "baseline")["data"] or {}).get("run")
    except ApiError as exc:
        st.session_state[BASELINE] = None
        st.session_state[PIN_ERROR] = f"The saved baseline could not be read: {exc}"


def _results(ids: dict) -> tuple[dict, list[str]]:
    """{key: {arm: saved result}} for the ids; and the failures to read, in words."""
    out, failed = {}, []
    for key, arms in ids.items():
        for arm, run_id in arms.items():
            try:
                out.setdefault(key, {})[arm] = measured.saved(run_id)
            except ApiError as exc:
                failed.append(str(exc))
    return out, failed


def _card(result: dict, key: str, arm: str) -> None:
    measured.run_card(result, ARM_TITLE[arm])
    st.caption(f"{phases.topology_note(result.get('topology') or {})}; {report.emulation_note(result.get('topology'))}.")
    for warning in result.get("warnings", []):
        st.warning(f"Warning from the run: {warning}")
    cpu = (result.get("machine") or {}).get("cpu") or {}
    if (cpu.get("max_percent") or 0) >= CPU_SATURATED:
        st.warning(f"The machine's CPU reached {cpu['max_percent']:g}% (mean {cpu.get('mean_percent')}%) during this "
                   "run: the generator, the stack and anything else on the machine competed for it"
                   + (", so the emulation cannot stand for separate machines here: read this run as a saturated "
                      "machine's." if arm == "on" else "."), icon=":material/speed:")
    if st.session_state.get(BASELINE) == result["id"]:
        st.button("Unpin the baseline", key=f"scale_unpin_{key}_{arm}", on_click=_pin, args=(None,),
                  icon=":material/push_pin:")
    else:
        st.button("Pin as the baseline", key=f"scale_pin_{key}_{arm}", on_click=_pin, args=(result["id"],),
                  icon=":material/push_pin:")


def _figures(result: dict, preset: phases.Preset, arm: str) -> dict:
    f = measured.figures(result)
    s = result["summary"]
    return {**f, "phase": preset.name, "key": preset.key, "arm": arm, "emulation": ARM_TITLE[arm],
            "cache hit rate": phases.cache_hit_rate(s.get("attribution") or {}),
            "asked": (f"{result['workload']['rate']:g} req/s" if result["workload"]["mode"] == "open"
                      else f"{result['workload']['connections']} connections (closed)"),
            "x": f"{preset.name.split(':')[0]} \u00b7 {arm}"}


def side_by_side(runs: dict) -> None:
    """Saved runs as one table, a column each ({column title: result}), as saved: the latencies of an
    INVALID run are not shown (they are not the server's)."""
    names = {"run": "run", "valid": "valid", "p50_ms": "p50", "p95_ms": "p95", "p99_ms": "p99", "ok/s": "ok/s",
             "errors": "errors", "cache": "cache hit rate"}
    columns = {}
    for title, result in runs.items():
        f = measured.figures(result)
        hit = phases.cache_hit_rate(result["summary"].get("attribution") or {})
        columns[title] = {
            "run": f["run"], "valid": "VALID" if f["valid"] else f"INVALID: {f['invalid_reason']}",
            **{p: measured.ms(f[p]) if f["valid"] else "INVALID: not shown" for p in ("p50_ms", "p95_ms", "p99_ms")},
            "ok/s": f"{f['ok/s']:,.1f}", "errors": f"{f['errors']:,} of {f['sent']:,}",
            "cache": "cache off" if hit is None else f"{hit:.1%}"}
    table = pd.DataFrame({title: {names[k]: v for k, v in col.items()} for title, col in columns.items()})
    table.index.name = "measured"
    st.table(table)


def _phase_detail(preset: phases.Preset, results: dict, model_row: dict) -> None:
    off, on = results.get("off"), results.get("on")
    cols = st.columns(3)
    cols[0].metric("The seed's figure", f"~{preset.seed_rps:,} req/s", help="seed/challenge-01-scalable-api.md, "
                   "Scaling Strategy: what the phase is said to carry on real machines.")
    f = measured.figures(off) if off else None
    cols[1].metric(f"Achieved ({SHARED})", f"{f['ok/s']:,.1f} ok/s" if f else DASH,
                   help="The emulation-off run: every process of the stack, the load generator and other users of "
                        "the machine share its cores. An open-model run achieves what it asked for until the stack "
                        "saturates: it is not a ceiling (the closed model measures one).")
    cols[2].metric(f"The phase carries ({MODELLED})", modelled_text(model_row))
    st.caption(f"{MODELLED.capitalize()}: {modelled_help(model_row)}")
    side_by_side({ARM_TITLE[arm]: r for arm, r in (("off", off), ("on", on)) if r})
    for arm, result in (("off", off), ("on", on)):
        if result:
            _card(result, preset.key, arm)
        else:
            st.info(f"No {ARM_TITLE[arm]} run of {preset.name} yet.")


def _runs_table(rows: list[dict]) -> None:
    table = pd.DataFrame([{
        "phase": r["phase"], "emulation": r["arm"], "run": r["run"],
        "valid": "VALID" if r["valid"] else "INVALID", "asked": r["asked"],
        "ok/s": r["ok/s"], "p50 (ms)": r["p50_ms"], "p95 (ms)": r["p95_ms"], "p99 (ms)": r["p99_ms"],
        "error rate": r["error rate"], "cache hit rate": r["cache hit rate"], "why invalid": r["invalid_reason"],
    } for r in rows])
    st.dataframe(table, hide_index=True, key="scale_runs_table", column_config={
        "p95 (ms)": st.column_config.NumberColumn(help="As saved in the run's JSON, from the intended send time. "
                                                  "Empty for an INVALID run: not the server's latency."),
        "error rate": st.column_config.NumberColumn(format="percent"),
        "cache hit rate": st.column_config.NumberColumn(format="percent", help="X-Cache hit or hit-l1 over the "
                                                        "requests that looked in the cache; empty: cache off."),
    })


def _seed_table(found: dict, model_rows: dict) -> None:
    rows = []
    for p in phases.PRESETS:
        off = found.get(p.key, {}).get("off")
        f = measured.figures(off) if off else None
        row = model_rows[p.model_phase]
        rows.append({"phase": p.name, "seed (req/s)": p.seed_rps, "achieved (ok/s)": f["ok/s"] if f else None,
                     "p95 (ms)": (f["p95_ms"] if f["valid"] else None) if f else None,
                     "run": (f["run"] if f["valid"] else f"{f['run']} (INVALID)") if f else DASH,
                     f"carries ({MODELLED})": modelled_text(row), f"holds the seed's ({MODELLED})": row["holds"]})
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="scale_seed_table", column_config={
        "seed (req/s)": st.column_config.NumberColumn(help="The seed's figure for the phase, on real machines."),
        "achieved (ok/s)": st.column_config.NumberColumn(help=f"The emulation-off run, {SHARED}: the whole stack "
                                                         "and the load generator on this machine's cores."),
        "p95 (ms)": st.column_config.NumberColumn(help=f"The emulation-off run, {SHARED}; empty for an INVALID run."),
        f"carries ({MODELLED})": st.column_config.TextColumn(help="What the phase's fixed parts carry at a 70% "
                                                             "utilisation ceiling (capacity model)."),
    })


# --- charts ---------------------------------------------------------------------------------------
def _bars(rows: list[dict], y: str, title: str, y_title: str, base=None, percent=False) -> go.Figure:
    fig = go.Figure()
    for arm in phases.ARMS:
        arm_rows = [r for r in rows if r["arm"] == arm]
        fig.add_bar(name=ARM_TITLE[arm], x=[r["phase"] for r in arm_rows], marker_color=COLORS[arm],
                    y=[r[y] for r in arm_rows], text=[_bar_text(r, y, percent) for r in arm_rows],
                    customdata=[r["run"] for r in arm_rows], hovertemplate="%{x}<br>run %{customdata}<br>%{y}")
    for r in rows:   # a bar with no value still says why
        if r[y] is None:
            fig.add_annotation(x=r["phase"], y=0, text=_bar_text(r, y, percent), showarrow=False, yshift=10,
                               xshift=-20 if r["arm"] == "off" else 20, font=dict(color="#777"))
    if base is not None:
        fig.add_hline(y=base, line_dash="dash", line_color="#555", annotation_text="baseline")
    fig.update_layout(title=title, yaxis_title=y_title, barmode="group", height=340, margin=dict(t=50, b=40),
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    if percent:
        fig.update_yaxes(tickformat=".0%")
    return fig


def _bar_text(row: dict, y: str, percent: bool) -> str:
    if y.endswith("_ms") and not row["valid"]:
        return "INVALID"
    value = row[y]
    if value is None:
        return "cache off" if y == "cache hit rate" else DASH
    return (f"{value:.1%}" if percent else f"{value:,.1f}") + ("" if row["valid"] else " (INVALID run)")


def _latency_figure(rows: list[dict], base: dict | None) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=[ARM_TITLE[a] for a in phases.ARMS])
    for col, arm in enumerate(phases.ARMS, start=1):
        arm_rows = [r for r in rows if r["arm"] == arm]
        for p, color in (("p50", "#2ca02c"), ("p95", "#ff7f0e"), ("p99", "#d62728")):
            fig.add_bar(name=p, x=[r["phase"] for r in arm_rows], y=[r[f"{p}_ms"] for r in arm_rows],
                        marker_color=color, showlegend=col == 1, legendgroup=p, row=1, col=col,
                        text=[_bar_text(r, f"{p}_ms", False) for r in arm_rows],
                        customdata=[r["run"] for r in arm_rows], hovertemplate="%{x}<br>run %{customdata}<br>%{y} ms")
        for r in arm_rows:
            if not r["valid"]:
                fig.add_annotation(x=r["phase"], y=0, text="INVALID", showarrow=False, yshift=12, textangle=-90,
                                   font=dict(color="#d62728"), row=1, col=col)
    if base and base["p95_ms"] is not None:
        fig.add_hline(y=base["p95_ms"], line_dash="dash", line_color="#555", annotation_text="baseline p95")
    fig.update_layout(title="Latency from the intended send (ms): p50, p95, p99; INVALID runs have none",
                      barmode="group", height=380, margin=dict(t=70, b=40), yaxis_title="ms",
                      legend=dict(orientation="h", y=1.12, x=1, xanchor="right"))
    return fig


def _shares_figure(rows: list[dict], results: dict, header: str, title: str, group=None) -> go.Figure:
    """Stacked shares of each run's answers by the value of an attribution header."""
    shares = []
    for r in rows:
        counts = (results[r["key"]][r["arm"]]["summary"].get("attribution") or {}).get(header) or {}
        if group:
            grouped: dict = {}
            for name, n in counts.items():
                if group(name) is not None:
                    grouped[f"shard-{group(name)}"] = grouped.get(f"shard-{group(name)}", 0) + n
            counts = grouped
        counts = {NO_DB.get(name, name): n for name, n in counts.items()}
        total = sum(counts.values())
        shares.append({name: n / total for name, n in counts.items()} if total else {})
    names = sorted({n for s in shares for n in s})
    fig = go.Figure([go.Bar(name=n, x=[r["x"] for r in rows], y=[s.get(n, 0) for s in shares]) for n in names])
    fig.update_layout(title=title, barmode="stack", height=340, margin=dict(t=50, b=40), yaxis_tickformat=".0%",
                      legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    return fig


def _shards_live(data: dict) -> None:
    if "error" in data:
        st.warning(f"The admin shards API did not answer: {data['error']}")
        return
    per = data.get("per_shard") or []
    fig = make_subplots(rows=1, cols=2, subplot_titles=["users", "posts"])
    for col, what in enumerate(("users", "posts"), start=1):
        fig.add_bar(x=[f"shard-{s['shard']}" for s in per], y=[s[what] for s in per], name=what, showlegend=False,
                    text=[f"{s[what]:,}" for s in per], row=1, col=col)
    fig.update_layout(title=f"Where the data lives now ({data['sharding']} x {data['shards']}; live, admin shards "
                            "API)", height=320, margin=dict(t=70, b=40))
    st.plotly_chart(fig, key="scale_chart_shards_live")
    st.caption("Users and posts: PostgreSQL's live-row estimates, sampled by the controller.")


def _charts(rows: list[dict], results: dict, base: dict | None, shards: dict) -> None:
    st.subheader("The phases compared (measured)")
    st.caption("Each bar is one saved run: the newest of each phase and emulation arm. Measured on this machine: "
               "every process shares its cores, so compare phases as ratios, not as a fleet's figures.")
    tabs = st.tabs(["Throughput", "Latency", "Error rate", "Cache hit rate", "Per-node load", "Shards"])
    with tabs[0]:
        st.plotly_chart(_bars(rows, "ok/s", "Achieved (ok/s)", "ok/s", base and base["ok/s"]),
                        key="scale_chart_throughput")
    with tabs[1]:
        st.plotly_chart(_latency_figure(rows, base), key="scale_chart_latency")
    with tabs[2]:
        st.plotly_chart(_bars(rows, "error rate", "Error rate (errors / sent)", "share", percent=True),
                        key="scale_chart_errors")
    with tabs[3]:
        st.plotly_chart(_bars(rows, "cache hit rate", "Cache hit rate (X-Cache hit or hit-l1 / lookups)", "share",
                              percent=True), key="scale_chart_cache")
    with tabs[4]:
        st.plotly_chart(_shares_figure(rows, results, "X-App-Server", "Answers per app server (X-App-Server)"),
                        key="scale_chart_apps")
        st.plotly_chart(_shares_figure(rows, results, "X-DB-Node", "Answers per database node (X-DB-Node)"),
                        key="scale_chart_nodes")
        st.caption("Per-node shares are shared-CPU figures: every node runs on the same cores.")
    with tabs[5]:
        st.plotly_chart(_shares_figure(rows, results, "X-DB-Node", "Answers per shard (X-DB-Node)",
                                       group=report.shard_of_node), key="scale_chart_shard_runs")
        _shards_live(shards)


# --- the baseline ---------------------------------------------------------------------------------
def _baseline(rows: list[dict]) -> dict | None:
    """The pinned run, shown; None when nothing is pinned or it cannot be read."""
    st.subheader("Against the baseline")
    if st.session_state.get(PIN_ERROR):
        st.warning(st.session_state[PIN_ERROR])
    pinned = st.session_state.get(BASELINE)
    if not pinned:
        st.caption("Pin a run as the baseline (the button under each run) to see every other run against it.")
        return None
    try:
        base = measured.saved(pinned)
    except ApiError as exc:
        st.error(f"The pinned baseline could not be read: {exc}")
        return None
    measured.run_card(base, "baseline")
    st.caption(f"Pinned as {workspace.who()}, saved in the `baseline` workspace through the API, so a new "
               "session starts from it.")
    b = measured.figures(base)
    out = []
    for r in rows:
        if r["run"] == pinned:
            continue
        invalid = not (r["valid"] and b["valid"])
        line = {"phase": r["phase"], "emulation": r["arm"], "run": r["run"],
                "valid": "VALID" if r["valid"] else "INVALID", "ok/s": r["ok/s"],
                "ok/s vs baseline": report.ratio_value(b["ok/s"], r["ok/s"])}
        for p in ("p50", "p95", "p99"):
            line[f"{p} \u0394 (ms)"] = None if invalid else r[f"{p}_ms"] - b[f"{p}_ms"]
        line["p95 vs baseline"] = None if invalid else report.ratio_value(b["p95_ms"], r["p95_ms"])
        line["error rate \u0394"] = r["error rate"] - b["error rate"]
        out.append(line)
    if out:
        st.dataframe(pd.DataFrame(out), hide_index=True, key="scale_baseline_table", column_config={
            "ok/s vs baseline": st.column_config.NumberColumn(format="%.2fx"),
            "p95 vs baseline": st.column_config.NumberColumn(format="%.2fx"),
            "error rate \u0394": st.column_config.NumberColumn(format="percent"),
            **{f"{p} \u0394 (ms)": st.column_config.NumberColumn(format="%+.2f") for p in ("p50", "p95", "p99")}})
        if any(r["valid"] == "INVALID" for r in out) or not b["valid"]:
            st.caption("An INVALID run (or baseline) gets no latency comparison: its latencies are not the server's.")
    else:
        st.caption("No other run of the phases yet: press a preset.")
    return b


# --- the page -------------------------------------------------------------------------------------
def _stack_now(client: StackClient) -> None:
    try:
        data = topology_client().data()
    except (TopologyError, requests.RequestException, ValueError) as exc:
        st.error(f"The live topology could not be read ({exc}). Start the workbench with `python manage.py up`, or "
                 "check WORKBENCH_PORT_BASE and WORKBENCH_DATA_DIR.")
        return
    t = data["topology"]
    now = phases.matching(t)
    st.markdown(f"**The stack now** (topology version {data['version']}): {phases.topology_note(t)}; "
                f"{report.emulation_note(t)}" + (f" \u2014 that is **{now.name}**." if now else "."))
    waiting = topology.still_applying(data["pending"])
    if waiting:
        st.info(f"The controller is still applying: {_pending_text(waiting)}.", icon=":material/pending:")


def _presets() -> phases.Preset | None:
    st.subheader("The seed's phases")
    cols = st.columns(len(phases.PRESETS))
    pressed = None
    for col, p in zip(cols, phases.PRESETS):
        with col.container(border=True, height="stretch"):
            st.markdown(f"**{p.name}**")
            st.caption(f"Seed: ~{p.seed_rps:,} req/s. {p.what}.")
            if st.button("Apply and measure", key=f"scale_preset_{p.key}", type="primary", width="stretch",
                         icon=":material/play_arrow:"):
                pressed = p
    return pressed


def _press(preset: phases.Preset, workload: dict, client: StackClient) -> None:
    busy = _going(client)
    if busy:
        st.session_state[LAST] = {"preset": preset.key, "steps": [], "error": busy}
        return
    box = st.status(f"{preset.name}: applying and measuring", expanded=True)
    try:
        ids, steps = run_preset(preset, workload, box)
    except ApiError as exc:
        box.update(label=f"{preset.name}: stopped", state="error", expanded=False)
        st.session_state[LAST] = {"preset": preset.key, "steps": getattr(exc, "steps", []), "error": str(exc)}
        ids = getattr(exc, "ids", {})
    else:
        box.update(label=f"{preset.name}: done", state="complete", expanded=False)
        st.session_state[LAST] = {"preset": preset.key, "steps": steps, "error": None}
    if ids:
        st.session_state.setdefault(RUNS, {})[preset.key] = {**st.session_state.get(RUNS, {}).get(preset.key, {}),
                                                             **ids}
    st.session_state[SHOW] = preset.key


def _last_press() -> None:
    last = st.session_state.get(LAST)
    if not last:
        return
    name = phases.BY_KEY[last["preset"]].name
    if last["error"]:
        st.error(f"**{name}** stopped: {last['error']} The stack is left as far as the preset got: "
                 "`python manage.py topology show` says where; press a preset again to carry on.")
    if last["steps"]:
        with st.expander(f"What {name} did (times measured here)", expanded=False):
            st.markdown("\n".join(f"1. {s}" for s in last["steps"]))


def render() -> None:
    st.title("Scale")
    st.caption("The seed's scaling phases as presets of the live stack. A press applies the phase's topology "
               "(resharding online where the shard count changes), then measures it twice through the stack "
               "controller: emulation off (plain loopback) and on (an injected network round trip per query and a "
               f"per-node concurrency limit; in Phase 4 a replica in another region). Figures marked '{MODELLED}' "
               "come from the capacity model; every other figure is a saved run, measured on this one machine.")
    client = StackClient()
    _saved_pin(client)
    workload = _workload()
    now = st.container()      # drawn after a press, so it shows what the press left
    pressed = _presets()
    if pressed:
        _press(pressed, workload, client)
    with now:
        _stack_now(client)
    _last_press()

    if RUNS not in st.session_state:   # a new session: the newest saved run of each phase and arm
        try:
            st.session_state[RUNS] = phases.newest_runs(client.runs())
        except ApiError as exc:
            st.error(f"The saved runs could not be listed: {exc}")
            st.session_state[RUNS] = {}
    results, failed = _results(st.session_state[RUNS])
    for text in failed:
        st.warning(text)
    model_rows, source = model()
    st.subheader("The seed, measured and modelled")
    _seed_table(results, model_rows["phases"])
    st.caption(f"The seed's figure is the seed's claim for real machines; achieved is this machine's (shared CPU); "
               f"'{MODELLED}' is the capacity model (workbench/capacity/) with {source} costs per request.")
    if not results:
        st.info("No phase has been measured yet: press a preset above.")
        _baseline([])
        return

    shown = [p.key for p in phases.PRESETS if p.key in results]
    if st.session_state.get(SHOW) not in shown:
        st.session_state[SHOW] = shown[-1]
    key = st.selectbox("Phase to show", shown, key=SHOW, format_func=lambda k: phases.BY_KEY[k].name)
    preset = phases.BY_KEY[key]
    st.subheader(preset.name)
    _phase_detail(preset, results[key], model_rows["phases"][preset.model_phase])
    if key == "phase4":
        _regions_model(model_rows["regions"])

    rows = [_figures(results[p.key][arm], p, arm) for p in phases.PRESETS if p.key in results
            for arm in phases.ARMS if arm in results[p.key]]
    st.subheader("Every phase's runs")
    _runs_table(rows)
    base = _baseline(rows)
    _charts(rows, results, base, client.shards())


def _regions_model(regions: list[dict]) -> None:
    st.markdown(f"**Multi-region ({MODELLED})**: three regions, users spread evenly; with geo-routing each is "
                "served by its nearest region. The emulated run above puts one replica 65 ms away with no "
                "geo-routing: half the shard-1 reads that miss the cache pay that round trip.")
    st.dataframe(pd.DataFrame(regions), hide_index=True, key="scale_regions_model")
