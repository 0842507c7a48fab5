"""Follow-up: how to rate-limit the API, on the live token bucket (api/gateway/ratelimit.py). The
learner reads the limiter's live rules (the Stack status page's section, lessons/ratelimit.py), may
set a small rule of their own on one endpoint, then sends bursts of real requests through Caddy as
one client and reads every response's status and RateLimit headers, the bucket refilling between
the bursts, and the limiter's counters before and after."""
from __future__ import annotations

import time

import altair as alt
import pandas as pd
import requests
import streamlit as st

from lessons import ratelimit as section
from lessons import tradeoffs
from api.counters import FLUSH_S
from lessons.client import ApiError, StackClient
from workbench.stack import config

KEY = "ratelimit"
TITLE = "How would you rate-limit the API?"
QUESTION = ("Some clients send far more than their share: a scraper, a buggy retry loop, an abusive sign-up "
            "script. How would you limit them, where, with which algorithm, and what does a limited client see?")

RULE = "burst-demo"                    # the experiment's own rule, on one endpoint only
ENDPOINT = "GET /api/v1/users/{user_id}"
HEADERS = ("X-RateLimit-Status", "RateLimit", "RateLimit-Policy", "Retry-After", "X-App-Server")
COUNTERS_WAIT_S = 4.0                  # at most this long for the admin counters to include a burst
BEFORE = "fu_rl_before"                # the rate_limit group as it was before the learner's first rule
RESULT = "fu_rl_burst"

ANSWER = """
**Where.** At the gateway, in front of the business logic, keyed by who is asking: the API key or
user for signed-in traffic, the client IP (taken from `X-Forwarded-For` only when the request
really came through the trusted proxy) for anonymous traffic, and per endpoint where one endpoint
is much dearer than the rest (sign-up, search, writes). Here the gateway runs inside each app
server, with the buckets shared in Valkey; at larger scale the same rules move to an edge tier (the
load balancer, an API gateway, a CDN) so abusive traffic is dropped before it costs an app server a
worker. Several rules combine: per IP, per user and per endpoint at once.

**Which algorithm.** A *token bucket*: capacity *b* (the burst a client may send at once) and refill
*r* per second (the sustained rate). It allows the bursts real clients make and bounds the average,
costs one small record per client, and refills lazily: on each request, add *r x elapsed* and take
one token. A fixed window counter is simpler but lets through 2x the limit around a window's edge;
a sliding log is exact but stores every request; a sliding window counter approximates the log
cheaply. A leaky bucket smooths the output instead of allowing bursts.

**Distributed.** Every app server must count against the same bucket, so the buckets live in a
shared store (Valkey) and the check-and-take is one atomic step: a Lua script that refills, checks
every matching rule and takes a token from each only if all have one. Two servers racing for the
last token cannot both get it, and a refused request takes nothing. The time comes from the store's
own clock, not the servers' (their clocks differ). One round trip per request (well under a
millisecond here); if the store is down, choose: fail open (stay up, unprotected) or fail closed
(protected, down), and trip a breaker so the outage costs nothing per request.

**What the client sees.** `429 Too Many Requests` with `Retry-After`, a problem+json body naming the
policy it broke, and on every response the IETF `RateLimit-Policy` (capacity and window) and
`RateLimit` (what is left and when it refills) headers, as in the bursts above: a well-behaved client
slows down before it is refused. Well-behaved clients back off with jitter on 429.

**Limits are not capacity protection.** They stop one client from taking everybody's share; a spike
of many distinct clients passes every per-client limit. That is load shedding's job (the spike
follow-up), and the limits themselves should come from the capacity plan: per-client limits times
the expected number of active clients should stay below what the system serves.
"""


# --- the rule -----------------------------------------------------------------------------------------
def with_rule(before: dict, capacity: int, refill: float) -> dict:
    """The rate_limit patch that switches the limiter on with the experiment's rule added (or replaced);
    every other rule stays as it was."""
    mine = {"name": RULE, "per": ["ip"], "endpoints": [ENDPOINT], "capacity": int(capacity),
            "refill_per_s": float(refill)}
    return {"enabled": True, "rules": [r for r in before["rules"] if r["name"] != RULE] + [mine]}


def set_rule(capacity: int, refill: float) -> str:
    """Apply the experiment's rule, remembering the group as it was first; waits until every app
    worker runs it. Raises ApiError."""
    current = tradeoffs.read_topology()["rate_limit"]
    st.session_state.setdefault(BEFORE, current)
    tradeoffs.apply({"rate_limit": with_rule(current, capacity, refill)})
    return (f"Rule `{RULE}` is live: a bucket of {capacity} per client IP on `{ENDPOINT}`, refilled at "
            f"{refill:g} a second. It stays until you put the limiter back.")


def put_back() -> str:
    """The rate_limit group as it was before the first rule set here, checked after. Raises ApiError."""
    before = st.session_state[BEFORE]
    tradeoffs.apply({"rate_limit": before})
    after = tradeoffs.read_topology()["rate_limit"]
    del st.session_state[BEFORE]
    if after != before:
        return ("The limiter was put back, but these settings now differ from before: "
                + ", ".join(tradeoffs.differences(before, after)) + " (changed elsewhere meanwhile?).")
    return "The limiter is back as it was before your rule (checked after every app worker picked it up)."


# --- the bursts ---------------------------------------------------------------------------------------
def policy_items(header: str | None) -> dict:
    """A RateLimit header, `"a";r=1;t=2, "b";r=0;t=5` -> {"a": {"r": "1", "t": "2"}, ...}."""
    out = {}
    for item in (header or "").split(", "):
        name, *params = item.split(";")
        if name:
            out[name.strip('"')] = dict(p.split("=", 1) for p in params if "=" in p)
    return out


def burst(n: int, wait_s: float) -> dict:
    """Two bursts of `n` GETs of one user, `wait_s` apart, from one client (one connection) through
    Caddy: each response's status and rate-limit headers, and the first refusal's problem body."""
    api = config.load().api_url
    session = requests.Session()
    try:
        users = session.get(f"{api}/api/v1/users?limit=1", timeout=10).json()["data"]["results"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise ApiError(f"Could not list a user at {api}/api/v1/users ({type(exc).__name__}). Start the workbench "
                       "with `python manage.py up`.") from None
    if not users:
        raise ApiError("The stack has no users to read: seed it with `python manage.py seed`.")
    url = f"{api}/api/v1/users/{users[0]['id']}"
    rows, refused, started = [], None, time.monotonic()
    for round_ in ("first burst", f"after waiting {wait_s:g} s"):
        if rows:
            time.sleep(wait_s)
        for _ in range(n):
            sent = time.monotonic()
            try:
                response = session.get(url, timeout=10)
            except requests.RequestException as exc:
                raise ApiError(f"A request of the burst failed: {type(exc).__name__}: {exc}. Check the stack "
                               "with `python manage.py status`.") from None
            rows.append({"#": len(rows) + 1, "burst": round_, "at (s)": round(sent - started, 3),
                         "status": response.status_code,
                         **{h: response.headers.get(h, "") for h in HEADERS}})
            if response.status_code == 429 and refused is None:
                try:
                    refused = response.json()
                except ValueError:
                    refused = {"body": response.text[:500]}
    return {"url": url, "rows": rows, "refused": refused}


def tokens(rows: list[dict], rule: str) -> pd.DataFrame:
    """Tokens left in `rule`'s bucket after each response (the RateLimit header's `r`)."""
    out = []
    for row in rows:
        item = policy_items(row["RateLimit"]).get(rule)
        if item and "r" in item:
            out.append({"at (s)": row["at (s)"], "tokens left": int(item["r"]), "status": str(row["status"])})
    return pd.DataFrame(out, columns=["at (s)", "tokens left", "status"])


def bucket_chart(frame: pd.DataFrame) -> alt.Chart:
    return alt.Chart(frame).mark_circle(size=80).encode(
        x=alt.X("at (s):Q", title="time since the first request (s)", axis=alt.Axis(tickCount=8)),
        y=alt.Y("tokens left:Q", title="tokens left (RateLimit r)", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color("status:N", title="status", scale=alt.Scale(domain=["200", "429"], range=["#2ca02c", "#d62728"])),
        tooltip=["at (s)", "tokens left", "status"]).properties(height=220)


def counted(client: StackClient, before: dict, rows: list[dict]) -> dict | None:
    """The admin counters once they include the burst. A worker adds its counts to the shared totals
    on its next request at least FLUSH_S after its last flush (api.counters), so the counters are read
    again (each read is such a request) until they cover the burst's own answers, for a few seconds."""
    allowed = sum(r["X-RateLimit-Status"] == "allowed" for r in rows)
    limited = sum(r["X-RateLimit-Status"] == "limited" for r in rows)
    after, deadline = None, time.monotonic() + COUNTERS_WAIT_S
    while time.monotonic() < deadline:
        time.sleep(FLUSH_S + 0.1)
        after = client.ratelimit().get("counters")
        if after is None or (after["allowed"] - before["allowed"] >= allowed
                             and after["limited"] - before["limited"] >= limited):
            break
    return after


def run_bursts(client: StackClient, n: int, wait_s: float) -> dict:
    before = client.ratelimit()
    result = burst(n, wait_s)
    counters = before.get("counters")
    result["counters"] = {"before": counters, "after": counted(client, counters, result["rows"]) if counters else None}
    result["rule"] = next((r for r in before.get("rules", []) if r["name"] == RULE), None) \
        if before.get("enabled") else None
    result["wait_s"] = wait_s
    return result


def refilled(result: dict) -> str | None:
    """What the wait gave back, in words: the second burst's successes against the rule's refill."""
    rule, wait_s = result.get("rule"), result.get("wait_s")
    second = [r for r in result["rows"] if r["burst"] != "first burst"]
    if not rule or not second:
        return None
    passed = sum(r["status"] == 200 for r in second)
    return (f"After waiting {wait_s:g} s the second burst got **{passed} of {len(second)}** through: the bucket had "
            f"refilled that many whole tokens (the rule adds {rule['refill_per_s']:g} a second, "
            f"{rule['refill_per_s'] * wait_s:g} in {wait_s:g} s, on top of any fraction left, up to its capacity "
            f"of {rule['capacity']:,}).")


def show(result: dict) -> None:
    rows = result["rows"]
    statuses = pd.Series([r["status"] for r in rows]).value_counts()
    st.markdown(f"**{len(rows)} requests** to `{result['url']}` from one client, as they came back: "
                + ", ".join(f"{n} x {status}" for status, n in statuses.items()))
    table = pd.DataFrame(rows)
    policies = set(table["RateLimit-Policy"])
    if len(policies) == 1:  # the draft keeps it the same from response to response: said once
        table = table.drop(columns="RateLimit-Policy")
        if policies != {""}:
            st.markdown(f"Every response carried `RateLimit-Policy: {policies.pop()}`")
    widths = {"#": 40, "burst": 130, "at (s)": 70, "status": 60, "X-RateLimit-Status": 130, "RateLimit": 600,
              "RateLimit-Policy": 300, "Retry-After": 90, "X-App-Server": 100}
    st.dataframe(table, hide_index=True, height="content",
                 column_config={name: st.column_config.Column(width=w) for name, w in widths.items()})
    names = [name for row in rows for name in policy_items(row["RateLimit"])]
    if not names:
        st.info("No response carried a RateLimit header: no rule matched these requests (or the limiter is off). "
                "Set the rule above and send the bursts again.")
    else:
        rule = RULE if RULE in names else names[0]
        st.markdown(f"**The bucket of `{rule}`**, from each response's `RateLimit` header: it empties in the first "
                    "burst, refills while the client waits, and the second burst spends what it gained.")
        st.altair_chart(bucket_chart(tokens(rows, rule)), width="stretch")
        said = refilled(result) if rule == RULE else None
        if said:
            st.markdown(said)
    if result["refused"] is not None:
        st.markdown("**The first 429's body** (problem+json):")
        st.json(result["refused"])
    before, after = result["counters"]["before"], result["counters"]["after"]
    if before and after:
        st.table(pd.DataFrame({"before": before, "after": after,
                               "difference": {k: after[k] - before[k] for k in after}}).rename_axis("admin counter"))
        st.caption("GET /api/v1/admin/ratelimit before and after, over every app server and every client (another "
                   "client's requests meanwhile count too). Each app worker adds its counts to these totals at most "
                   f"every {FLUSH_S:g} s, on its next request, so they were read until they covered the burst (for at "
                   f"most {COUNTERS_WAIT_S:g} s).")


# --- the tab ------------------------------------------------------------------------------------------
def _rule_controls(live: dict) -> bool:
    """The learner's rule: set it, or put the limiter back. True when the topology was changed."""
    changed = False
    mine = next((r for r in live.get("rules", []) if r["name"] == RULE), None)
    with st.form("fu_rl_rule", border=True, enter_to_submit=False):
        st.markdown(f"**Your rule** `{RULE}`: one bucket per client IP, on `{ENDPOINT}` only")
        cols = st.columns([1, 1, 1.2], vertical_alignment="bottom")
        capacity = cols[0].number_input("Capacity (burst)", 1, 1000, 5, key="fu_rl_capacity")
        refill = cols[1].number_input("Refill (tokens/s)", 0.0, 1000.0, 1.0, 0.5, key="fu_rl_refill",
                                      help="0: never refills (a fixed quota for an hour).")
        go = cols[2].form_submit_button("Set this rule", key="fu_rl_set", icon=":material/tune:", width="stretch")
    if go:
        try:
            st.success(set_rule(int(capacity), float(refill)))
            changed = True
        except ApiError as exc:
            st.error(str(exc))
    elif mine and live.get("enabled"):
        st.caption(f"Live now: `{RULE}` capacity {mine['capacity']:,}, refill {mine['refill_per_s']:g}/s.")
    if BEFORE in st.session_state and st.button("Put the limiter back as it was", key="fu_rl_restore",
                                                icon=":material/undo:"):
        try:
            message = put_back()
        except ApiError as exc:
            st.error(str(exc))
        else:
            (st.success if message.startswith("The limiter is back") else st.warning)(message)
            changed = True
    return changed


def render() -> None:
    client = StackClient()
    live = client.ratelimit()
    if "error" in live:
        st.error(f"The admin rate-limit API did not answer ({live['error']}). Start the workbench with "
                 "`python manage.py up`, or check that WORKBENCH_PORT_BASE matches the running stack.")
        return
    st.caption("The experiment: set a small bucket on one endpoint (or keep the live rules), send two bursts of real "
               "requests through Caddy as one client, and read what each response says. Your rule stays live "
               "until you put the limiter back; it limits only this one endpoint, for every client of this machine.")
    if _rule_controls(live):
        live = client.ratelimit()
    with st.form("fu_rl_burst_form", border=True, enter_to_submit=False):
        cols = st.columns([1, 1, 1.2], vertical_alignment="bottom")
        n = cols[0].number_input("Requests per burst", 1, 100, 8, key="fu_rl_n")
        wait_s = cols[1].number_input("Wait between bursts (s)", 0.0, 30.0, 3.0, 0.5, key="fu_rl_wait")
        go = cols[2].form_submit_button("Send the bursts", type="primary", key="fu_rl_go",
                                        icon=":material/send:", width="stretch")
    if go:
        try:
            st.session_state[RESULT] = run_bursts(client, int(n), float(wait_s))
        except ApiError as exc:
            st.error(str(exc))
        live = client.ratelimit()
    if RESULT in st.session_state:
        show(st.session_state[RESULT])
    with st.container(border=True):
        section.render({k: v for k, v in live.items() if k != "shedding"})
