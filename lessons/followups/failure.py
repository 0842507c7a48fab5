"""Follow-up: "How would you handle a database failure?" Live: under a short measured load, a
replica is SIGKILLed, then the primary (held down) and the most advanced replica is promoted. The
fault runs are workbench/loadgen/faults.py's own scenarios ("replica", "primary"), through the
controller's chaos API, each saved as a run with its ledger; the stack is put back afterwards."""
from __future__ import annotations

import dataclasses
import time

import pandas as pd
import streamlit as st

from lessons.followups import child
from lessons.widgets import metrics

KEY = "failure"
TITLE = "How would you handle a database failure?"
QUESTION = ("The database under your API fails at peak. What do users see, what is lost, and how does the "
            "system get back? Try it: under a measured load, a read replica is SIGKILLed, then the primary, "
            "and the most advanced replica is promoted in its place.")
ANSWER = """
**Separate the failures, and answer each with the cheapest cure.**

- **A read replica dies.** Reads must not notice: the router takes it out of rotation within one
  health sample and retries a failed read once on another node; supervision restarts it. Cost:
  capacity, not errors. (Step 1 measures this: failed reads should be 0.)
- **The primary crashes but the machine is fine.** Restart it: PostgreSQL replays its WAL and
  nothing committed is lost; writes fail for the restart's one or two seconds. A failover here
  would be slower and riskier than the restart.
- **The primary is gone** (machine, disk, zone). **Fail over**: after a grace period that rules out
  a restart, *fence* the old primary (it must never accept writes again: no split brain), promote
  the replica that received the most WAL, and move the stable address (a floating IP, DNS name,
  or here the primary's port) to it. Rebuild a replica in its place. (Step 2.)

**What the client sees during the window.** Reads continue from the replicas. Writes get a fast
`503` with `Retry-After`, never a hang: a connection to a node known to be down is refused at once
rather than after a pool timeout. Clients retry with backoff and jitter, and writes carry an
idempotency key (here: an identical sign-up retry resumes it), so a retry never doubles a write.
Queue writes that can wait (write-behind, an outbox) if the product allows it.

**What is lost: the RPO.** With asynchronous replication, commits the primary acknowledged but had
not yet shipped die with it. Synchronous replication (`remote_write` / `remote_apply`, to any one of
several replicas so one slow replica does not stop writes) makes the loss zero at the price of a
replica round trip on every commit. Prove it with a ledger: record every acknowledged write and
look for each one afterwards, as the experiment does. Backups with WAL archiving cover the case
where every copy is lost (point-in-time recovery).

**How long: the RTO** is detection + grace + promotion + clients finding the new primary. Keep
the grace short enough for the write SLO and long enough not to replace a primary that was only
restarting. Every failed request is charged to the error budget: at 99.99% a few seconds of
refused writes at peak can spend a month's budget, so failovers must be rare and rehearsed.

**Say what stays a single point of failure** (here `meta`: accounts, the directory) and how you
would replicate it, and run the drills: kill things on purpose, in production, on a schedule.
"""

STEPS = ("replica", "primary")
STEP_TITLES = {"replica": "Step 1: SIGKILL a read replica", "primary": "Step 2: SIGKILL the primary, then fail over"}
DEFAULTS = {"rate": 40, "duration_s": 10, "fault_at_s": 3, "replication": "async", "add_replicas": False}
REPLICATION = {"async": "async (ack before a replica has it)",
               "remote_apply": "remote_apply (a replica first)"}


def render() -> None:
    """The controls and the last experiment's results; nothing touches the stack until the button."""
    st.markdown("**The experiment.** Two fault runs under an open-loop load (80% reads of users and their posts, "
                "20% post creations by their owners), each saved as a run:\n"
                "1. replica-1 gets a real SIGKILL; supervision restarts it.\n"
                "2. the primary gets a SIGKILL and is held down (its machine is gone); after a 2 s grace the "
                "controller fences it and promotes the replica that received the most WAL.\n\n"
                "Afterwards every post the API acknowledged is looked for on the database: the ones missing are "
                "writes lost. It needs two read replicas and turns automatic failover on; the topology and any "
                "held process are put back as they were when it ends.")
    cols = st.columns(4)
    rate = cols[0].number_input("Rate (req/s)", 5, 200, DEFAULTS["rate"], 5, key="fu_failure_rate")
    duration = cols[1].number_input("Each run (s)", 3, 60, DEFAULTS["duration_s"], 1, key="fu_failure_duration")
    fault_at = cols[2].number_input("Fault at (s)", 1, 30, DEFAULTS["fault_at_s"], 1, key="fu_failure_fault_at")
    replication = cols[3].selectbox("Replication", list(REPLICATION), format_func=REPLICATION.get,
                                    key="fu_failure_replication")
    add = st.checkbox("Add two read replicas for the experiment if the stack has fewer (takes a few seconds; "
                      "removed again afterwards)", value=True, key="fu_failure_add_replicas")
    start = st.button("Run the failure experiment", key="fu_failure_run", type="primary")
    if start and fault_at >= duration:
        st.error(f"The fault ({fault_at} s) must come before the end of the run ({duration} s): lower "
                 "**Fault at** or lengthen **Each run**.")
        start = False
    options = {"rate": rate, "duration_s": duration, "fault_at_s": fault_at, "replication": replication,
               "add_replicas": add}
    child.page(KEY, start, options, 2 * duration + 420, draw)


def draw(messages: list[dict], running: bool = False) -> None:
    """The experiment as its messages tell it: what it found, each step's saved run and figures, what
    it put back, and any failure in words."""
    before = next((m["before"] for m in messages if "before" in m), None)
    if before:
        st.caption(f"Found: {before['replicas']} replica(s), {before['replication']} replication, automatic "
                   f"failover {'on' if (before.get('failover') or {}).get('auto') else 'off'}, held: "
                   f"{', '.join(before['held']) or 'nothing'}.")
    for name in STEPS:
        step = [m for m in messages if m.get("step") == name]
        if not step:
            continue
        st.markdown(f"#### {STEP_TITLES[name]}")
        done = next((m for m in step if m.get("state") == "done"), None)
        if done:
            _step(done)
        elif running:
            _progress(step)
    for m in messages:
        if "error" in m:
            st.error(m["error"])
    restored = next((m["restored"] for m in messages if "restored" in m), None)
    if restored:
        text = (f"Put back: the topology as found ({restored['replicas']} replica(s), {restored['replication']} "
                f"replication), held: {', '.join(restored['held']) or 'nothing'}.")
        (st.success if restored["same"] else st.warning)(
            text if restored["same"] else text + " It differs from what was found: " + restored["differs"])
    elif running and any("restoring" in m for m in messages):
        st.info("Putting the topology back as it was (replicas retired or rebuilt, failover setting) ...")


def _progress(step: list[dict]) -> None:
    started = next(m for m in step if m.get("state") == "running")
    st.caption(f"{started['what']}. Target: {started['target']}.")
    p = next((m["progress"] for m in reversed(step) if "progress" in m), None)
    child.load_progress(p, "Applying the scenario's topology and loading keys ...",
                        p and ("; fault injected" if p["fault_ts"] else "; fault not yet injected"))


def _step(done: dict) -> None:
    st.caption(f"{done['what']}. Target: {done['target']}.")
    result = child.saved_run(done["run_id"])
    if result is None:
        return
    f = result["fault"]
    window = "none" if f["first_failure_s"] is None else f"{f['outage_s']:.2f} s"
    span = "" if f["first_failure_s"] is None else (
        f"Outage window: first to last failure, {f['first_failure_s'] - f['fault_s']:+.2f} s to "
        f"{f['last_failure_s'] - f['fault_s']:+.2f} s from the fault. ")
    metrics({"Failed reads": f"{f['failed_reads']:,}", "Failed writes": f"{f['failed_writes']:,}",
             "Writes lost": f"{f['writes_lost']:,} of {f['acknowledged_writes']:,}",
             "Availability": f"{f['availability']:.2%}"})
    recovered = f["recovered"][0]
    if f["recovery_s"] is not None:
        recovery = f"{f['recovery_s']:.2f} s"
    elif done.get("recovery_s") is not None:
        recovery = f"{done['recovery_s']:.2f} s (after the run)"
    else:
        recovery = "not seen"
    metrics({"Errors by kind": child.error_kinds(f), "Outage window": window, "Recovered after": recovery,
             "99.99% budget burned": f"{f['budget_burned']:,.1f}\u00d7"})
    st.caption(span + "Writes lost: posts the API acknowledged with 201 that no primary holds afterwards (the "
               "ledger). Availability: successful requests of all sent. Recovered after: from the chaos event to "
               f"the controller's `{recovered}` event (the step's timeline, below, goes on after the run until "
               "the nodes are healthy again). Measured on this machine, shared CPU.")
    if done.get("probe"):
        _probe(done["probe"])
    child.per_second(result)
    with st.expander("The controller's timeline of this run"):
        st.code("\n".join(done.get("timeline") or ["(no event)"]), language=None)


def _probe(probe: dict) -> None:
    rows = []
    for kind in ("write", "read"):
        p = probe.get(kind)
        if p:
            rows.append({"request": p["request"], "status": p["status"], "Retry-After": p.get("retry_after") or "",
                         "Content-Type": p.get("content_type") or "", "answered by": p.get("db_node") or "",
                         "detail": p.get("detail") or "", "ms": p["ms"]})
    st.markdown(f"One write and one read sent {probe['after_s']:.1f} s after the SIGKILL, while the primary "
                "was down:")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


# --- the experiment, in its own process (python -m lessons.followups.failure) ----------------------
def experiment(cfg, options: dict, emit) -> None:
    from lessons.client import StackClient
    from workbench.loadgen import faults, runs
    from workbench.loadgen.client import TopologyClient
    from workbench.stack import launcher

    topo = TopologyClient(cfg)
    before = topo.settled()["topology"]
    held = set(status(cfg)["chaos"]["held"])
    emit({"before": {"replicas": before["replicas"], "replication": before["replication"],
                     "failover": before.get("failover"), "held": sorted(held)}})
    if before["replicas"] < 2 and not options.get("add_replicas"):
        emit({"error": f"The stack has {before['replicas']} read replica(s) and the experiment needs two: tick "
                       "**Add two read replicas** (they are removed afterwards), or set `replicas=2` on the "
                       "Stack status page."})
        return
    try:
        for name in STEPS:
            scenario = faults.SCENARIOS[name]
            head = {"step": name, "what": scenario.what, "target": scenario.target}
            emit({**head, "state": "running"})
            probe = {}
            if name == "primary":
                users, _ = runs.load_keys(cfg, sample=10)
                token = runs.load_tokens(cfg, users)[str(users[0])]
            else:
                users = token = None

            def progress(p, name=name, probe=probe, users=users, token=token):
                emit({"step": name, "progress": p})
                if users and p["fault_ts"] and not probe:
                    probe["sent"] = True
                    probe.update(probe_write_and_read(cfg, users[0], token, p["fault_ts"]))

            since = time.time()
            o = faults.run(cfg, scenario, rate=options["rate"], duration_s=options["duration_s"],
                           fault_at_s=options["fault_at_s"], replication=options["replication"],
                           label=f"follow-up: {scenario.what}", on_progress=progress)
            probe.pop("sent", None)
            if (probe.get("write") or {}).get("status") == 201:  # acknowledged: the ledger must find it too
                probe["write"]["lost"] = bool(faults.verify_ledger(cfg, [probe["write"]["location"]]))
            _wait_healthy(cfg, ("primary", "replica-1") if name == "replica" else ("primary",))
            # The step's whole story: a failover can end after a short run (then the run misses it).
            step = dataclasses.replace(o, events=[e for e in StackClient(cfg).events() if e["ts"] >= since])
            emit({**head, "state": "done", "run_id": o.run_id, "timeline": faults.timeline(step), "probe": probe,
                  "recovery_s": step.recovery_s})
    finally:
        emit({"restoring": True})
        try:
            restore(cfg, topo, launcher, before, held, emit)
        except Exception as exc:  # noqa: BLE001 - said on the page; the first failure, if any, follows it
            emit({"error": f"Putting the stack back failed ({type(exc).__name__}: {exc}). Put it back by hand: "
                           "`python manage.py chaos status`, `chaos start <held>`, and the replicas and failover "
                           f"settings on the Stack status page (found: {before['replicas']} replica(s), failover "
                           f"{before.get('failover')})."})


def probe_write_and_read(cfg, user: int, token: str, fault_ts: float) -> dict:
    """One post creation (as its owner) and one read of the user while the fault holds: what a client sees."""
    out = {"after_s": round(time.time() - fault_ts, 2)}
    out["write"] = child.call(cfg, "POST", f"/api/v1/users/{user}/posts",
                              {"title": "follow-up probe", "body": "sent while the primary is down"}, token)
    out["read"] = child.call(cfg, "GET", f"/api/v1/users/{user}")
    for r in out.values():
        if isinstance(r, dict):
            body = r.pop("body", None)
            r["detail"] = body.get("detail", "") if isinstance(body, dict) and r["status"] != 200 else ""
    return out


def status(cfg, timeout: float = 60) -> dict:
    """The controller's status; on a busy machine one answer can take longer than launcher's 5 s."""
    from workbench.stack import launcher
    deadline = time.monotonic() + timeout
    while True:
        answer = launcher.status(cfg)
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise RuntimeError(f"the stack controller did not answer within {timeout:.0f} s")
        time.sleep(0.5)


def _wait_healthy(cfg, nodes: tuple, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = (status(cfg).get("data_nodes") or {}).get("nodes") or {}
        if all(report.get(n, {}).get("healthy") for n in nodes):
            return
        time.sleep(0.25)
    raise RuntimeError(f"{', '.join(nodes)} not healthy again within {timeout:.0f} s")


def restore(cfg, topo, launcher, before: dict, held: set, emit) -> None:
    """Release what the experiment held, put the topology document back as found, and wait until the
    controller has carried it out and the primary answers."""
    for name in sorted(set(status(cfg)["chaos"]["held"]) - held):
        launcher.chaos(cfg, "start", name)
    topo.apply(before, replace=True, timeout=300)
    _wait_healthy(cfg, ("primary",))
    after = topo.settled()["topology"]
    now_held = status(cfg)["chaos"]["held"]
    differs = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    emit({"restored": {"same": not differs and set(now_held) == held, "replicas": after["replicas"],
                       "replication": after["replication"], "held": now_held,
                       "differs": ", ".join(differs) or f"held {now_held}"}})


if __name__ == "__main__":
    raise SystemExit(child.main(experiment))
