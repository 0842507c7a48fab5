"""Live metrics: the running stack refreshed every few seconds, from ONE request per refresh to the
controller's `GET /live` (workbench/stack/live.py), which gathers the app servers' Prometheus
metrics, Valkey, PostgreSQL, Caddy, the supervisor's CPU and memory per process and the events
since the page's cursor. Rates and latency percentiles are differences between two refreshes
(lessons/live.py says how); the page keeps a bounded history of them in st.session_state."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import requests
import streamlit as st

from lessons import live
from lessons.app_pages.stack_status import events_table
from lessons.client import ApiError, StackClient

UNREACHABLE = "The stack controller does not answer."
INTERVALS_S = (1, 2, 5, 10, 30)
# Each refresh costs the controller a scrape of every node plus the supervisor's CPU sampling of
# every process tree (a few hundred ms of its CPU on a loaded 2-core machine): every 5 s by default.
DEFAULT_INTERVAL_S = 5
HISTORY_POINTS = 360          # 30 minutes at the default interval
TIMELINE_KEPT = 200           # the controller keeps its last 200 events too
FETCH_TIMEOUT_S = 10          # the scrape inside is bounded by a few seconds (metrics.py)
DASH = "\u2014"
# session_state keys
INTERVAL, PAUSED = "live_interval", "live_paused"
LAST, HISTORY, CURSOR, EVENTS, PROBLEM = "live_last", "live_history", "live_cursor", "live_events", "live_problem"

HOW = """
**Where the figures come from.** Each refresh is one request, `GET /live` to the stack controller,
which scrapes every app server's `/metrics`, Valkey's INFO, PostgreSQL's `pg_stat_database` and
Caddy at once and adds the supervisor's view of every process. The page keeps the previous answer:
every rate is the difference of two answers' counters over the time between them, and a counter
that went down (an app server restarted) counts from zero.

**Latency percentiles** come from the app servers' request histograms (api/metrics.py: buckets
from 1 ms to 10 s, closer together at the fast end). The difference of two answers' cumulative bucket counts
is the histogram of the requests answered in between; p50, p95 and p99 are read from it by linear
interpolation inside the bucket holding the rank (as Prometheus's `histogram_quantile`). So they
are exact to the bucket's width, not to the request: a p95 of 7.5 ms means "between 5 and 10 ms,
about halfway". The time is the app server's own (from the gateway middleware to the response),
not what a client waits: Caddy and the network are not in it. The Load test page measures that.

**Shared CPU.** Every process here runs on the same few cores. 100% is one core busy; the
processes' figures add up to at most the number of cores times 100%, and a process that looks
idle may be waiting for a core another one holds. Per-node figures are shared-CPU figures, not
what the node would do on a machine of its own.
"""


# --- the one request ---------------------------------------------------------------------------
def fetch(client: StackClient, since: int) -> dict:
    """GET /live?since=N: everything one refresh shows. Raises ApiError saying what to do."""
    cfg = client.cfg
    url = f"{cfg.controller_url}/live"
    try:
        response = client.session.get(url, params={"since": since}, headers=cfg.operator_headers(),
                                      timeout=FETCH_TIMEOUT_S)
    except requests.RequestException as exc:
        raise ApiError(f"{UNREACHABLE} Tried `{url}` ({type(exc).__name__}) with the token in `{cfg.token_file}`. "
                       "Start the workbench with `python manage.py up`, or check that WORKBENCH_PORT_BASE and "
                       "WORKBENCH_DATA_DIR match the running stack.") from None
    if response.status_code == 401:
        raise ApiError(f"The stack controller refused the token (HTTP 401). Check `{cfg.token_file}` "
                       "(WORKBENCH_DATA_DIR must be the running stack's).", 401)
    if response.status_code == 404:
        raise ApiError(f"The stack controller at `{cfg.controller_url}` has no `/live` endpoint (HTTP 404): it was "
                       "started by an older version. Restart the stack: `python manage.py down`, then "
                       "`python manage.py up`.", 404)
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200 or "metrics" not in body:
        raise ApiError(f"The stack controller's `/live` answered HTTP {response.status_code}: "
                       f"{body.get('error') or response.text[:200]}. See the controller log in "
                       f"`{cfg.log_dir}`.", response.status_code, body.get("field"))
    return body


def refresh(client: StackClient | None = None) -> None:
    """One refresh: one request, then the new point appended to the bounded history."""
    state = st.session_state
    try:
        now = fetch(client or StackClient(), state.get(CURSOR, 0))
    except ApiError as exc:
        state[PROBLEM] = str(exc)
        return
    state[PROBLEM] = None
    events = now.pop("events")
    state[CURSOR] = now["cursor"]
    state[EVENTS] = (state.get(EVENTS, []) + live.timeline(events))[-TIMELINE_KEPT:]
    before = state.get(LAST)
    if before and now["at"] <= before["at"]:
        before = None
    point = live.sample(before, now)
    state[HISTORY] = (state.get(HISTORY, []) + [point])[-HISTORY_POINTS:]
    state[LAST] = now


def _clear() -> None:
    for key in (LAST, HISTORY, CURSOR, EVENTS, PROBLEM):
        st.session_state.pop(key, None)


# --- formatting ------------------------------------------------------------------------------
def _num(value, fmt: str = "{:,.1f}") -> str:
    return DASH if value is None else fmt.format(value)


def _pct(value) -> str:
    return DASH if value is None else f"{value:.1%}"


def _time(at: float):
    return pd.Timestamp(at, unit="s", tz="UTC")


def _chart(series: dict[str, tuple[list, list]], y_title: str, height: int = 260, percent: bool = False,
           empty: str = "Nothing to draw yet.") -> None:
    """Lines over time; a sentence instead of an empty frame when no series has a value."""
    series = {name: xy for name, xy in series.items() if xy[0]}
    if not series:
        st.caption(empty)
        return
    fig = go.Figure([go.Scatter(x=x, y=y, name=name, mode="lines+markers", marker={"size": 4})
                     for name, (x, y) in series.items()])
    fig.update_layout(height=height, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title=y_title,
                      legend={"orientation": "h", "y": -0.25}, xaxis_title=None)
    fig.update_xaxes(tickformat="%H:%M:%S")  # UTC; no date line under the ticks to collide with the legend
    if percent:  # a share: from 0 to a little above the highest value, at most 100%
        top = max(max(y) for _, y in series.values())
        fig.update_yaxes(tickformat=".0%", range=[0, min(1.0, max(0.05, top * 1.15))])
    else:
        fig.update_yaxes(rangemode="tozero")
    st.plotly_chart(fig, width="stretch", config={"displayModeBar": False})


def _series(points: list[dict], get) -> tuple[list, list]:
    """(times, values) of the points that have a value: None leaves a gap at the start only."""
    xs, ys = [], []
    for p in points:
        value = get(p)
        if value is not None:
            xs.append(_time(p["at"]))
            ys.append(value)
    return xs, ys


# --- the sections ----------------------------------------------------------------------------
def _traffic(now: dict, points: list[dict]) -> None:
    last = points[-1]
    rated = [p for p in points if p["interval_s"] is not None]
    st.subheader("Traffic")
    cols = st.columns(6)
    if last["interval_s"] is None:
        cols[0].metric("Requests/s", DASH)
        st.info("Rates and latency percentiles appear from the second refresh on: each is a difference "
                "between two refreshes.")
    else:
        cols[0].metric("Requests/s", _num(last["rps"]), help=f"Over the last {last['interval_s']:.2f} s.")
        cols[1].metric("Requests (last interval)", f"{last['requests']:,.0f}")
        for col, name in zip(cols[2:5], live.QUANTILES):
            col.metric(f"{name} latency", _num(last[f"{name}_ms"], "{:,.1f} ms"))
        cols[5].metric("Errors (5xx)", _pct(last["error_rate"]),
                       help=f"{last['5xx']:,.0f} of {last['requests']:,.0f}; 4xx (refused, limited): "
                            f"{_pct(last['client_error_rate'])}.")
    if len(rated) >= 2:
        left, right = st.columns(2)
        with left:
            st.markdown("**Requests per second**")
            series = {"all": _series(rated, lambda p: p["rps"])}
            for name in sorted({n for p in rated for n in p["servers"]}, key=lambda n: (len(n), n)):
                series[name] = _series(rated, lambda p, n=name: (p["servers"].get(n) or {}).get("rps"))
            _chart(series, "req/s")
        with right:
            st.markdown("**Latency in the app servers (from histogram deltas)**")
            _chart({name: _series(rated, lambda p, k=f"{name}_ms": p[k]) for name in live.QUANTILES}, "ms",
                   empty="No request was answered in the kept window: no latency to show.")
        st.markdown("**Error rate**")
        _chart({"5xx": _series(rated, lambda p: p["error_rate"]),
                "4xx": _series(rated, lambda p: p["client_error_rate"])}, "share of requests", 200, percent=True,
               empty="No request was answered in the kept window: no error rate to show.")


def _app_servers(now: dict, last: dict) -> None:
    st.subheader("Per app server")
    total = live.since_start(now)["requests"]
    procs = {p["name"]: p for p in now.get("processes") or []}
    up = now["metrics"]["up"]
    in_flight = now["metrics"]["in_flight"]
    names = sorted(set(total) | {n for n, p in procs.items() if p["role"] == "app"}, key=lambda n: (len(n), n))
    if not names:
        st.info("No app server answered the scrape.")
        return
    servers = last.get("servers") or {}
    rows = []
    for name in names:
        s = servers.get(name) or {}
        proc = procs.get(name) or {}
        rows.append({"app server": name, "scraped": "yes" if up.get(f"app/{name}") else "NO",
                     "req/s": _num(s.get("rps")), "requests (interval)": _num(s.get("requests"), "{:,.0f}"),
                     "requests (since start)": _num(total.get(name), "{:,.0f}"),
                     "5xx (interval)": _num(s.get("5xx"), "{:,.0f}"), "p95 (ms)": _num(s.get("p95_ms")),
                     "in flight (Caddy)": _num(in_flight.get(name), "{:,.0f}"),
                     "CPU % (shared)": _num(proc.get("cpu_percent")),
                     "RSS (MiB)": _num(proc["rss_bytes"] / 2**20 if proc.get("rss_bytes") else None)})
    st.table(pd.DataFrame(rows).set_index("app server"))
    st.caption("Requests as each app server's histogram counts them (health checks and scrapes excluded); "
               "since start: since that app server (re)started. In flight: Caddy's count now. CPU: the "
               "server's gunicorn master and workers, over the time since the previous refresh.")


def _caches(now: dict, points: list[dict]) -> None:
    st.subheader("Cache hit rate per layer")
    last = points[-1]
    start = live.since_start(now)["hit_rate"]
    names = {"l1": "L1 (per-process)", "valkey": "Valkey cache", "query": "query cache"}
    layers = sorted(start, key=lambda layer: (list(names).index(layer) if layer in names else len(names), layer))
    interval = last.get("cache") or {}
    rows = [{"layer": names.get(layer, layer),
             "hits (interval)": _num((interval.get(layer) or {}).get("hits"), "{:,.0f}"),
             "misses (interval)": _num((interval.get(layer) or {}).get("misses"), "{:,.0f}"),
             "hit rate (interval)": _pct((interval.get(layer) or {}).get("hit_rate")),
             "hit rate (since start)": _pct(start.get(layer))} for layer in layers]
    for node, info in sorted(now["metrics"]["valkey"].items()):
        if info.get("role") == "cache":
            hits, misses = info.get("keyspace_hits", 0.0), info.get("keyspace_misses", 0.0)
            rows.append({"layer": f"{node} (Valkey INFO keyspace)", "hits (interval)": DASH, "misses (interval)": DASH,
                         "hit rate (interval)": DASH,
                         "hit rate (since start)": _pct(hits / (hits + misses) if hits + misses else None)})
    if rows:
        st.table(pd.DataFrame(rows).set_index("layer"))
    st.caption("The app servers' counters per layer (api/caching/metrics.py); a layer that is off counts "
               "nothing. The Valkey row is the server's own keyspace count: every GET, not only the "
               "cache layer's.")
    rated = [p for p in points if p.get("cache")]
    if len(rated) >= 2:
        _chart({names.get(layer, layer): _series(rated, lambda p, k=layer: (p["cache"].get(k) or {}).get("hit_rate"))
                for layer in layers}, "hit rate", 220, percent=True,
               empty="No cache lookup in the kept window (a layer that is off counts none).")


def _data_tier(now: dict, points: list[dict]) -> None:
    st.subheader("Replica lag")
    replicas = live.replicas(now)
    if not replicas:
        st.info("No replica runs (the topology's `replicas` is 0): nothing can lag. Add one on the Stack "
                "status page or with `python manage.py topology set replicas=1`.")
    else:
        st.table(pd.DataFrame([{"replica": name, "shard": f"shard-{live.shard_of(name, node)}",
                                "lag (ms)": _num(node.get("lag_ms")),
                                "lag (WAL bytes)": _num(node.get("lag_bytes"), "{:,.0f}"),
                                "state": node.get("state") or DASH} for name, node in replicas.items()])
                 .set_index("replica"))
        if len(points) >= 2:
            _chart({name: _series(points, lambda p, n=name: p["lag_ms"].get(n)) for name in replicas},
                   "replay lag (ms)", 220)
        st.caption("Replay lag as the controller samples it (the data-node monitor), known to about one "
                   "sample interval.")
    st.subheader("Per shard")
    rows = live.shard_rows(now, points[-1])
    if rows:
        st.table(pd.DataFrame([{**r, "queries/s": _num(r["queries/s"]), "transactions/s": _num(r["transactions/s"]),
                                "connections": _num(r["connections"], "{:,}"), "users": _num(r["users"], "{:,}")}
                               for r in rows]).set_index("shard"))
    st.caption("Queries/s: sent by the app servers to the shard's nodes (their counters); transactions/s: "
               "committed and rolled back as PostgreSQL counts them (pg_stat_database, the controller's "
               "own monitoring included). Users: the primary's live-row estimate.")


def _processes(now: dict) -> None:
    st.subheader("CPU and memory per process")
    machine = now.get("machine") or {}
    procs = now.get("processes") or []
    cpu_total = sum(p.get("cpu_percent") or 0.0 for p in procs)
    cpus = machine.get("cpus") or 0
    st.table(pd.DataFrame([{"process": p["name"], "role": p["role"], "health": "healthy" if p["healthy"] else "DOWN",
                            "CPU % (shared)": _num(p.get("cpu_percent")),
                            "RSS (MiB)": _num(p["rss_bytes"] / 2**20 if p.get("pid") else None),
                            "restarts": p["restarts"]} for p in procs]).set_index("process"))
    st.caption(f"**Shared CPU**: all {len(procs)} processes run on the same {cpus} cores; 100% is one core "
               f"busy, so together they can reach {cpus * 100}% (now {cpu_total:.0f}%). Each figure is the "
               "process and its children (a gunicorn master with its workers, a postmaster with its "
               "backends; the controller alone) since the previous refresh. RSS counts shared pages once "
               "per process, so the sum overstates the memory in use "
               f"(the machine has {machine.get('memory_bytes', 0) / 2**30:.1f} GiB).")
    shown = [p for p in procs if p.get("pid")]
    if shown:
        fig = go.Figure(go.Bar(x=[p["name"] for p in shown], y=[p.get("cpu_percent") or 0.0 for p in shown],
                               name="CPU %"))
        fig.update_layout(height=240, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title="CPU % (shared)")
        st.plotly_chart(fig, width="stretch", config={"displayModeBar": False})


def _timeline(events: list[dict]) -> None:
    st.subheader("Autoscaler and chaos timeline")
    if not events:
        st.caption("No scaling, fault or load-test event since the stack started.")
        return
    kinds = sorted({e["event"] for e in events})
    fig = go.Figure(go.Scatter(
        x=[_time(e["ts"]) for e in events], y=[e["event"] for e in events], mode="markers",
        marker={"size": 10}, text=[", ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "event", "seq"))
                                   for e in events], hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>"))
    fig.update_layout(height=120 + 24 * len(kinds), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      yaxis={"categoryorder": "array", "categoryarray": kinds}, xaxis={"tickformat": "%H:%M:%S"})
    st.plotly_chart(fig, width="stretch", config={"displayModeBar": False})
    table = events_table([{k: v for k, v in e.items() if k != "seq"} for e in events[::-1][:30]])
    st.dataframe(table, hide_index=True, width="stretch", height="content")
    st.caption("The controller's events, newest first: the autoscaler's decisions, scale-outs and drains, "
               "chaos actions, crashes, restarts and failovers, and load-test runs.")


def _live(paused: bool, interval_s: float) -> None:
    """The refreshed part: one request (unless paused), then everything drawn from the answers."""
    if not paused or LAST not in st.session_state:
        refresh()
    problem = st.session_state.get(PROBLEM)
    now, points = st.session_state.get(LAST), st.session_state.get(HISTORY) or []
    if problem:
        st.error(problem)
        if now:
            st.warning(f"Showing the last answer, from {_time(now['at']).strftime('%H:%M:%S')} UTC.")
    if not now:
        return
    if now.get("error"):
        st.error(f"The controller reports an error: {now['error']}")
    elif now.get("phase") != "ready":
        st.warning(f"The stack is not ready yet (phase: {now.get('phase')}).")
    down = sorted(key for key, value in now["metrics"]["up"].items() if not value)
    if down:
        st.warning("Did not answer the scrape: " + ", ".join(f"`{d}`" for d in down))
    st.caption(f"Last refresh {_time(now['at']).strftime('%H:%M:%S')} UTC (the controller took "
               f"{now['took_s'] * 1000:.0f} ms); {len(points)} points kept (at most {HISTORY_POINTS}).")
    if not paused and now["took_s"] > interval_s:
        st.warning(f"The controller took {now['took_s']:.1f} s to answer, longer than the {interval_s:g} s between "
                   "refreshes: the page asks again as soon as it has drawn, and the polling itself loads the "
                   "machine. Choose a longer interval.")
    _traffic(now, points)
    _app_servers(now, points[-1])
    _caches(now, points)
    _data_tier(now, points)
    _processes(now)
    _timeline(st.session_state.get(EVENTS) or [])


def render():
    st.title("Live metrics")
    st.caption("Read live from the running stack: one request to the stack controller per refresh.")
    cols = st.columns([3, 1, 1])
    interval = cols[0].select_slider("Refresh every", INTERVALS_S, value=DEFAULT_INTERVAL_S, key=INTERVAL,
                                     format_func=lambda s: f"{s} s")
    paused = cols[1].toggle("Pause", key=PAUSED, help="Stop refreshing; the figures stay as they were.")
    if cols[2].button("Clear history"):
        _clear()
    with st.expander("How these figures are measured"):
        st.markdown(HOW)
    st.fragment(run_every=None if paused else interval)(_live)(paused, interval)
