"""Follow-up: a 10x traffic spike, measured twice on the live stack: the same spike workload (the load
generator's `spike`: the rate x10 for a while) with nothing to protect the stack, then with load
shedding (api/gateway/shedding.py) and a per-client rate limit (api/gateway/ratelimit.py) on. The
topology is recorded before and put back afterwards (lessons/tradeoffs.py), and the page says so."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from lessons import measured, tradeoffs
from lessons.app_pages.load_test import run_chart
from lessons.client import ApiError
from workbench.loadgen import spike as spike_suite
from workbench.stack import config

KEY = "spike"
TITLE = "What happens during a 10x traffic spike?"
QUESTION = ("Traffic jumps to ten times normal for a few seconds: a launch, a news link, a client stuck "
            "retrying. What do users see, and what would you put in place so that most of them still get a "
            "fast answer?")

FACTOR = 10                 # the seed's "10x spikes"
AT_S = 2                    # at most this much normal traffic before the spike (s)
MIN_AROUND_S = 2            # normal traffic around the spike, before plus after, at least (s)
RULE = "spike-per-client"   # the experiment's rate-limit rule, only on the spike's endpoint
ENDPOINT = "GET /api/v1/users/{user_id}"
WORKLOAD = spike_suite.WORKLOAD   # GET /users/{id} only: bench_topology's spike suite's workload
CASES = ("without", "with")
TITLES = {"without": "Without protection", "with": "With shedding + rate limit"}
STATE = "fu_spike_result"

ANSWER = """
**First, what happens without protection** (the left run above). Requests arrive faster than the
workers serve them, so they queue: in the socket's backlog, in gunicorn's queue, for a free thread.
Every request waits behind all the others, so latency climbs for as long as the spike lasts, and
clients that give up (the timeouts) leave behind work the servers still do: capacity spent on
answers nobody reads, while the live requests behind them wait longer still. The damage outlasts
the spike: the backlog has to drain before normal traffic is fast again.

**Protect the servers: shed load early.** Admission control on *queue time* (here
`shedding.queue_budget_ms`): a request that already waited longer than the budget is answered
`503` with `Retry-After` at once, before any database or cache work. The requests that are admitted
keep a normal latency (compare the admitted p95s); some clients get a fast "not now" instead of
every client getting a slow, useless answer. Shed by priority if you can: health checks and the
operator's endpoints never (they are exempt here), anonymous or batch traffic first.

**Keep one client from taking everything: rate limits.** A token bucket per client (IP, user, API
key) turns a runaway client or a retry storm into fast `429`s with `Retry-After`, cheaply, at the
gateway. The experiment's spike comes from the same clients each sending 10x (a retry storm), the
case a per-client limit is for. A spike of ten times more *distinct* users passes every per-client
limit: that is what shedding, a global limit and more capacity are for. And here the
limiter runs inside the app servers, after the queue: a refused request has already waited for a
worker. An edge limiter (the load balancer, an API gateway tier, a CDN) drops it before it costs
the servers anything.

**Make the clients behave.** Retries with exponential backoff and jitter, honouring `Retry-After`,
and a retry budget or circuit breaker in the client; otherwise every timeout becomes two requests
and the spike feeds itself.

**Add capacity, knowing it is slow.** Stateless app servers can be added by an autoscaler, but it
reacts in seconds to minutes while a spike arrives in one: keep headroom (plan for the peak, not
the average: the seed's 10M req/s is a peak), pre-scale for known events, and let shedding hold the
line meanwhile. Serve what you can from caches and the edge (hot keys, static assets), move writes
to a queue (write-behind) so the database sees a smooth rate, and degrade gracefully: switch off
expensive features (search, recommendations) before the core reads suffer.

**Measure it.** Watch queue time, shed and 429 counts and p99 per endpoint; a spike test (this one,
at your real scale) belongs in the release checklist.
"""


# --- the experiment -----------------------------------------------------------------------------------
def workload(o: dict) -> dict:
    """The spike run both cases send: `o` holds rate, length_s, for_s, clients, timeout_s. The spike
    starts on a whole second (the timeseries' buckets) after about a third of the normal traffic, at
    least 1 s and at most AT_S, so most of it shows the recovery."""
    at = float(max(1, min(AT_S, (o["length_s"] - o["for_s"]) // 3)))
    return {**WORKLOAD, "mode": "open", "rate": float(o["rate"]), "duration_s": float(o["length_s"]),
            "timeout_s": float(o["timeout_s"]), "source_ips": int(o["clients"]),
            "spike": {"at_s": at, "for_s": float(o["for_s"]), "factor": float(FACTOR)}}


def rule(o: dict) -> dict:
    """The per-client bucket of the protected case: `limit` x each client's normal rate, a burst of
    one second of it."""
    refill = round(o["rate"] / o["clients"] * o["limit"], 2)
    return {"name": RULE, "per": ["ip"], "endpoints": [ENDPOINT], "capacity": max(1, math.ceil(refill)),
            "refill_per_s": refill}


def patches(o: dict, rules_before: list[dict]) -> dict:
    """Each case's topology change; the other rate-limit rules stay as they were."""
    rules = [r for r in rules_before if r["name"] != RULE] + [rule(o)]
    return {"without": {"shedding": {"enabled": False}, "rate_limit": {"enabled": False}},
            "with": {"shedding": {"enabled": True}, "rate_limit": {"enabled": True, "rules": rules}}}


def experiment(o: dict, slot, out: dict) -> None:
    """Both runs, in turn, each under its case's topology; the topology is put back whatever happens.
    Fills `out` as it goes ({"runs": {case: id}, "notes": [...]}) so a failure keeps what was done."""
    health = config.load().api_url + "/healthz"
    with tradeoffs.changed_topology(out["notes"]) as topo:
        todo = patches(o, tradeoffs.read_topology(topo)["rate_limit"]["rules"])
        for case in CASES:
            slot.info(f"{TITLES[case]}: applying the topology...")
            tradeoffs.apply(todo[case], topo)
            result = measured.measure(workload(o), f"follow-up spike: {case} protection", slot)
            out["runs"][case] = result["id"]
            # The backlog a spike leaves must drain before the next change (it would queue behind it).
            spike_suite.drained(health, lambda text: slot.info(f"{TITLES[case]}: {text.strip()}"))
        slot.info("Putting the topology back as it was...")
    slot.empty()


# --- what the runs measured ---------------------------------------------------------------------------
def error_kinds(result: dict) -> dict:
    """The run's errors by kind, as saved: refused by the limiter, shed, timed out, anything else."""
    s = result["summary"]
    errors = dict(s["errors"])
    shed = s.get("attribution", {}).get("X-Shed", {}).get("queue-time", 0)
    limited = errors.pop("429", 0)
    unavailable = errors.pop("503", 0)
    timeouts = errors.pop("timeout", 0)
    return {"429 rate-limited": limited, "503 shed (X-Shed)": shed, "503 other": unavailable - shed,
            "timeouts (client gave up)": timeouts, "other errors": sum(errors.values()),
            "dropped (no answer by the hard stop)": s["dropped"]}


def errors_after_spike(result: dict) -> int:
    """Errors of the requests meant to leave after the spike ended (the backlog it left behind)."""
    spike = result["workload"]["spike"]
    end = spike["at_s"] + spike["for_s"]
    return sum(sum(r["errors"].values()) for r in result["timeseries"] if r["t"] >= end)


def protection(result: dict) -> str:
    """What protected the run, read from the topology saved with it (not from the page's intent)."""
    t = result.get("topology", {})
    shed, rl = t.get("shedding") or {}, t.get("rate_limit") or {}
    parts = [f"shedding on (queue budget {shed.get('queue_budget_ms')} ms)" if shed.get("enabled") else "shedding off"]
    mine = next((r for r in rl.get("rules", []) if r["name"] == RULE), None)
    if rl.get("enabled") and mine:
        parts.append(f"rate limit on: `{RULE}` {mine['refill_per_s']:g} req/s per client, burst {mine['capacity']}")
    else:
        parts.append("rate limit " + ("on (no per-client rule for the spike)" if rl.get("enabled") else "off"))
    return f"topology v{t.get('version')}: " + ", ".join(parts)


def comparison(results: dict) -> pd.DataFrame:
    rows = {}
    for case, result in results.items():
        f, s = measured.figures(result), result["summary"]
        admitted = (s.get("admitted_latency") or {}).get("p95_ms") if f["valid"] else None
        rows[TITLES[case]] = {"run": f["run"], "valid": "VALID" if f["valid"] else "INVALID",
                              "p95, every answer": measured.ms(f["p95_ms"]), "p99, every answer": measured.ms(f["p99_ms"]),
                              "p95, successes only": measured.ms(admitted), "ok/s": f"{f['ok/s']:,.1f}",
                              "sent": f"{f['sent']:,}",
                              **{kind: f"{n:,}" for kind, n in error_kinds(result).items()}}
    table = pd.DataFrame(rows)
    table.index.name = "measured"
    return table


def throughput(results: dict):
    """Answers per second over both runs, on one time axis, the spike shaded."""
    first = results[CASES[0]]
    frame = pd.DataFrame({"second": [r["t"] for r in first["timeseries"]],
                          "sent": [r["sent"] for r in first["timeseries"]]})
    for case, result in results.items():
        ts = pd.DataFrame([{"second": r["t"], f"{case}: ok": r["ok"], f"{case}: errors": sum(r["errors"].values())}
                           for r in result["timeseries"]])
        frame = frame.merge(ts, on="second", how="outer")
    colors = {"sent": "#7f7f7f", "without: ok": "#1f77b4", "without: errors": "#d62728",
              "with: ok": "#2ca02c", "with: errors": "#ff7f0e"}
    return run_chart(frame.sort_values("second"), "requests per second", first["workload"], colors, dashed=("sent",))


def show(done: dict) -> None:
    results = {}
    for case, run_id in done["runs"].items():
        try:
            results[case] = measured.saved(run_id)
        except ApiError as exc:
            st.error(str(exc))
    if results:
        cols = st.columns(len(results))
        for col, (case, result) in zip(cols, results.items()):
            with col:
                measured.run_card(result, TITLES[case])
                st.caption(protection(result))
        st.markdown("**Side by side**, as saved: latency from the intended send (open model), errors by kind")
        st.table(comparison(results))
        if len(results) == len(CASES):
            st.markdown("**Throughput around the spike** (shaded), per second of intended send")
            st.altair_chart(throughput(results), width="stretch")
            after = {case: errors_after_spike(result) for case, result in results.items()}
            st.caption("Errors are counted in the second their request was meant to leave. After the spike ended, "
                       + " and ".join(f"{n:,} errors {TITLES[case].lower()}" for case, n in after.items())
                       + ": a queue's backlog outlasts the spike as timeouts, while shed and refused requests are "
                       "answered at once. Shared-CPU figures: the generator and the whole stack share this "
                       "machine's cores, with whatever else runs on it.")
    for note in done["notes"]:
        (st.success if note.startswith("Topology restored") else st.warning)(note)


def _form() -> dict | None:
    with st.form("fu_spike_form", border=True, enter_to_submit=False):
        cols = st.columns(3)
        rate = cols[0].number_input("Normal rate (req/s)", 1, 200, 20, key="fu_spike_rate",
                                    help=f"The spike sends {FACTOR}x this for its length.")
        for_s = cols[1].number_input("Spike length (s)", 1, 20, 3, key="fu_spike_for")
        length = cols[2].number_input("Run length (s)", 3, 40, 9, key="fu_spike_length",
                                      help=f"Each run; the spike starts after about a third of the normal traffic "
                                           f"(1 to {AT_S} s), the rest shows the recovery.")
        cols = st.columns(3)
        clients = cols[0].number_input("Clients", 1, 100, 10, key="fu_spike_clients",
                                       help="Source addresses 127.0.0.1, .2, ...: the rate limiter's clients.")
        limit = cols[1].number_input("Limit per client (x normal)", 0.5, 10.0, 1.5, 0.5, key="fu_spike_limit",
                                     help="The protected run's per-client bucket: this multiple of each client's "
                                          "normal rate, with a burst of one second of it.")
        timeout_s = cols[2].number_input("Client timeout (s)", 0.5, 10.0, 2.0, 0.5, key="fu_spike_timeout",
                                         help="A request unanswered after this counts as a timeout.")
        go = st.form_submit_button("Run the spike twice", type="primary", key="fu_spike_go",
                                   icon=":material/bolt:")
    if not go:
        return None
    return {"rate": int(rate), "for_s": int(for_s), "length_s": int(length), "clients": int(clients),
            "limit": float(limit), "timeout_s": float(timeout_s)}


def render() -> None:
    st.caption(f"The experiment: the same open-model run twice (`GET /users/{{id}}` from N clients, the rate x{FACTOR} "
               f"for a few seconds), first with load shedding and rate limits off, then with shedding on and a "
               f"per-client rate limit on that endpoint (`{RULE}`). The topology is recorded first and put back "
               "exactly afterwards. Each run takes its length plus a few seconds; the stack measures one run at "
               "a time.")
    o = _form()
    if o is not None and o["length_s"] < o["for_s"] + MIN_AROUND_S:
        st.error(f"A {o['for_s']} s spike needs a run of at least {o['for_s'] + MIN_AROUND_S} s, to show normal "
                 "traffic before and after it: make the run longer or the spike shorter.")
    elif o is not None:
        done = {"runs": {}, "notes": []}
        slot = st.empty()
        try:
            experiment(o, slot, done)
        except ApiError as exc:
            slot.empty()
            done["error"] = str(exc)
        st.session_state[STATE] = done
    done = st.session_state.get(STATE)
    if done:
        if done.get("error"):
            st.error(done["error"])
        show(done)
