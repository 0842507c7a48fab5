"""The rate-limit section of the Stack status page: the limiter's live rules (the topology's
`rate_limit` group, as the app servers run it) and how many requests it allowed and refused, over
every app server. Numbers come from GET /api/v1/admin/ratelimit (api/gateway/ratelimit.py)."""
from __future__ import annotations

import pandas as pd
import streamlit as st

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


def _rule_rows(rules: list[dict]) -> list[dict]:
    return [{"rule": r["name"], "per": " + ".join(r["per"]) or "(one bucket for all)",
             "endpoints": ", ".join(r["endpoints"]) or "every API request", "capacity": f"{r['capacity']:,}",
             "refill / s": f"{r['refill_per_s']:g}" if r["refill_per_s"] else "none (fixed quota)",
             "RateLimit-Policy": r["policy"], "refused": f"{r['limited']:,}"} for r in rules]


def render(data: dict) -> None:
    st.subheader("Rate limiting")
    if "error" in data:
        st.info(f"The admin rate-limit API did not answer: {data['error']}")
        return
    counters = data["counters"]
    cols = st.columns(4)
    cols[0].metric("Rate limiter", "on" if data["enabled"] else "off")
    cols[1].metric("Valkey down", f"fail {data['on_error']}")
    cols[2].metric("Allowed", f"{counters['allowed']:,}")
    cols[3].metric("Limited (429)", f"{counters['limited']:,}")
    st.caption(f"Counted over every app server since the stack started, while the limiter was on. With the "
               f"state Valkey unreachable: {counters['fail_open']:,} let through unchecked (fail-open), "
               f"{counters['fail_closed']:,} refused with 503 (fail-closed). X-Forwarded-For is believed only "
               f"from {', '.join(data['trusted_proxies'])}."
               + ("" if data["enabled"] else " The rules below apply once `rate_limit.enabled` is true."))
    if data["rules"]:
        st.table(pd.DataFrame(_rule_rows(data["rules"])).set_index("rule"))
    with st.expander("How the rate limiter works"):
        st.markdown(LESSON)
