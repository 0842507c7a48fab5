"""The rate-limit section of the Stack status page: the limiter's live rules (the topology's
`rate_limit` group, as the app servers run it) and how many requests it allowed and refused, over
every app server; and the load shedder's (api/gateway/shedding.py). Numbers come from
GET /api/v1/admin/ratelimit (api/gateway/ratelimit.py)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons.widgets import metrics

LESSON = """
**A token bucket** per client (or user, or endpoint): the bucket holds up to *capacity* tokens and
gains *refill* tokens a second; each request takes one, and a request that finds it empty gets
`429 Too Many Requests` with `Retry-After`. A burst up to the capacity passes at once; the
sustained rate is the refill rate. Every response says where it stands in the IETF `RateLimit`
and `RateLimit-Policy` headers (draft-ietf-httpapi-ratelimit-headers-09).

**One shared store, one clock.** The buckets live in the `state` Valkey, so every app server counts
against the same buckets, and one Lua script checks every rule a request matches and takes the
tokens in one atomic round trip: two servers can never both take the last token, and a refused
request takes none. The script reads the time from Valkey (`TIME`), not from the app servers:
their clocks differ, and a bucket refilled by one clock and drained by another would gain or lose
tokens by the difference. The tests count exactly *capacity* requests allowed out of hundreds sent
by 32 clients over both app servers, and *capacity + refill x elapsed* (Valkey's elapsed) with
refill on.

**Who is the client?** Behind Caddy every request comes from Caddy's address, so the client's
address is read from `X-Forwarded-For`, but only when the request really comes from the trusted
proxy: anyone can send that header straight to an app server.

**When Valkey is down** the topology chooses: *fail open* (let requests through unchecked: the
API stays up, unprotected) or *fail closed* (refuse with 503: protected, down). The
`X-RateLimit-Status` header says which happened.

**Why the gateway runs inside the app servers here:** one fewer network hop per request, and the
state is shared in Valkey anyway. It becomes its own tier (a dedicated API gateway, or the edge
proxy limiting) when many services must share the same limits and credentials, or when abusive
traffic must be dropped before it costs an app server any work.
"""

SHEDDING_LESSON = """
**Shedding vs queueing.** In a spike, requests arrive faster than the workers can serve them. With
no admission limit they queue: every request waits behind all the others, latency grows for as long
as the spike lasts, and clients time out on requests the server then serves anyway, work thrown
away while the live requests behind them wait longer still. Shedding refuses the excess at once
(`503` with `Retry-After`, unprocessed, before any database or cache work) so the requests it
admits are served at normal latency: some clients get a fast "not now" instead of every client
getting a slow, possibly useless answer.

**Why queue time.** Caddy stamps each request with the moment it forwarded it (`X-Request-Start`);
when a worker picks the request up, the gateway knows how long it waited in the queues in front of
the workers (the socket's, gunicorn's). That is what the client feels, and it grows without bound in
a spike while the service time barely moves. CPU is a poor signal (saturated long before latency
suffers, and blind to a request blocked on the database); a concurrency cap needs the right number,
which changes with the workload. Queue time needs no tuning to the hardware: a budget in
milliseconds, set in the topology (`shedding.queue_budget_ms`). The stamp is believed only from
the trusted proxy, like `X-Forwarded-For`. The `X-Shed` header and the `queue` part of
`Server-Timing` show it on each response.
"""


def render_shedding(data: dict | None) -> None:
    if not data:
        return
    st.subheader("Load shedding")
    counters = data["counters"]
    metrics({"Load shedding": "on" if data["enabled"] else "off", "Queue budget": f"{data['queue_budget_ms']:,} ms",
              "Admitted": f"{counters['admitted']:,}", "Shed (503)": f"{counters['shed']:,}"})
    st.caption(f"Counted over every app server since the stack started, while shedding was on. "
               f"{counters['no_stamp']:,} requests had no trusted {data['stamp_header']} stamp (sent straight to "
               f"an app server) and were admitted unchecked. A shed response carries Retry-After: "
               f"{data['retry_after_s']} s.")
    with st.expander("How load shedding works"):
        st.markdown(SHEDDING_LESSON)


def _rule_rows(rules: list[dict]) -> list[dict]:
    return [{"rule": r["name"], "per": " + ".join(r["per"]) or "(one bucket for all)",
             # In backticks: a table cell is Markdown, where `*` would turn into emphasis.
             "endpoints": ", ".join(f"`{e}`" for e in r["endpoints"]) or "every API request", "capacity": f"{r['capacity']:,}",
             "refill / s": f"{r['refill_per_s']:g}" if r["refill_per_s"] else "none (fixed quota)",
             "RateLimit-Policy": r["policy"], "refused": f"{r['limited']:,}"} for r in rules]


def render(data: dict) -> None:
    st.subheader("Rate limiting")
    if "error" in data:
        st.info(f"The admin rate-limit API did not answer: {data['error']}")
        return
    counters = data["counters"]
    metrics({"Rate limiter": "on" if data["enabled"] else "off", "Valkey down": f"fail {data['on_error']}",
              "Allowed": f"{counters['allowed']:,}", "Limited (429)": f"{counters['limited']:,}"})
    st.caption(f"Counted over every app server since the stack started, while the limiter was on. With the "
               f"state Valkey unreachable: {counters['fail_open']:,} let through unchecked (fail-open), "
               f"{counters['fail_closed']:,} refused with 503 (fail-closed). X-Forwarded-For is believed only "
               f"from {', '.join(data['trusted_proxies'])}."
               + ("" if data["enabled"] else " The rules below apply once `rate_limit.enabled` is true."))
    if data["rules"]:
        st.table(pd.DataFrame(_rule_rows(data["rules"])).set_index("rule"))
    with st.expander("How the rate limiter works"):
        st.markdown(LESSON)
    render_shedding(data.get("shedding"))
