"""The Design page: the architecture drawn from the live topology, with each component's live
figures, and every component switched from here. Changes go through the admin topology API (the
controller carries out what needs processes, followed here with progress); the shard count changes
only by an online reshard (`manage.py reshard`, which the controller runs: lessons/reshard.py),
followed through the admin shards API. The gateway's placement is explained as a trade-off against what the diagram shows."""
from __future__ import annotations

import dataclasses
import re
import time

import requests
import streamlit as st

from lessons import design_diagram, reshard
from lessons.client import ApiError, StackClient
from workbench import topology
from workbench.loadgen.client import TopologyClient
from workbench.stack import launcher

APPLY_TIMEOUT_S = 300     # a cache cluster or replicas on every shard take about a minute here
RESHARD_TIMEOUT_S = 900   # the demo dataset reshards in well under a minute; bigger data takes longer
POLL_S = 0.5
DASH = "\u2014"

# The toggles, section by section: (dotted topology field, label). Widgets, choices and bounds come
# from the schema in workbench/topology.py.
SECTIONS = {
    "Load balancer and app servers": [
        ("app_servers", "App servers"), ("lb_policy", "LB policy (Caddy)"),
        ("lb_header", "Header the `header` policy hashes")],
    "Gateway (in each app server)": [
        ("auth.anonymous_reads", "Anonymous reads"), ("rate_limit.enabled", "Rate limiting"),
        ("rate_limit.on_error", "Limiter when the state Valkey is down"), ("shedding.enabled", "Load shedding"),
        ("shedding.queue_budget_ms", "Shedding queue budget (ms)")],
    "Caches": [
        ("cache.mode", "Application cache mode"), ("cache.invalidation", "Invalidation"),
        ("cache.l1", "L1 LRU in each app server"), ("cache.query_cache", "Query cache"),
        ("cache_nodes", "Cache Valkey nodes (3 or 6: a cluster)")],
    "Databases and read model": [
        ("replicas", "Replicas per shard"), ("replication", "Replication"), ("read_policy", "Replica read policy"),
        ("pgbouncer", "PgBouncer"), ("read_model", "Read model (NoSQL documents)")],
}
FIELDS = [name for fields in SECTIONS.values() for name, _ in fields]

GATEWAY = """
**Where the gateway sits here.** On the diagram every app server box has a *gateway* row: auth,
rate limit and shedding run as Django middleware inside the same process as the views, before a
view runs. There is no gateway box between Caddy and the app servers. The other common design puts
a gateway tier of its own there (Kong, Envoy, a cloud API gateway, or Caddy itself with plugins).
Each choice costs something:

- **Hops and latency.** In-process, reaching the gateway costs a function call, not a network hop:
  the request goes client, Caddy, app server. The gateway's own network trip is the rate-limit
  script in `valkey-state` (one round trip, when rate limiting is on). *Server-Timing* on every
  response gives the gateway's share (measured below). A separate tier adds a hop, plus a proxy's
  parse and connection handling, to every request, including the ones it then refuses.
- **Scaling on its own.** Here the gateway scales with the app servers, since each copy you add
  (`app_servers`) brings one. Its CPU is part of each app server's CPU figure on the diagram and
  cannot be given more machines by itself. A separate tier is sized for its own load. That matters
  when most requests are refused (a flood), or when verifying tokens costs more than the views.
- **A shared limiter.** N gateways must agree on one budget per client, or each would allow the
  full rate and a client would get N times its limit. Here the token buckets live in the
  `valkey-state` node, which every app server reaches (the "topology, buckets" arrow), in one
  atomic script per request. A separate gateway tier needs the same shared store as soon as it
  has more than one instance. Only a single gateway can keep its counts in memory, and then it is
  a single point of failure.
- **Failure isolation.** Here a flood that the limiter refuses has already reached an app server
  and taken a worker for the gateway's check: refusing is cheap, but it is not free, and a bug in
  the gateway code fails the app server with it. Shedding (`shedding.queue_budget_ms`) answers 503
  to requests that queued too long, but only once a worker picks them up. A separate tier keeps
  refused traffic off the app servers entirely and can be upgraded or restarted on its own. The
  price is one more component that must itself be redundant and healthy.

For this workbench in-process is the right size: one process type to scale, no extra hop, and the
shared state (buckets, topology) already sits in a store built for it. A separate tier pays off
when many services sit behind one edge, or when refused traffic alone would need more servers.
"""


# --- the schema ---------------------------------------------------------------------------------
def field_meta(dotted: str) -> dict:
    """The schema's metadata of a topology field (kind, choices, bounds), by its dotted name."""
    cls, meta = topology.Topology, {}
    for part in dotted.split("."):
        meta = {f.name: f for f in dataclasses.fields(cls)}[part].metadata
        cls = meta.get("cls", cls)
    return meta


def get(doc: dict, dotted: str):
    value = doc
    for part in dotted.split("."):
        value = value[part]
    return value


def nest(dotted: str, value) -> dict:
    """`cache.mode`, "off" -> {"cache": {"mode": "off"}}: a PATCH body for one field."""
    for part in reversed(dotted.split(".")):
        value = {part: value}
    return value


def changes(current: dict, wanted: dict) -> dict:
    """A PATCH body with only the fields whose wanted value differs from the current topology."""
    patch: dict = {}
    for dotted, value in wanted.items():
        if get(current, dotted) != value:
            patch = topology.merge(patch, nest(dotted, value))
    return patch


def refusal(response: requests.Response) -> str:
    """A 400 problem from the topology API, in words, naming each field at fault."""
    try:
        problem = response.json()
    except ValueError:
        return f"The topology API refused the change (HTTP {response.status_code}): {response.text[:300]}"
    errors = problem.get("errors") or [{"field": problem.get("field"), "detail": problem.get("detail")}]
    said = "; ".join(f"field `{e.get('field')}`: {e.get('detail')}" for e in errors)
    return f"The topology API refused the change (HTTP {response.status_code}). {said}. Nothing was changed."


def pending_words(pending: list[dict]) -> str:
    return ", ".join(f"`{p['field']}` {p.get('running')} \u2192 {p.get('wanted')}" for p in pending)


# --- applying a change, with progress -----------------------------------------------------------
def apply(cfg, patch: dict, slot) -> tuple[bool, str]:
    """PATCH the topology, then follow the controller until what runs matches it (TopologyClient's
    `apply`, with the controller's progress shown in `slot` while it works). Returns (ok, message)."""
    tc = TopologyClient(cfg)
    try:
        response = tc.send("PATCH", patch)
    except requests.RequestException as exc:
        return False, (f"The admin topology API did not answer at `{tc.url}` ({type(exc).__name__}). Check the stack "
                       "with `python manage.py status`.")
    if response.status_code == 400:
        return False, refusal(response)
    if response.status_code != 200:
        return False, f"The topology API answered HTTP {response.status_code}: {response.text[:300]}"
    version = response.json()["data"]["version"]
    deadline, first = time.monotonic() + APPLY_TIMEOUT_S, None
    while True:
        try:
            data = tc.data()
        except (requests.RequestException, ValueError, KeyError, RuntimeError) as exc:
            return False, f"Saved as version {version}, but its progress could not be read: {exc}"
        waiting = topology.still_applying(data["pending"])
        if not waiting:
            slot.empty()
            return True, f"Applied: topology version {version} runs."
        first = first or len(waiting)
        if time.monotonic() > deadline:
            return False, (f"Saved as version {version}; the controller has not finished after {APPLY_TIMEOUT_S} s: "
                           f"still {pending_words(waiting)} ({data.get('progress') or 'no progress reported'}). "
                           "It keeps working; see `python manage.py status`.")
        done = (first - len(waiting)) / first
        slot.progress(done, text=f"Version {version}: the controller is applying {pending_words(waiting)}. "
                                 f"{data.get('progress') or ''}")
        time.sleep(POLL_S)


# --- resharding ---------------------------------------------------------------------------------
def _resharded(follow) -> bool:
    """Follow a reshard to its end (lessons/reshard.py) and say how it went. True when it finished."""
    try:
        job = follow(st.empty())
    except ApiError as exc:
        st.error(str(exc))
        return False
    st.success(f"Resharded. {reshard.line(job)}.")
    return True


def _reshard_section(cfg, client: StackClient, topo: dict) -> bool:
    """The shard count and strategy. Returns True when a reshard finished here (redraw)."""
    st.subheader("Shards: reshard online")
    data = client.shards()
    job = (data.get("last_reshard") if "error" not in data else None) or {}
    going = reshard.running(client)   # the controller runs one (started here, by another browser, or Scale)
    busy = topo.get("reshard_shards") or job.get("state") in reshard.UNDER_WAY
    if busy and not going:
        st.info(f"A reshard is under way: reshard #{job.get('id', DASH)} ({job.get('state', DASH)}), "
                f"{job.get('users_moved', 0):,} users moved so far in {job.get('batches', 0)} batches, toward "
                f"{topo.get('reshard_shards') or DASH} shards. If no process is running it, finish it with "
                "`python manage.py reshard --resume` (or `--rollback`).")
        st.button("Refresh", key="design_reshard_refresh")
        return False
    st.caption("`shards` and `sharding` change only by moving the rows, so they are not in the form above: "
               "the reshard moves users in batches while the API keeps serving, and the diagram shows the old "
               "and the new shards while it runs. The shards' nodes count against the cap of "
               f"{topology.MAX_DB_NODES} PostgreSQL data nodes: (replicas + 1) x shards.")
    cols = st.columns([1, 1, 1])
    shard_meta, strategy_meta = field_meta("shards"), field_meta("sharding")
    to = cols[0].number_input("Shards", min_value=shard_meta["low"], max_value=shard_meta["high"],
                              value=int(topo["shards"]), step=1, key="design_shards")
    strategies = list(strategy_meta["choices"])
    strategy = cols[1].selectbox("Strategy", strategies, index=strategies.index(topo["sharding"]),
                                 key="design_strategy")
    cols[2].write("")
    if not cols[2].button("Reshard online", key="design_reshard"):
        return going and _resharded(lambda slot: reshard.follow(client, slot, None, RESHARD_TIMEOUT_S))
    if (int(to), strategy) == (topo["shards"], topo["sharding"]):
        st.info(f"The data is already on {to} shard(s) by {strategy}: nothing to move.")
        return False
    cap = topology.node_cap_error(topo["replicas"], max(topo["shards"], int(to)))
    if cap:
        st.error(f"Refused before starting, field `shards`: {cap}. Lower `replicas` first.")
        return False
    return _resharded(lambda slot: reshard.run(client, int(to), strategy, slot, RESHARD_TIMEOUT_S))


# --- the form -----------------------------------------------------------------------------------
def _widget(dotted: str, label: str, col):
    meta, key = field_meta(dotted), f"design_{dotted}"
    kind = meta["kind"]
    if kind == "bool":
        return col.toggle(label, key=key)
    if kind == "choice":
        return col.selectbox(label, list(meta["choices"]), key=key)
    if kind == "int":
        return col.number_input(label, min_value=meta["low"], max_value=meta["high"], step=1, key=key)
    return col.text_input(label, key=key, help=meta.get("hint"))


def _sync_widgets(topo: dict, version) -> bool:
    """Show the live topology in the form whenever its version changed since it was last shown
    (a change made here, by the autoscaler, the CLI or another browser). Returns True if it did."""
    if st.session_state.get("design_version") == version:
        return False
    for dotted in FIELDS:
        st.session_state[f"design_{dotted}"] = get(topo, dotted)
    st.session_state["design_version"] = version
    return True


def _form(cfg, doc: dict) -> bool:
    """The toggles. Returns True when a change was applied (the diagram is drawn afterwards)."""
    topo = doc["topology"]
    st.subheader("Switch the components")
    refreshed = _sync_widgets(topo, doc["version"])
    if topo["autoscale"]["enabled"]:
        st.info(f"The autoscaler is on ({topo['autoscale']['min']} to {topo['autoscale']['max']} servers): it "
                "rewrites `app_servers` on its own, so a count set here holds only until its next decision.")
    with st.form("design_form", border=True):
        for col, (section, fields) in zip(st.columns(len(SECTIONS)), SECTIONS.items()):
            col.markdown(f"**{section}**")
            for dotted, label in fields:
                _widget(dotted, label, col)
        submitted = st.form_submit_button("Apply", type="primary", key="design_apply")
    if not submitted:
        return False
    if refreshed:
        st.warning(f"The topology changed (now version {doc['version']}) before this form was sent: the form shows "
                   "what runs now. Make the change again and apply.")
        return False
    patch = changes(topo, {dotted: st.session_state[f"design_{dotted}"] for dotted in FIELDS})
    if not patch:
        st.info("Nothing to change: the form matches the live topology.")
        return False
    ok, message = apply(cfg, patch, st.empty())
    (st.success if ok else st.error)(message)
    return ok


# --- the diagram --------------------------------------------------------------------------------
def server_timing(client: StackClient) -> dict | None:
    """One request through Caddy, and the per-layer costs its Server-Timing header reports."""
    try:
        response = client.session.get(client.cfg.api_url + "/api/v1/users?limit=1", timeout=5)
    except requests.RequestException:
        return None
    costs = {}
    for part in response.headers.get("Server-Timing", "").split(","):
        m = re.match(r"\s*([\w-]+);dur=([\d.]+)", part)
        if m:
            costs[m.group(1)] = float(m.group(2))
    return {"costs": costs, "app_server": response.headers.get("X-App-Server"), "status": response.status_code}


def _diagram(client: StackClient, doc: dict) -> str:
    # Once more with the launcher's longer timeout: a controller on a busy machine can miss 3 s.
    status = client.status() or launcher.status(client.cfg)
    dot = design_diagram.build(doc, status, client.cache(), client.readmodel(), client.ratelimit())
    st.graphviz_chart(dot, width="stretch")
    if status is None:
        st.warning(f"The stack controller does not answer at `{client.cfg.controller_url}/status`: the diagram "
                   "shows the topology without live figures (dashes). Check it with `python manage.py status`.")
    st.caption(f"Topology version {doc.get('version')}. Filled boxes are switched on; grey dashed ones are off. "
               "CPU and RSS come from the stack controller: CPU is the share of one core since its previous "
               "status call, and every process shares this machine's 2 cores, so these are shared-CPU figures, "
               "not what each component would use on a machine of its own. In flight: Caddy's count now; "
               "answered: requests each app server counted since the stack started; replay lag from the "
               "controller's node report; a cache layer's hit ratio from the app servers' counters, all servers "
               "added up (admin cache API); a cache node's INFO hit ratio from Valkey's own INFO.")
    pending = topology.still_applying(doc.get("pending") or [])
    if pending:
        st.info(f"Still being applied by the controller: {pending_words(pending)}. {doc.get('progress') or ''}")
    return dot


def render():
    client = StackClient()
    cfg = client.cfg
    st.title("Design")
    st.caption("The architecture as it runs now, drawn from the live topology, with each component's live "
               "figures. Switch a component below: the diagram is redrawn once the controller has carried the "
               "change out.")
    doc = client.topology()
    if "error" in doc:
        st.error(f"The admin topology API did not answer at `{cfg.api_url}/api/v1/admin/topology`: {doc['error']}. "
                 "Start the workbench with `python manage.py up`, or check that WORKBENCH_PORT_BASE and "
                 "WORKBENCH_DATA_DIR match the running stack.")
        st.button("Try again", key="design_retry")
        return
    diagram = st.container()
    controls = st.container()
    with controls:
        changed = _form(cfg, doc)
        changed = _reshard_section(cfg, client, doc["topology"]) or changed
    if changed:
        fresh = client.topology()
        doc = fresh if "error" not in fresh else doc
        # The form already shows what was applied: its next send is not "changed meanwhile". (Its
        # widgets exist in this run, so they cannot be set now; a difference is synced next run.)
        if all(st.session_state.get(f"design_{d}") == get(doc["topology"], d) for d in FIELDS):
            st.session_state["design_version"] = doc["version"]
    with diagram:
        st.session_state["design_dot"] = _diagram(client, doc)
        if st.button("Refresh the figures", key="design_refresh"):
            st.rerun()
    with controls:
        st.subheader("Where the gateway sits")
        st.markdown(GATEWAY)
        timing = server_timing(client)
        if timing and {"gateway", "app"} <= timing["costs"].keys():
            c = timing["costs"]
            st.caption(f"Measured now, one request (`GET /api/v1/users?limit=1`, answered by {timing['app_server']}, "
                       f"HTTP {timing['status']}): gateway {c['gateway']:.2f} ms of {c['app']:.2f} ms in the app "
                       f"server" + (f", after {c['queue']:.2f} ms queued" if "queue" in c else "")
                       + ", from its Server-Timing header. One sample on a shared machine; the Load test page "
                       "measures distributions.")
        else:
            st.caption("The probe request for the gateway's Server-Timing did not answer; the Stack status page "
                       "shows why.")
