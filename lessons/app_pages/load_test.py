"""The load-test page: ask the stack controller for a measured run, follow it live, and read saved
runs back, the same way `manage.py loadtest` does (RunClient). The dashboard never sends load
itself: the controller runs the generator in its own process, and this page only reads its API."""
from __future__ import annotations

import time

import altair as alt
import pandas as pd
import requests
import streamlit as st

from lessons import measured
from workbench.loadgen import report
from workbench.loadgen.client import RunClient, RunError
from workbench.loadgen.recorder import LATE_US, MAX_LATE_SHARE
from workbench.stack import config

UNREACHABLE = measured.UNREACHABLE
BUSY = "A run is already going"
REFUSED = "The controller refused the workload"
INVALID_NOTE = measured.INVALID_NOTE
MAX_DURATION_S = 60          # the page's own bound; the controller accepts up to 600 s
MAX_RATE = 5000              # the generator holds ~3,000 req/s per process (docs/benchmarks.md)
POLL_S = 0.5
FOLLOW_GRACE_S = 60          # beyond duration + per-request timeout: generator start-up and saving
CPU_SATURATED = 95.0
DASH = "\u2014"

OPEN_HELP = ("Open model: requests leave at a fixed arrival rate whatever the server is doing, and each "
             "is timed from the moment it was meant to leave, so time spent queueing counts.")
CLOSED_HELP = ("Closed model: N connections, each sends its next request only once the previous answer is "
               "back. A slow server slows the sender down, so the waiting a real user would do is never "
               "measured (coordinated omission).")


# --- talking to the controller ---------------------------------------------------------------
def _client() -> RunClient:
    return RunClient(config.load())


def _unreachable(client: RunClient, exc: Exception | None = None) -> str:
    return measured.unreachable(client.cfg, exc)


@st.cache_data(max_entries=64, show_spinner=False)
def _saved_result(controller_url: str, run_id: str, _client: RunClient) -> dict:
    """A saved result never changes, so each is fetched once (keyed by controller and id)."""
    return _client.get(run_id)


def _problem(client: RunClient, exc: Exception) -> str:
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return _unreachable(client, exc)
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, RunError) else str(exc)


def _start_error(client: RunClient, exc: Exception) -> str:
    """What went wrong when asking for a run, in words a learner can act on. RunClient raises
    RunError with the controller's message: 409 "run X is still going", 400 "bad request:
    <field>: <detail>" (the field named by Workload.validate), 401 a token problem."""
    if not isinstance(exc, RunError):
        return _problem(client, exc)
    message = str(exc)
    if exc.status == 409:
        return f"{BUSY} ({exc.run}): one run at a time. It is followed below; start yours when it is done."
    if exc.status == 400:
        detail = message.removeprefix("bad request: ")
        if exc.field and exc.field != "(body)":
            return f"{REFUSED}: field `{exc.field}`: {detail.removeprefix(exc.field + ': ')}."
        return f"{REFUSED}: {detail}."
    return f"The controller did not start the run: {message}"


# --- formatting ------------------------------------------------------------------------------
def _ms(value) -> str:
    return DASH if value is None else f"{value:,.2f} ms"


def _asked(w: dict) -> str:
    return f"{w['rate']:,.0f} req/s" if w["mode"] == "open" else f"{w['connections']} connections"


def _spike(w: dict) -> str | None:
    sp = w.get("spike")
    if w["mode"] != "open" or not sp or not sp.get("for_s"):
        return None
    return f"spike x{sp['factor']:g} for {sp['for_s']:g} s at {sp['at_s']:g} s"


def _rate(value) -> str:
    return DASH if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:,.1f}")


def _run_label(run: dict) -> str:
    """One line per saved run, for pickers: id, label, model, what was asked and validity."""
    asked = f"open {run['rate']:g} req/s" if run["mode"] == "open" else "closed loop"
    label = f" \u00b7 {run['label']}" if run.get("label") else ""
    return f"{run['id']}{label} \u00b7 {asked} \u00b7 {'VALID' if run['valid'] else 'INVALID'}"


def _runs_table(runs: list[dict]) -> pd.DataFrame:
    """The saved runs in brief. An invalid run's p95 is not shown: it is not the server's."""
    return pd.DataFrame([{
        "run": r["id"], "label": r.get("label") or "", "model": r["mode"],
        "asked": f"{r['rate']:,.0f} req/s" if r["mode"] == "open" else "closed loop",
        "valid": "VALID" if r["valid"] else "INVALID",
        "achieved (ok/s)": r["achieved_rps"],
        "p95 (ms)": (DASH if r["p95_ms"] is None else f"{r['p95_ms']:,.2f}") if r["valid"] else "not shown",
    } for r in runs])


def _latency_table(s: dict) -> pd.DataFrame:
    lat, svc = s["latency"], s["service_time"]
    rows = {
        "from the intended send time (what a user waits)": lat,
        "from the actual send (service time)": svc,
    }
    table = pd.DataFrame({name: {p: _ms(v.get(f"{p}_ms")) for p in ("p50", "p95", "p99", "max", "mean")}
                          for name, v in rows.items()}).T
    gap = {p: (None if lat.get(f"{p}_ms") is None or svc.get(f"{p}_ms") is None
               else lat[f"{p}_ms"] - svc[f"{p}_ms"]) for p in ("p50", "p95", "p99", "max", "mean")}
    table.loc["difference (sends that left late)"] = {p: _ms(v) for p, v in gap.items()}
    table.index.name = "latency, measured"
    return table


def _count_table(counts: dict, what: str, total: int | None = None) -> pd.DataFrame:
    total = total if total is not None else sum(counts.values())
    rows = [{what: str(k), "requests": n, "share": f"{n / total:.1%}" if total else DASH}
            for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]
    return pd.DataFrame(rows, columns=[what, "requests", "share"]).set_index(what)


def _error_table(s: dict) -> pd.DataFrame:
    def name(key: str) -> str:
        return f"HTTP {key}" if key.isdigit() else key
    rows = {name(k): n for k, n in s["errors"].items()}
    if s["dropped"]:
        rows["dropped (no answer before the hard stop)"] = s["dropped"]
    return _count_table(rows, "error", total=s["sent"])


# --- charts ----------------------------------------------------------------------------------
def _spike_band(w: dict):
    sp = w.get("spike")
    if w["mode"] != "open" or not sp or not sp.get("for_s"):
        return None
    frame = pd.DataFrame([{"start": sp["at_s"], "end": min(sp["at_s"] + sp["for_s"], w["duration_s"])}])
    return alt.Chart(frame).mark_rect(opacity=0.12, color="#d62728").encode(x="start:Q", x2="end:Q")


def run_chart(frame: pd.DataFrame, y_title: str, w: dict, colors: dict, dashed=()) -> alt.Chart:
    """One line per series over the run; each second's point sits in the middle of that second.
    `dashed` series are drawn dashed and on top, so a line they coincide with stays visible."""
    long = frame.melt("second", var_name="series", value_name="value").dropna()
    long["at"] = long["second"] + 0.5
    base = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("at:Q", title="time into the run (s)", scale=alt.Scale(domain=[0, w["duration_s"]], nice=False),
                axis=alt.Axis(tickMinStep=1, format="d")),
        y=alt.Y("value:Q", title=y_title),
        color=alt.Color("series:N", title=None, sort=list(colors),
                        scale=alt.Scale(domain=list(colors), range=list(colors.values())),
                        legend=alt.Legend(orient="top", symbolType="stroke", symbolStrokeWidth=3)),
        strokeDash=alt.StrokeDash("series:N", legend=None, scale=alt.Scale(
            domain=list(colors), range=[[6, 4] if name in dashed else [1, 0] for name in colors])),
        tooltip=[alt.Tooltip("second:Q", title="second"), alt.Tooltip("series:N", title="series"),
                 alt.Tooltip("value:Q", format=",.2f", title=y_title)],
    )
    layers = [base.transform_filter(alt.FieldOneOfPredicate(field="series", oneOf=[c for c in colors
                                                                                    if c not in dashed]))]
    if dashed:
        layers.append(base.transform_filter(alt.FieldOneOfPredicate(field="series", oneOf=list(dashed))))
    band = _spike_band(w)
    return alt.layer(*([band] if band is not None else []), *layers).properties(height=300)


def _throughput_chart(run: dict) -> alt.Chart:
    frame = pd.DataFrame([{"second": r["t"], "sent": r["sent"], "ok": r["ok"],
                           "errors": sum(r["errors"].values())} for r in run["timeseries"]],
                         columns=["second", "sent", "ok", "errors"])
    return run_chart(frame, "requests", run["workload"],
                  {"sent": "#1f77b4", "ok": "#2ca02c", "errors": "#d62728"}, dashed=("sent",))


def _latency_chart(run: dict) -> alt.Chart:
    frame = pd.DataFrame([{"second": r["t"], "p50": r["p50_ms"], "p95": r["p95_ms"], "p99": r["p99_ms"]}
                          for r in run["timeseries"]], columns=["second", "p50", "p95", "p99"])
    return run_chart(frame, "ms", run["workload"],
                  {"p50": "#2ca02c", "p95": "#ff7f0e", "p99": "#d62728"})


# --- one result ------------------------------------------------------------------------------
def _latency_section(run: dict) -> None:
    s, w = run["summary"], run["workload"]
    lat, svc, lag = s["latency"], s["service_time"], s["generator_lag"]
    cols = st.columns(4)
    for col, p in zip(cols, ("p50", "p95", "p99", "max")):
        col.metric(f"{p} latency", _ms(lat[f"{p}_ms"]), border=True,
                   help="Measured from the intended send time, as a user would wait for it. "
                        f"Service time (from the actual send): {_ms(svc[f'{p}_ms'])}.")
    st.table(_latency_table(s))
    if w["mode"] == "open":
        st.caption(f"Open model: each request left at its intended time (generator lag p99 {_ms(lag['p99_ms'])}), "
                   "so the two rows differ only by that lag, and any queueing in the stack is in both. A closed "
                   "loop would instead have paused its sending while the stack was slow, and the wait of the "
                   "requests it did not send is missing from its figures (coordinated omission): compare this run "
                   "with a closed-model run of the same throughput below.")
    else:
        st.caption("Closed model: a request leaves only when its connection is free, so its intended and actual "
                   "send times are the same and both rows agree by construction. While the stack is slow the "
                   "loop simply sends less, so the waiting a real user would have done is not in these figures "
                   "(coordinated omission): compare with an open-model run of the same throughput below.")


def render_result(run: dict) -> None:
    s, w = run["summary"], run["workload"]
    open_model = w["mode"] == "open"
    valid = s["valid"]
    with st.container(horizontal=True, vertical_alignment="center"):
        st.badge("measured", icon=":material/speed:", color="blue")
        st.badge("open model" if open_model else "closed model", color="violet" if open_model else "orange",
                 help=OPEN_HELP if open_model else CLOSED_HELP)
        st.badge("VALID" if valid else "INVALID", color="green" if valid else "red")
    label = f" \u00b7 {run['label']}" if run.get("label") else ""
    st.caption(f"Run `{run['id']}`{label} \u00b7 {run['model']} \u00b7 target `{run['target']}` \u00b7 "
               f"{run['processes']} generator process(es) \u00b7 {run['wall_s']:g} s wall clock")

    late = s["generator_lag"]["late_share"]
    if valid:
        st.success(f"**VALID**: {late:.2%} of sends left more than {LATE_US / 1000:g} ms late (limit "
                   f"{MAX_LATE_SHARE:.0%}), so the generator kept its schedule and the latencies below are the "
                   "stack's, measured from outside it.")
    else:
        st.error(f"**INVALID**: {s['invalid_reason']}. Its latencies are {INVALID_NOTE}, so they are not shown "
                 "as a result; the raw figures are in the collapsed section below, for diagnosis only.")
    for warning in run.get("warnings", []):
        st.warning(f"Warning from the run: {warning}")

    cols = st.columns(5)
    cols[0].metric("Asked", _asked(w), delta=_spike(w), delta_color="off", delta_arrow="off",
                   help=OPEN_HELP if open_model else CLOSED_HELP)
    achieved = s["achieved_rps"]
    share = (f"{achieved / w['rate']:.0%} of asked" if open_model and achieved is not None and not _spike(w)
             else None)
    cols[1].metric("Achieved", f"{_rate(achieved)} ok/s", delta=share, delta_color="off", delta_arrow="off",
                   help=f"Successful answers per second over the {w['duration_s']:g} s run.")
    cols[2].metric("Sent", f"{s['sent']:,}", help=f"{s['scheduled']:,} scheduled; {s['sent_rps']:,} sent/s")
    cols[3].metric("Errors", f"{s['error_count']:,}", help="HTTP 4xx and 5xx answers, timeouts and connection errors.")
    cols[4].metric("Dropped", f"{s['dropped']:,}", help="Sent, but no answer before the run's hard stop.")

    st.markdown("#### Latency, measured")
    if valid:
        _latency_section(run)
    else:
        with st.expander(f"Latency figures of this INVALID run: {INVALID_NOTE}", icon=":material/block:"):
            st.error(f"The generator, not the server, set the pace of this run: these figures are {INVALID_NOTE}.")
            _latency_section(run)
            st.markdown("**Latency per second** (p50 / p95 / p99, from the intended send)")
            st.altair_chart(_latency_chart(run), width="stretch")

    st.markdown("#### Per second")
    cols = st.columns(2, gap="large")
    with cols[0]:
        st.markdown("**Requests per second**: sent, ok and errors")
        st.altair_chart(_throughput_chart(run), width="stretch")
    with cols[1]:
        st.markdown("**Latency per second**: p50, p95 and p99, from the intended send")
        if valid:
            st.altair_chart(_latency_chart(run), width="stretch")
        else:
            st.info(f"Not shown for an invalid run: {INVALID_NOTE}. It is in the collapsed section above.")
    if w["mode"] == "open" and w.get("spike") and w["spike"].get("for_s"):
        st.caption("The shaded band is the spike.")

    st.markdown("#### Errors, request mix and attribution")
    cols = st.columns(3)
    with cols[0]:
        st.markdown("**Errors by kind**")
        if s["error_count"] or s["dropped"]:
            st.table(_error_table(s))
        else:
            st.caption("No errors and nothing dropped.")
    with cols[1]:
        st.markdown("**Requests by kind**")
        st.table(_count_table(s["by_kind"], "kind"))
    with cols[2]:
        attribution = s.get("attribution") or {}
        if not attribution:
            st.markdown("**Attribution**")
            st.caption("No response carried an attribution header.")
        for header, counts in attribution.items():
            st.markdown(f"**Answered by** (`{header}`)" if header == "X-App-Server" else f"**`{header}`**")
            st.table(_count_table(counts, header.removeprefix("X-").lower()))

    st.markdown("#### The generator and the machine")
    lag, cpu = s["generator_lag"], run["machine"]["cpu"]
    cols = st.columns(4)
    cols[0].metric("Late sends", f"{late:.2%}", help=f"Sends that left more than {LATE_US / 1000:g} ms after their "
                   f"intended time. Over {MAX_LATE_SHARE:.0%} makes the run invalid.")
    cols[1].metric("Generator lag p99", _ms(lag["p99_ms"]), help=f"How late sends left: p50 {_ms(lag['p50_ms'])}, "
                   f"max {_ms(lag['max_ms'])}.")
    cols[2].metric("CPU mean / max", DASH if cpu["mean_percent"] is None
                   else f"{cpu['mean_percent']:g}% / {cpu['max_percent']:g}%",
                   help="Whole-machine CPU use, sampled once a second during the run.")
    cols[3].metric("Cores", run["machine"]["cores"], help="The generator shares them with the stack it measures.")
    if cpu["max_percent"] is not None and cpu["max_percent"] >= CPU_SATURATED:
        st.warning(f"The machine's CPU reached {cpu['max_percent']:g}% during the run: the generator and the stack "
                   "competed for it, so these figures are shared-CPU figures.")
    topology = run.get("topology") or {}
    emulation = report.emulation_note(topology)
    (st.warning if emulation != report.emulation_note({}) else st.caption)(
        f"Topology version {topology.get('version')}, {topology.get('replicas', 0)} replica(s); {emulation}.")
    with st.expander("Workload, topology, machine and versions (as saved with the run)"):
        st.json({k: run.get(k) for k in ("workload", "topology", "machine", "versions", "started_at")},
                expanded=1)


# --- comparing two runs ----------------------------------------------------------------------
def render_compare(a: dict, b: dict) -> None:
    invalid = {tag for tag, run in (("A", a), ("B", b)) if not run["summary"]["valid"]}
    rows = []
    for row in report.compare_rows(a, b):
        hide = row["latency"] and invalid
        shown_a = "INVALID" if hide and "A" in invalid else _value(row["a"])
        shown_b = "INVALID" if hide and "B" in invalid else _value(row["b"])
        ratio = DASH if hide or row["ratio"] is None else f"{row['ratio']:.2f}x"
        rows.append({"figure": row["name"], "A": shown_a, "B": shown_b, "B / A": ratio})
    st.table(pd.DataFrame(rows).set_index("figure"))
    for tag in sorted(invalid):
        run = a if tag == "A" else b
        st.error(f"{tag} is INVALID: {run['summary']['invalid_reason']}. Its latencies are {INVALID_NOTE}, so no "
                 "latency ratio is given.")
    if a["workload"]["mode"] != b["workload"]["mode"]:
        closed = "A" if a["workload"]["mode"] == "closed" else "B"
        st.warning(f"A and B use different models: {closed} is the closed loop. It times each request from its "
                   "actual send and sends less while the stack is slow, so its latencies read lower than what "
                   "users of an open system wait (coordinated omission). Check the achieved rates: the comparison "
                   "is fair only at the same throughput.")
    st.caption("Two separate runs on a shared, noisy machine: read small ratios (within about 10%) as noise. "
               "`python manage.py bench` interleaves repetitions within one run for figures you can quote.")


def _value(value) -> str:
    return DASH if value is None else (f"{value:,.2f}" if isinstance(value, float) else f"{value:,}")


# --- following a run -------------------------------------------------------------------------
def _progress(slot, run: dict) -> None:
    p = run.get("progress") or {}
    done, text = measured.progress_line(run, counts=False)
    with slot.container(border=True):
        st.progress(done, text=text)
        cols = st.columns(3)
        cols[0].metric("ok so far", f"{p.get('ok', 0):,}")
        cols[1].metric("errors so far", f"{p.get('errors', 0):,}")
        cols[2].metric("elapsed", f"{p.get('elapsed_s', 0.0):.1f} s")
        st.caption("Live counts relayed by the stack controller, which runs the load generator.")


def _follow(client: RunClient, run_id: str, workload: dict, slot, keep: list) -> None:
    """Poll the controller until the run is saved, for at most its duration plus a grace time; then
    rerun the page, which shows the saved result. `keep`: notices to show again after that rerun."""
    deadline = time.monotonic() + workload.get("duration_s", MAX_DURATION_S) + workload.get("timeout_s", 10) \
        + FOLLOW_GRACE_S
    while time.monotonic() < deadline:
        try:
            run = client.get(run_id)
        except (RunError, requests.RequestException, ValueError) as exc:
            st.session_state.pop("lt_active", None)
            slot.error(f"Lost track of run {run_id}: {_problem(client, exc)}")
            return
        if run["status"] == "done":
            st.session_state.pop("lt_active", None)
            st.session_state["lt_show_next"] = run_id   # the picker is drawn already: set it next time
            st.session_state["lt_notices"] = keep + [("success", f"Run {run_id} finished; its result is shown below.")]
            st.rerun()
        if run["status"] == "failed":
            st.session_state.pop("lt_active", None)
            slot.error(f"Run {run_id} failed: {run.get('error') or 'no reason given'}")
            return
        _progress(slot, run)
        time.sleep(POLL_S)
    slot.warning(f"Run {run_id} is still going after the page's limit for following it; the controller "
                 "keeps running it, and it will be listed once saved.")
    if st.button("Keep following"):
        st.rerun()


# --- the form --------------------------------------------------------------------------------
def _form() -> tuple[dict, str] | None:
    """The workload asked for, or None if the form was not submitted."""
    with st.container(border=True):
        top = st.columns([1.3, 1.3, 1])
        mode = top[0].radio("Model", ["open", "closed"], key="lt_mode", horizontal=True,
                            captions=["fixed arrival rate", "N connections in lock step"],
                            help=OPEN_HELP + "\n\n" + CLOSED_HELP)
        popularity = top[1].radio("Key popularity", ["uniform", "zipf"], key="lt_popularity", horizontal=True,
                                  captions=["every seeded id alike", "a few hot ids"],
                                  help="Which seeded users and posts the requests touch.")
        if mode == "open":
            spike = top[2].toggle("Add a spike", key="lt_spike",
                                  help="Multiply the rate for a while in the middle of the run, then go back.")
        else:
            spike = False
            top[2].caption("A spike needs the open model: a closed loop sends only as fast as answers return.")

        with st.form("lt_form", border=False, enter_to_submit=False):
            cols = st.columns(4)
            if mode == "open":
                rate = cols[0].number_input("Rate (requests/s)", 1, MAX_RATE, 50, step=10, key="lt_rate",
                                            help="Arrivals per second, whatever the server does.")
                connections = None
            else:
                connections = cols[0].number_input("Connections", 1, 256, 8, key="lt_connections",
                                                   help="Concurrent loops; each waits for its answer.")
                rate = None
            duration = cols[1].number_input("Duration (s)", 1, MAX_DURATION_S, 5, key="lt_duration")
            read_ratio = cols[2].slider("Read ratio", 0.0, 1.0, 0.9, 0.05, key="lt_read_ratio",
                                        help="Share of reads; the rest are writes (new posts, profile updates).")
            source_ips = cols[3].number_input("Source IPs", 1, 4096, 1, key="lt_source_ips",
                                              help="Spread connections over 127.0.0.1, 127.0.0.2, ...: "
                                                   "per-IP limits then see many clients.")
            slots = iter(st.columns(4) if popularity == "zipf" or spike else ())
            zipf_s = None
            if popularity == "zipf":
                zipf_s = next(slots).number_input("Zipf exponent", 0.1, 5.0, 1.1, 0.1, key="lt_zipf_s",
                                                  help="Higher: the hottest ids take more of the requests.")
            spike_at = spike_for = spike_factor = None
            if spike:
                spike_at = next(slots).number_input("Spike at (s)", 0, MAX_DURATION_S, 2, key="lt_spike_at")
                spike_for = next(slots).number_input("Spike for (s)", 1, MAX_DURATION_S, 2, key="lt_spike_for")
                spike_factor = next(slots).number_input("Spike factor (x rate)", 1.0, 20.0, 10.0, 0.5,
                                                        key="lt_spike_factor")
            bottom = st.columns([3, 1], vertical_alignment="bottom")
            label = bottom[0].text_input("Label (optional)", max_chars=100, key="lt_label",
                                         placeholder="e.g. baseline, cache on")
            submitted = bottom[1].form_submit_button("Start run", type="primary", key="lt_start",
                                                     icon=":material/play_arrow:", width="stretch")
    if not submitted:
        return None
    workload = {"mode": mode, "duration_s": float(duration), "read_ratio": float(read_ratio),
                "popularity": popularity, "source_ips": int(source_ips)}
    if mode == "open":
        workload["rate"] = float(rate)
    else:
        workload["connections"] = int(connections)
    if zipf_s is not None:
        workload["zipf_s"] = float(zipf_s)
    if spike:
        workload["spike"] = {"at_s": float(spike_at), "for_s": float(spike_for), "factor": float(spike_factor)}
    return workload, label


def _check(workload: dict) -> str | None:
    """What the page refuses before asking: a spike that would fall outside the run."""
    spike = workload.get("spike")
    if spike and spike["at_s"] >= workload["duration_s"]:
        return (f"The spike starts at {spike['at_s']:g} s but the run lasts {workload['duration_s']:g} s: "
                "move `Spike at` earlier or make the run longer.")
    return None


# --- the page --------------------------------------------------------------------------------
def render():
    client = _client()
    st.title("Load test")
    st.caption("Ask the stack controller for a measured run against the API through Caddy. The controller runs "
               "the load generator in its own process; this page only starts runs and reads them back, the same "
               "way `python manage.py loadtest` does. Every figure below is measured, none is simulated.")

    try:
        listing = client.list()
    except RunError as exc:
        st.error(f"The controller answered, but not with runs: {exc}")
        return
    except (requests.RequestException, ValueError) as exc:
        st.error(_unreachable(client, exc))
        if st.button("Try again"):
            st.rerun()
        return
    runs, current = listing["runs"], listing.get("current")

    st.subheader("New run")
    asked = _form()
    notices = st.container()
    fresh = []                      # this run's messages; kept across the rerun that ends a follow
    if asked:
        workload, label = asked
        problem = _check(workload)
        if problem:
            fresh.append(("error", problem))
        else:
            try:
                run_id = client.start(workload, label)
            except (RunError, requests.RequestException, ValueError) as exc:
                fresh.append(("error", _start_error(client, exc)))
                try:
                    current = client.list().get("current")   # a 409: follow the run that is going
                except (requests.RequestException, ValueError):
                    pass
            else:
                st.session_state["lt_active"] = {"id": run_id, "workload": workload}
    for kind, text in st.session_state.pop("lt_notices", []) + fresh:
        getattr(notices, kind)(text)
    progress_slot = st.empty()

    # Which run to follow: the one this page started, else one going on anyway (CLI, another tab).
    follow = st.session_state.get("lt_active")
    if not follow and current and current.get("status") == "running":
        follow = {"id": current["id"], "workload": current.get("workload") or {}}
        if not any(BUSY in text for _, text in fresh):
            notices.info(f"Run {current['id']} is going (started elsewhere"
                         + (f", label '{current['label']}'" if current.get("label") else "") + "); following it.")
    if follow:
        _progress(progress_slot, {"id": follow["id"], "workload": follow["workload"]})

    st.subheader("Saved runs")
    if not runs:
        st.info("No saved runs yet: start one above.")
    else:
        by_id = {r["id"]: r for r in runs}
        if st.session_state.get("lt_show_next") in by_id:
            st.session_state["lt_view"] = st.session_state.pop("lt_show_next")
        if st.session_state.get("lt_view") not in by_id:
            st.session_state["lt_view"] = runs[0]["id"]
        st.caption(f"{len(runs)} run(s) saved by the controller under its data directory (`results/`), newest first.")
        view = st.selectbox("Run to view", list(by_id), key="lt_view", format_func=lambda i: _run_label(by_id[i]))
        with st.container(border=True):
            try:
                render_result(_saved_result(client.cfg.controller_url, view, client))
            except (RunError, requests.RequestException, ValueError) as exc:
                st.error(f"Could not read run {view}: {_problem(client, exc)}")

        st.markdown("#### All saved runs")
        st.dataframe(_runs_table(runs), hide_index=True, width="stretch", height=min(36 + 35 * len(runs), 300),
                     column_config={
                         "achieved (ok/s)": st.column_config.NumberColumn(format="%.1f"),
                         "p95 (ms)": st.column_config.TextColumn(
                             help="From the intended send. Not shown for an invalid run: not the server's."),
                     })

        st.markdown("#### Compare two runs")
        if len(runs) < 2:
            st.caption("Two saved runs are needed for a comparison.")
        else:
            for key in ("lt_cmp_a", "lt_cmp_b"):
                if key in st.session_state and st.session_state[key] not in by_id:
                    del st.session_state[key]
            cols = st.columns(2)
            a_id = cols[0].selectbox("A (the baseline)", list(by_id), index=1, key="lt_cmp_a",
                                     format_func=lambda i: _run_label(by_id[i]))
            b_id = cols[1].selectbox("B", list(by_id), index=0, key="lt_cmp_b",
                                     format_func=lambda i: _run_label(by_id[i]))
            if a_id == b_id:
                st.info("Pick two different runs.")
            else:
                try:
                    a = _saved_result(client.cfg.controller_url, a_id, client)
                    b = _saved_result(client.cfg.controller_url, b_id, client)
                except (RunError, requests.RequestException, ValueError) as exc:
                    st.error(f"Could not read the runs: {_problem(client, exc)}")
                else:
                    render_compare(a, b)

    if follow:   # last, so the page above is drawn while the run goes
        _follow(client, follow["id"], follow["workload"], progress_slot, keep=fresh)
