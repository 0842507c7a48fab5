"""Follow-up 7, multi-region: one replica moved to another region (emulated: a round trip added to
every query it answers, and its replay delayed by the one-way trip), measured against the same
workload with every node local; then the capacity model's three-region table (modelled). Nothing
runs until a button is pressed: every follow-up tab renders on every rerun of the page."""
from __future__ import annotations

import pandas as pd
import requests
import streamlit as st

from lessons import measured
from lessons.app_pages import scale
from lessons.client import ApiError
from workbench.loadgen.client import TopologyError

KEY = "regions"
TITLE = "How would you implement multi-region deployment?"
QUESTION = ("Users now come from three continents. How do you serve them from several regions: where do reads and "
            "writes go, what does a far region cost in latency, and what is lost when a whole region goes down?")
ANSWER = """
**Route users to their nearest region, keep one home for each piece of data, and replicate the rest.**

- **Routing**: latency-based DNS or anycast sends each user to the nearest healthy region. Each region
  has the whole stateless tier (load balancers, gateway, app servers, cache), sized to carry its own
  share *plus* a failed region's: with R regions, R / (R - 1) headroom.
- **Reads stay local**: each region holds read replicas of every shard (and its own cache). A read
  pays no cross-region round trip, but it may be behind by the replication lag: about one way of the
  inter-region trip plus the replica's apply time. Read-your-writes needs routing a user's reads to
  their home region for a moment after a write (or a version check).
- **Writes go home**: each user (and, with the user, their posts) has a home region, where its shard's
  primary lives. A write from elsewhere crosses once. Single-homing per user avoids write conflicts
  without multi-primary conflict resolution.
- **Replication mode is the RPO trade-off**: async commits at once and loses the last ~one-way-trip of
  writes if a region dies (RPO > 0); synchronous to another region (`remote_write` / `remote_apply`
  here) loses nothing (RPO 0) but adds a full round trip to every commit.
- **Global invariants** (unique usernames and emails) need one writer or a consensus store spanning the
  regions; here that is `meta`, a single point of failure the design calls out.
- **Failover (RTO)**: health checks notice the region (tens of seconds), DNS moves the users (its
  TTL), a replica in a surviving region is promoted for each shard whose primary was there.
- **Cache invalidation** crosses regions too: a write publishes the invalidation to every region's
  cache, and a lagging replica must not refill a cache with old data (the `max_lag_ms` guard).
- **Cost**: every region is a full fleet, and cross-region replication is billed egress.

What the experiment shows: a read served across regions pays the whole round trip (65 ms here) on top
of its own time, so reads must stay in the user's region; the model's table shows what geo-routing
and each replication mode do to p95, RPO and RTO.
"""
RUNS = "fu_regions_runs"
MODEL = "fu_regions_model"
ARMS = ("every node local", "one replica in another region")


def _experiment(rate: int, duration: int, box) -> dict:
    """Two runs, all local then one replica far away; the topology restored to what it found.
    Returns {arm: run id} and what was done. Raises ApiError."""
    slot = box.empty()
    try:
        found = scale.topology_client().data()["topology"]
    except (TopologyError, requests.RequestException, ValueError) as exc:
        raise ApiError(f"The live topology could not be read ({exc}). Start the workbench with `python manage.py "
                       "up`.") from None
    replicas, remote = found["replicas"], found["emulation"]["remote_replica"]
    far = max(replicas, 1)
    workload = {"mode": "open", "rate": float(rate), "duration_s": float(duration), "popularity": "zipf"}
    ids, steps = {}, []
    try:
        if replicas == 0:
            took = scale.apply({"replicas": 1}, slot, "Adding a replica for the experiment")
            steps.append(f"Added replica-1 for the experiment in {took:.1f} s (removed afterwards).")
            box.write(steps[-1])
        for arm, where in zip(ARMS, (0, far)):
            took = scale.apply({"emulation": {"remote_replica": where}}, slot, f"Placing the replicas: {arm}")
            steps.append(f"{arm.capitalize()} in {took:.1f} s.")
            box.write(steps[-1])
            ids[arm] = measured.measure({**workload, "seed": len(ids) + 1}, f"follow-up regions: {arm}", slot)["id"]
            steps.append(f"Run {ids[arm]} saved.")
            box.write(steps[-1])
    finally:
        took = scale.apply({"replicas": replicas, "emulation": {"remote_replica": remote}}, slot,
                           "Putting the topology back")
        steps.append(f"Topology put back as found ({replicas} replica(s), remote replica {remote or 'none'}) in "
                     f"{took:.1f} s.")
        slot.empty()
    return {"ids": ids, "steps": steps, "far": far}


def _show_runs(done: dict) -> None:
    try:
        runs = {arm: measured.saved(run_id) for arm, run_id in done["ids"].items()}
    except ApiError as exc:
        st.error(str(exc))
        return
    scale.side_by_side(runs)
    far = runs.get(ARMS[1])
    if far:
        nodes = far["summary"].get("attribution", {}).get("X-DB-Node") or {}
        name = f"replica-{done['far']}"
        total = sum(nodes.values())
        st.caption(f"In the second run {name} (in another region, {far['topology']['emulation']['region_rtt_ms']:g} ms "
                   f"round trip) answered {nodes.get(name, 0):,} of {total:,} requests"
                   + (f" ({nodes.get(name, 0) / total:.0%})" if total else "") + ". Reads go to the replicas in turn, with "
                   "no geo-routing, so each read it answered paid the round trip; the rest were writes (the primary), "
                   "other replicas' or the cache's. Measured here, shared CPU; the distance is emulated, and each run "
                   "says so.")
    for arm, result in runs.items():
        measured.run_card(result, arm)
    with st.expander("What the experiment did"):
        st.markdown("\n".join(f"1. {s}" for s in done["steps"]))


def render() -> None:
    st.markdown("**Live**: the same workload twice, first with every node local, then with one read replica "
                "placed in another region (an emulated 65 ms round trip on each query it answers, and its replay "
                "delayed by the one-way trip; workbench/parameters.toml). The topology is put back as found.")
    cols = st.columns([1, 1, 2], vertical_alignment="bottom")
    rate = cols[0].number_input("Rate (req/s)", 1, 500, 50, step=10, key="fu_regions_rate")
    duration = cols[1].number_input("Duration of each run (s)", 1, 30, 3, key="fu_regions_duration")
    if cols[2].button("Run the experiment", key="fu_regions_run", icon=":material/public:"):
        box = st.status("Multi-region: measuring", expanded=True)
        try:
            st.session_state[RUNS] = _experiment(rate, duration, box)
        except ApiError as exc:
            box.update(label="Multi-region: stopped", state="error", expanded=False)
            st.error(f"The experiment stopped: {exc}")
        else:
            box.update(label="Multi-region: done", state="complete", expanded=False)
    if st.session_state.get(RUNS):
        _show_runs(st.session_state[RUNS])

    st.markdown(f"**At the seed's scale ({scale.MODELLED})**: three regions, users spread evenly.")
    if st.button("Model three regions", key="fu_regions_model_button", icon=":material/calculate:"):
        rows, source = scale.model()
        st.session_state[MODEL] = {"rows": rows["regions"], "source": source}
    if st.session_state.get(MODEL):
        model = st.session_state[MODEL]
        st.dataframe(pd.DataFrame(model["rows"]), hide_index=True, key="fu_regions_model_table")
        st.caption(f"Every figure in this table is {scale.MODELLED} (workbench/capacity/regions.py, {model['source']} "
                   "costs): user-seen latency in ms with and without geo-routing for each replication mode, the lag "
                   "and RPO in ms, the RTO in s. Assumptions: workbench/parameters.toml [capacity].")
