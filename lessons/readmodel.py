"""The read-model section of the Stack status page: the NoSQL profile documents (api/readmodel.py),
how far behind PostgreSQL they run, and the outbox that feeds them. Numbers come from
GET /api/v1/admin/readmodel."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons.widgets import metrics

LESSON = """
**A read model** (CQRS) keeps a second, denormalized copy of the data shaped for one read: here a
profile document per user (the user and their latest posts) in the `state` Valkey, which serves
`GET /users/{id}?view=profile` with one key lookup instead of two SQL queries.

It is kept up to date through a **transactional outbox**, never a dual write: each write inserts an
outbox row in its own database transaction, and the relay process turns committed rows into new
documents, deleting the rows only after the document is written. A crash anywhere loses nothing:
the rows stay until a relay has rebuilt the document from PostgreSQL. The price is **staleness**:
a document shows a write some time after it committed, measured below.
"""


def _ms(value) -> str:
    if value is None:
        return "\u2014"
    return f"{value / 1000:,.1f} s" if value >= 10_000 else f"{value:,.1f} ms"  # fits a metric's width


def render(data: dict) -> None:
    st.subheader("Read model")
    if "error" in data:
        st.info(f"The admin read-model API did not answer: {data['error']}")
        return
    staleness = data["staleness_ms"]
    outbox = data["outbox"]
    oldest = outbox.get("oldest_pending_s")
    metrics({"Read model": "on" if data["read_model"] else "off", "Documents": f"{data['documents']:,}",
             "Outbox pending": f"{outbox['pending']:,}",
             "Oldest pending": "\u2014" if oldest is None else f"{oldest:,.2f} s",
             "Staleness p95": _ms(staleness["p95"])})
    relay = data.get("relay") or {}
    counters = data.get("counters") or {}
    st.caption(f"Staleness (commit to document update) over the latest {staleness['samples']:,} updates: "
               f"p50 {_ms(staleness['p50'])}, p95 {_ms(staleness['p95'])}, max {_ms(staleness['max'])}. "
               f"Relay: {relay.get('state', 'not reporting')}. `?view=profile` answers: "
               f"{counters.get('hit', 0):,} hits, {counters.get('miss', 0):,} misses, "
               f"{counters.get('off', 0):,} from SQL (toggle off).")
    rows = [{"shard": s["shard"], "pending": s.get("pending"),
             "oldest pending (s)": s.get("oldest_pending_s"), "error": s.get("error", "")}
            for s in outbox.get("shards", [])]
    if rows:
        st.table(pd.DataFrame(rows).set_index("shard"))
    with st.expander("What the read model is"):
        st.markdown(LESSON)
