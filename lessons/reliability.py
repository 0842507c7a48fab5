"""The reliability section of the Stack status page: chaos controls (the same controller API as
`manage.py chaos`), what is held down or slowed now, automatic failover, and the timeline of faults
and recoveries from the controller's event log."""
from __future__ import annotations

import streamlit as st

from lessons.widgets import metrics

# Controller events that tell the fault story (workbench/stack/chaos.py, failover.py, controller.py).
FAULT_EVENTS = ("chaos_", "died", "restarted", "failover", "primary_", "replica_promoted", "replica_out_of_rotation",
                "replica_back_in_rotation", "replica_rebuilt", "auto_failover")
ACTIONS = {"kill": "kill (SIGKILL; supervision restarts it)", "stop": "stop (SIGKILL and hold down)",
           "start": "start (release the hold)", "slow": "slow (add ms to each query; database nodes)"}

LESSON = """
**Restart or fail over?** A process that crashes on a healthy machine is back fastest by restarting
it: the supervisor does so within about two seconds, PostgreSQL replays its WAL and nothing
acknowledged is lost. A failover is for a primary that does not come back (`stop` here: the machine
is gone). The controller then *fences* the old primary (it may never run again as it was: held down,
SIGKILLed, its data directory moved aside) and promotes the replica that received the most WAL onto
the primary's address. Two primaries at once would accept conflicting writes: split brain.

**What a failover costs.** Writes fail (503 with Retry-After, never a hang) from the primary's death
until the promoted node answers: the grace period plus about a second of promotion. Reads go on from
the replicas. With asynchronous replication, commits the primary acknowledged but had not yet sent
are lost with it (the RPO); with synchronous replication (`remote_write`/`remote_apply`) every
acknowledged commit is on a replica first, so none is. `python manage.py faults all` measures both.

**Grace period.** Automatic failover waits `failover.grace_s` before acting. Too short, and a
primary that was merely restarting is replaced (a needless loss of its unsent WAL, and replicas to
rebuild); too long, and writes stay down longer than they had to.
"""


def render(client, state: dict, topo: dict, events: list[dict], events_table) -> None:
    st.subheader("Reliability: faults and failover")
    chaos = state.get("chaos") or {"held": [], "slow_ms": {}}
    failover = ((topo.get("topology") or {}).get("failover")) or {}
    metrics({"Held down": ", ".join(chaos["held"]) or "none",
             "Slowed": ", ".join(f"{k} +{v} ms" for k, v in chaos["slow_ms"].items()) or "none",
             "Automatic failover": (f"on, after {failover.get('grace_s')} s" if failover.get("auto") else "off")})
    with st.expander("Why restart, fence and fail over"):
        st.markdown(LESSON)

    roles = sorted(p["name"] for p in state["processes"] if p["name"] not in ("controller", "dashboard"))
    nodes = sorted(((state.get("data_nodes") or {}).get("nodes") or {}).keys())
    with st.form("chaos"):
        cols = st.columns([2, 3, 1])
        role = cols[0].selectbox("Process or database node", roles + [n for n in nodes if n not in roles],
                                 key="chaos_role")
        action = cols[1].selectbox("Action", list(ACTIONS), format_func=ACTIONS.get, key="chaos_action")
        ms = cols[2].number_input("ms (slow)", min_value=0, max_value=10_000, value=200, step=50, key="chaos_ms")
        go = st.form_submit_button("Inject")
    if go:
        _show(client.chaos(action, role, ms=ms if action == "slow" else None))
    if st.button("Fail over shard 1 now (fence the primary, promote its most advanced replica)"):
        with st.spinner("Failing over: fencing, promoting, restarting on the primary's port ..."):
            _show(client.chaos("failover"))

    timeline = [e for e in events if e.get("event", "").startswith(FAULT_EVENTS)]
    st.caption("Faults and recoveries, newest first (the controller's event log).")
    if timeline:
        st.dataframe(events_table(timeline[::-1][:30]), hide_index=True, use_container_width=True)
    else:
        st.caption("No fault or recovery since the stack started.")


def _show(answer: dict) -> None:
    if "error" in answer:
        where = f" ({answer['field']})" if answer.get("field") else ""
        st.error(f"Not done{where}: {answer['error']}")
    else:
        st.success("Done: " + ", ".join(f"{k}={v}" for k, v in answer.items() if k not in ("others",)))
