"""The tracing section of the Stack status page: the latest sampled traces and one of them as a
waterfall, from GET /api/v1/admin/traces (api/tracing.py). Light on purpose: two small admin reads
per refresh, and a traced probe only when asked."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

LESSON = """
**A span** is one timed piece of work: a name, a start, a duration, a parent and attributes (here:
the gateway middleware, the view, each cache lookup, the router's choice of node, each database
query with its node, the JSON rendering). The spans of one request share a **trace id**; the
W3C `traceparent` header carries it across processes. Caddy forwards the client's, or makes one
from its request id, so a trace and the request's log lines (`manage.py logs --request-id`) meet.

**Why sample?** A span costs microseconds and storing a trace costs a round trip: fine for some
requests, not for every one at full load. **Head sampling** (used here) decides when the request
arrives: `observability.trace_sample_rate` of them, plus any that ask (`X-Workbench-Trace: 1`, or
a sampled `traceparent`). It is cheap, but blind: the one slow request may not be among those kept.
**Tail sampling** decides after the request ends (keep the slow ones and the errors), so every
request must be recorded first and a collector must buffer whole traces: better traces, more cost.

**The waterfall** puts each span on a time line from the request's start: what ran inside what,
what ran one after another, and where the milliseconds went. The metrics (Prometheus) tell you
*that* p99 grew; a trace of a slow request tells you *which layer* made it slow.
"""

COLORS = {"gateway": "#4c78a8", "view": "#72b7b2", "cache": "#f58518", "router": "#b279a2", "db": "#e45756",
          "render": "#54a24b"}


def _layer(name: str) -> str:
    return name.split(".")[0]


def _summary(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([{
        "when": pd.Timestamp(r["at"], unit="s", tz="UTC").strftime("%H:%M:%S.%f")[:-3],
        "request": f"{r['method']} {r['path']}", "status": r["status"], "app server": r["app_server"],
        "total (ms)": r["duration_ms"], "DB queries": r["db_queries"], "DB (ms)": r["db_ms"],
        "spans": r["spans"], "sampled by": r["sampled_by"], "trace id": r["trace_id"],
    } for r in rows])


def waterfall(spans: list[dict]) -> alt.Chart:
    """One bar per span from its start to its end (ms after the request's start), in start order,
    labelled with the span's name and duration."""
    rows = []
    for index, s in enumerate(spans):
        detail = s["attributes"].get("db.node") or ""
        rows.append({"order": index, "span": f"{index + 1:02d} {s['name']}" + (f" @{detail}" if detail else ""),
                     "layer": _layer(s["name"]), "start": s["start_ms"], "end": s["start_ms"] + s["duration_ms"],
                     "label": f"{s['duration_ms']:.2f} ms", "ms": s["duration_ms"]})
    data = pd.DataFrame(rows)
    y = alt.Y("span:N", sort=alt.SortField("order"), title=None)
    bars = alt.Chart(data).mark_bar().encode(
        x=alt.X("start:Q", title="ms since the request reached the app server"), x2="end:Q", y=y,
        color=alt.Color("layer:N", scale=alt.Scale(domain=list(COLORS), range=list(COLORS.values()))),
        tooltip=["span", "start", "ms"])
    labels = alt.Chart(data).mark_text(align="left", dx=3).encode(x="end:Q", y=y, text="label:N")
    return (bars + labels).properties(height=max(120, 22 * len(rows)))


def render(client) -> None:
    st.subheader("Tracing")
    with st.expander("Spans, sampling and the waterfall"):
        st.markdown(LESSON)
    if st.button("Trace one request now (GET /api/v1/users?limit=5)"):
        try:
            client.session.get(client.cfg.api_url + "/api/v1/users?limit=5", timeout=5,
                               headers={"X-Workbench-Trace": "1"})
        except Exception as exc:  # noqa: BLE001 - shown, not raised
            st.warning(f"The traced request failed: {exc}")
    listing = client._admin("traces", params={"limit": 20})
    if "error" in listing:
        st.warning(f"The admin traces API did not answer: {listing['error']}")
        return
    rows = listing.get("traces") or []
    st.caption(f"Sampling {listing['trace_sample_rate']:.2%} of requests (observability.trace_sample_rate), "
               f"plus those sent with `{listing['force_header']}`; the latest {listing['trace_store']} are kept.")
    if not rows:
        st.info("No trace stored yet: send a request with the button above.")
        return
    st.dataframe(_summary(rows), hide_index=True, width="stretch", height="content")
    labels = {f"{r['method']} {r['path']} \u2192 {r['status']}, {r['duration_ms']:.1f} ms ({r['trace_id'][:8]})":
              r["trace_id"] for r in rows}
    chosen = st.selectbox("Trace to show as a waterfall", list(labels), index=0)
    trace = client._admin(f"traces/{labels[chosen]}")
    if "error" in trace:
        st.warning(f"That trace is gone from the store: {trace['error']}")
        return
    # An explicit height: left to "content", Streamlit drew five spans in about 50 px and dropped
    # most of their labels.
    st.altair_chart(waterfall(trace["spans"]), width="stretch", height=80 + 28 * len(trace["spans"]))
    st.caption("Each bar is a span: from its start to its end, in ms after the request reached the app "
               "server (Caddy's time before it is not part of this trace). Nested bars ran inside the one "
               "above them; the label is the span's own duration.")
