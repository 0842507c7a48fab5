"""The debugging section of the Stack status page: the groups of unhandled exceptions (api/errors.py,
GET /api/v1/admin/errors) with the last stack of the chosen one, and the on-demand profiles
(api/profiling.py, GET /api/v1/admin/profiles) with one profile's hottest frames and call tree.
Tables are st.dataframe, not st.table: messages and paths come from requests, and a table cell
would render them as Markdown."""
from __future__ import annotations

import pandas as pd
import streamlit as st

LESSON = """
**Grouping by fingerprint.** A bug that fires a thousand times is one problem, not a thousand. Each
unhandled exception is reduced to a fingerprint: its type plus the innermost few frames of the
project's own code (file and function, no line numbers, no message). The message often carries an id
or a value and would split one bug into thousands of groups; line numbers move with every edit. So
the table has one row per bug, with how often it fired and when first and last: a new row after a
deploy is a regression, a count that keeps climbing is the one to fix first.

**Why a stack and a request id beat a log grep.** The client's 500 carries only the request id (a
stack would tell an attacker how the code is built). With it, the stack here says *where* it broke,
and `python manage.py logs --request-id <id>` shows that request's path through Caddy and the app
server. A grep over logs for "error" finds the symptoms of every bug at once, on every server,
without the frames that tell them apart.

**Sampling profilers vs tracing.** A profile answers "where does this request spend its CPU time,
down to the function?": pyinstrument looks at the request's stack every half millisecond and adds
up what it saw, so its cost stays small whatever the code does, but calls shorter than the interval
can be missed and time is statistical. Tracing (spans) answers "which layer or service took how
long?": it records every span exactly, but only where spans were placed. Profile one request on
demand (an admin sends `X-Workbench-Profile: 1`; the answer names the profile in `X-Profile-Id`);
trace a sample of all of them. The profiler here samples only the request's own thread: the other
requests a gthread worker serves at the same time are not in the profile.
"""


def _clock(ts) -> str:
    return pd.Timestamp(ts, unit="s", tz="UTC").strftime("%H:%M:%S") + " UTC" if ts else "\u2014"


def _section(client, title: str, name: str, items: str, empty: str) -> tuple[dict, list]:
    """The section's heading and its admin API's answer; ({}, []) when there is nothing to show."""
    st.subheader(title)
    data = client._admin(name)
    if "error" in data:
        st.info(f"The admin {name} API did not answer: {data['error']}")
        return {}, []
    if not data[items]:
        st.caption(empty)
    return data, data[items]


def _errors(client) -> None:
    data, groups = _section(client, "Errors", "errors", "groups",
                            "No unhandled exception since the groups were last cleared.")
    if not groups:
        return
    st.caption(f"{data['total_groups']} group(s) of unhandled exceptions (every 500), newest first; "
               f"the {data['max_groups']} most recent are kept.")
    st.dataframe(pd.DataFrame([{
        "fingerprint": g["fingerprint"][:8], "type": g["type"], "where": g["where"], "route": g["route"],
        "count": g["count"], "first seen": _clock(g["first_seen"]), "last seen": _clock(g["last_seen"]),
        "last request id": g["last_request_id"],
    } for g in groups]), hide_index=True, width="stretch")
    chosen = st.selectbox("Group", [g["fingerprint"] for g in groups], key="debugging_error_group",
                          format_func=lambda fp: next(f"{fp[:8]}  {g['type']} in {g['where']}"
                                                      for g in groups if g["fingerprint"] == fp))
    with st.expander("Last stack of this group"):
        detail = client._admin(f"errors/{chosen}")
        if "error" in detail:
            st.info(f"Could not read it: {detail['error']}")
        else:
            st.caption(f"Request {detail['last_request_id']}, {detail['method']} {detail['route']} on "
                       f"{detail['app_server']}: `python manage.py logs --request-id {detail['last_request_id']}`")
            st.code(detail["stack"], language="text")


def _profiles(client) -> None:
    _, profiles = _section(client, "Profiles", "profiles", "profiles",
                           "No profile yet: send a request with an admin's token and `X-Workbench-Profile: 1`.")
    if not profiles:
        return
    st.dataframe(pd.DataFrame([{
        "id": p["id"], "at": _clock(p["at"]), "request": f"{p['method']} {p['path']}", "status": p["status"],
        "ms": p["duration_ms"], "samples": p["samples"], "app server": p["app_server"],
    } for p in profiles]), hide_index=True, width="stretch")
    chosen = st.selectbox("Profile", [p["id"] for p in profiles], key="debugging_profile")
    profile = client._admin(f"profiles/{chosen}")
    if "error" in profile:
        st.info(f"Could not read it: {profile['error']}")
        return
    st.markdown("**Top frames** (by self time: where the sampled stack's top was)")
    st.code("\n".join(f"{f['self_ms']:8.2f} ms  {f['function']}  {f['file']}:{f['line']}"
                      for f in profile["top_frames"]) or "(no samples)", language="text")
    with st.expander("Call tree (pyinstrument)"):
        st.code(profile["text"] or "(no samples)", language="text")


def render(client) -> None:
    _errors(client)
    _profiles(client)
    with st.expander("How error tracking and profiling work"):
        st.markdown(LESSON)
