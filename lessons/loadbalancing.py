"""The load-balancing section of the Stack status page: the policy Caddy runs, each app server's
share of the traffic and its state, and the scaling decisions on a timeline. Numbers come from the
controller's status: Caddy's upstream stats (requests in flight now, failures counted against each
server) and the requests each app server answered, counted by the servers themselves (api/served.py)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons.widgets import metrics

# Controller events that tell the scaling story (workbench/stack/controller.py, autoscale.py).
SCALING_EVENTS = ("autoscale", "scaled", "draining", "drained", "died", "restarted")

LESSON = """
**Caddy is the one entry point.** Every client, the dashboard and every benchmark reach the app
servers through it: plain HTTP at `api_url`, and HTTPS at `https_url`, where Caddy terminates TLS
with a certificate from its own internal CA (the root is in the data directory; trust it, or pass it
to your client). Behind Caddy the hop to the app servers is plain HTTP on loopback: TLS termination
means the edge pays for the handshakes and the encryption, once, and the servers behind it do not.

**The policies.** *Round-robin* gives each server the next request in turn, whatever the requests
cost. *Least connections* gives it to the server with the fewest requests in flight, so a server
stuck on slow requests (a search over every shard, a 100-row page) gets fewer new ones: it wins on
p95 when fast and slow requests mix. *Hashing* on a header (here the user id in `X-User-Id`) or on
the URI sends every request for the same key to the same server, which only matters when a server
keeps state: here the per-process L1 cache, whose hit rate rises when each user has one home.

**Rendezvous vs the ring.** Caddy's hash policies are rendezvous hashing (highest random weight):
each server gets a score hash(key, server) and the highest wins. Adding a server moves only the
keys the new server now wins, about 1/(N+1) of them, with no ring and no virtual nodes. The
sharding lesson's consistent hashing uses a ring of virtual nodes instead: it answers the same
question (move few keys when the set changes) and keeps a lookup of O(log V) when the set is large;
rendezvous costs O(N) per request, nothing for a handful of app servers.

**Health checks.** Caddy probes every server slot's `/healthz` each second (active checks). A
server that dies, or answers its check with 503, leaves the rotation within the interval; a request
whose connection attempt is refused meanwhile is tried on another server. There are no passive
checks (marking a server down after a failed request): in this Caddy a client's broken upload
counts against the server it was bound for, so a few bad clients could empty the rotation. Nothing
in Caddy is reloaded to add or remove a server: a reload closes idle keep-alive connections, and a
request racing that close is lost.

**Stateless servers.** No session lives in an app server: the token carries the identity, the
cursor carries the position, and shared state sits in PostgreSQL and Valkey. So a server can be
killed, drained or added at any time, and a client's next request simply lands elsewhere.

**Draining.** Scaling down first makes the server fail its health check, waits until Caddy has
taken it out of the rotation and its requests in flight have finished, and only then stops it
with SIGTERM: no client sees the server go.
"""


def server_rows(state: dict) -> list[dict]:
    """One row per app server that runs or that Caddy still counts: its health as the controller
    sees it, Caddy's requests in flight and failures, and the requests it answered since the start."""
    procs = {p["name"]: p for p in state.get("processes", []) if p.get("role") == "app"}
    upstreams = {u["app_server"]: u for u in state.get("upstreams") or []}
    served = state.get("served") or {}
    names = sorted(set(procs) | set(upstreams), key=lambda n: (len(n), n))
    total = sum(served.get(n, 0) for n in names) or 1
    rows = []
    for name in names:
        proc, upstream = procs.get(name, {}), upstreams.get(name, {})
        health = "healthy" if proc.get("healthy") else ("stopped" if not proc else "DOWN")
        if upstream.get("healthy") is False and proc.get("healthy"):
            health = "out of rotation"
        rows.append({"app server": name, "state": health, "port": proc.get("port"),
                     "in flight (Caddy)": upstream.get("in_flight", 0), "fails (Caddy)": upstream.get("fails", 0),
                     "requests answered": served.get(name, 0),
                     "share": f"{served.get(name, 0) / total:.0%}"})
    return rows


def scaling_events(events: list[dict]) -> list[dict]:
    """The controller's scaling story, newest first: autoscaler decisions, scale-outs and drains,
    and app servers that died and were restarted."""
    return [e for e in events if e.get("event") in SCALING_EVENTS
            and (e.get("event") not in ("died", "restarted") or str(e.get("name", "")).startswith("app-"))][::-1]


def render(state: dict, topo: dict, events: list[dict], events_table) -> None:
    """`events_table` renders event rows as the page's own event log does."""
    st.subheader("Load balancing")
    running = ((state.get("data_nodes") or {}).get("running") or {})
    wanted = topo.get("topology", {}) if "error" not in topo else {}
    autoscale = wanted.get("autoscale") or {}
    metrics({"Policy (Caddy runs)": running.get("lb_policy") or "\u2014",
             "App servers": running.get("app_servers", "\u2014"),
             "Autoscaler": f"on, {autoscale.get('min')} to {autoscale.get('max')}" if autoscale.get("enabled") else "off",
             "HTTPS": "on" if state.get("https_url") else "\u2014"})
    rows = server_rows(state)
    if rows:
        st.table(pd.DataFrame(rows).set_index("app server"))
    st.caption("In flight and fails: Caddy's upstream stats now (GET /reverse_proxy/upstreams on its admin "
               "API). Requests answered: counted by each app server since the stack started, health probes "
               "excluded.")
    timeline = scaling_events(events)
    if timeline:
        st.markdown("**Scaling timeline**")
        st.dataframe(events_table(timeline[:20]), hide_index=True, width="stretch", height="content")
    with st.expander("How the load balancer works"):
        st.markdown(LESSON)
