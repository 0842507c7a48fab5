"""The first page: what runs, whether it is healthy, and one live request through the stack."""
import pandas as pd
import streamlit as st

from lessons import (caching, data_nodes, debugging, loadbalancing, ratelimit, readmodel, reliability, sharding,
                     tracing)
from lessons.client import StackClient
from workbench import parameters

UNREACHABLE = "The stack controller does not answer."
RECENT_EVENTS = 15


def _process_table(procs: list[dict]):
    """One row per process, indexed by name. Rendered with st.table (plain HTML), so every value is
    in the page itself: readable by assistive tools, copyable, and checkable by a browser test."""
    table = pd.DataFrame([{
        "name": p["name"], "role": p["role"], "health": "healthy" if p["healthy"] else "DOWN",
        "pid": p["pid"] or None, "port": p["port"] or None, "uptime (s)": round(p["uptime_s"]),
        # 100% = one core busy, since the previous status call, children included (a gunicorn
        # master with its workers); None (a dash) when not running.
        "CPU (%)": p.get("cpu_percent"), "RSS (MiB)": p["rss_bytes"] / 2**20, "restarts": p["restarts"],
    } for p in procs]).set_index("name")
    # A process without a port (port 0: a worker) or without a pid (not running) shows a dash.
    table = table.astype({"pid": "Int64", "port": "Int64", "CPU (%)": "Float64"})
    return (table.style.format({"RSS (MiB)": "{:.1f}", "CPU (%)": "{:.1f}"}, na_rep="\u2014")
            .format(subset=["pid", "port"], na_rep="\u2014")
            .map(lambda v: "color: #d62728; font-weight: bold" if v == "DOWN" else "", subset=["health"]))


def _readiness(body: dict) -> None:
    """GET /readyz through Caddy: 200 {"status": "ready", "checks": ...}, a 503 problem naming what
    fails, or {"status": "unreachable"} from the client when no answer came back."""
    checks = body.get("checks") or {}
    if body.get("status") == "ready":
        st.success(f"Ready: all {len(checks)} dependencies answer.")
    elif body.get("status") == "unreachable":
        st.error(f"/readyz did not answer: {body.get('detail')}")
    else:
        st.error(f"Not ready: {body.get('detail') or body}")
    if checks:
        table = pd.DataFrame([{
            "dependency": name, "ok": "yes" if check.get("ok") else "NO",
            "answered in": f"{check['ms']:.1f} ms" if "ms" in check else "\u2014",
            "error": check.get("error") or "",
        } for name, check in checks.items()]).set_index("dependency")
        st.table(table if table["error"].any() else table.drop(columns="error"))


def _clock(ts: float) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%H:%M:%S.%f")[:-3] + " UTC"


def _data_nodes(report: dict | None, topo: dict) -> None:
    """The controller's last sample of the data nodes, what runs, and what the topology still wants."""
    st.subheader("Data nodes")
    if not report:
        st.info("The controller has not reported on the data nodes yet.")
    else:
        running = report.get("running") or {}
        cols = st.columns(2)
        cols[0].metric("Replicas running", data_nodes.running_value(running.get("replicas")))
        cols[1].metric("Replication", data_nodes.running_value(running.get("replication")))
        interval_s = parameters.lag()["sample_interval_s"]
        lag_label = f"replay lag (ms, {interval_s * 1000:g} ms resolution)"
        rows = data_nodes.node_rows(report, lag_label)
        if rows:
            st.table(pd.DataFrame(rows).set_index("node"))
        st.caption(f"Sampled by the controller at {_clock(report['at'])}. Replay lag is sampled every "
                   f"{interval_s:g} s (`[lag]` in workbench/parameters.toml), so it is known to about "
                   f"{interval_s * 1000:g} ms: a lag shorter than one sample shows as 0. WAL bytes: what the "
                   "replica had still to replay. Apply delay: set on purpose by the topology (a stale or "
                   "remote replica). Connections: client connections to the workbench database. Queries: "
                   "answered since the stack started, as counted by the app servers.")
    st.markdown("**Pending topology changes**")
    if "error" in topo:
        st.warning(f"The admin topology API did not answer: {topo['error']}")
        progress = (report or {}).get("progress")
    else:
        pending = data_nodes.pending_rows(topo.get("pending"))
        if pending:
            st.table(pd.DataFrame(pending).set_index("field"))
        else:
            st.caption(f"None: what runs matches topology version {topo.get('version')}.")
        progress = topo.get("progress")
    st.caption(f"Controller: {progress}" if progress else "Controller: no topology work in progress.")


def events_table(events: list[dict]) -> pd.DataFrame:
    """The controller's event log: a time, the event, and whatever fields that event carries."""
    rows = []
    for event in events:
        fields = {k: v for k, v in event.items() if k not in ("ts", "event") and v is not None}
        rows.append({"time": _clock(event["ts"]) if "ts" in event else "", "event": event.get("event", ""),
                     "details": ", ".join(f"{k}={v}" for k, v in fields.items())})
    return pd.DataFrame(rows, columns=["time", "event", "details"])


def render():
    client = StackClient()
    st.title("Stack status")
    st.caption("Every figure on this page is read live from the running stack: process data from the "
               "stack controller, the request from a real call through Caddy.")
    state = client.status()
    if not state:
        st.error(f"{UNREACHABLE} Tried `{client.cfg.controller_url}/status` with the token in "
                 f"`{client.cfg.token_file}`. Start the workbench with `python manage.py up`, or check "
                 "that WORKBENCH_PORT_BASE and WORKBENCH_DATA_DIR match the running stack.")
        if st.button("Try again"):
            st.rerun()
        return

    procs = state["processes"]
    healthy = sum(bool(p["healthy"]) for p in procs)
    if state.get("error"):
        st.error(f"The controller reports an error: {state['error']}")
    elif state["phase"] != "ready":
        st.warning(f"The stack is not ready yet (phase: {state['phase']}).")
    down = [p["name"] for p in procs if not p["healthy"]]
    if down:
        st.warning("Not healthy: " + ", ".join(f"`{name}`" for name in down))

    cols = st.columns(4)
    cols[0].metric("Processes healthy", f"{healthy} / {len(procs)}")
    cols[1].metric("Phase", state["phase"])
    probe = client.probe()
    cols[2].metric("GET /api/v1/users (measured now)", f"{probe['ms']:.1f} ms" if probe["ok"] else "failed")
    cols[3].metric("Answered by", probe.get("app_server") or "\u2014")
    if not probe["ok"]:
        st.error("The probe request through Caddy failed: "
                 + (f"HTTP {probe['status']}" if "status" in probe else probe.get("error", "unknown error")))

    st.subheader("Processes")
    st.table(_process_table(procs))
    topo = client.topology()
    events = client.events()
    loadbalancing.render(state, topo, events, events_table)
    _data_nodes(state.get("data_nodes"), topo)
    reliability.render(client, state, topo, events, events_table)  # chaos controls, failover, the fault timeline
    sharding.render(client.shards())
    caching.render(client.cache())
    readmodel.render(client.readmodel())
    ratelimit.render(client.ratelimit())
    debugging.render(client)  # errors grouped by fingerprint, on-demand profiles
    tracing.render(client)  # the latest sampled traces, one as a waterfall

    st.subheader("Entry points")
    st.markdown(f"- API (through Caddy): `{state['api_url']}`  \n"
                + (f"- API over HTTPS (Caddy's internal CA): `{state['https_url']}`  \n" if state.get("https_url") else "")
                + f"- App servers, direct: {', '.join(f'`{u}`' for u in state['direct_urls'])}  \n"
                f"- API docs: [{state['api_url']}/api/docs]({state['api_url']}/api/docs)")

    st.subheader("Readiness of the API's dependencies")
    _readiness(client.readiness())

    if events:
        st.subheader("Controller events")
        st.caption(f"The {min(len(events), RECENT_EVENTS)} most recent of {len(events)}, newest first.")
        st.dataframe(events_table(events[-RECENT_EVENTS:][::-1]), hide_index=True, width="stretch",
                     height="content")
    if st.button("Refresh"):
        st.rerun()
