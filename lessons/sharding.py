"""The sharding section of the Stack status page: where users live, how each strategy would spread
them, and what the last reshard moved. Numbers come from GET /api/v1/admin/shards."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from lessons.widgets import metrics

LESSON = """
**Sharding** splits users (and, with each user, their posts) over several PostgreSQL primaries, so
writes scale out: each point read or write touches one shard. Each strategy answers "which shard
holds user *u*?" differently:

- **hash**: a 64-bit mixer of the id, modulo N. Even for any ids, but changing N moves almost
  every user.
- **consistent**: a ring of virtual nodes. Just as even; going from N to N+1 shards moves only
  about 1/(N+1) of the users, all of them onto the new shard.
- **modulo**: the textbook `user_id % N`. Our ids are time-ordered (snowflakes) and end in a
  per-millisecond sequence, so users who sign up one at a time all have sequence 0 and land on
  the same shard when N divides 4096. The table below shows the skew on real ids.
- **range**: slices of the id space, that is, of time. Old users are spread out, but every new
  user lands on the newest slice: one hot shard takes all sign-ups.
- **directory**: a lookup table in `meta` says where each user lives, so a reshard moves only
  the users it chooses to. Every request that misses an app server's copy of the table asks
  `meta`: it is a **single point of failure** (and `meta` already holds the accounts).

Consistency across shards: usernames and emails stay unique through the account table in `meta`
(a global index); `GET /users` and search ask every shard and merge (scatter-gather).
Changing N or the strategy means moving rows: `python manage.py reshard --to N --strategy S`.
"""


def render(data: dict) -> None:
    st.subheader("Shards")
    if "error" in data:
        st.warning(f"The admin shards API did not answer: {data['error']}")
        return
    metrics({"Strategy": data["sharding"], "Shards": data["shards"], "Shards running": data["shard_groups"]})
    rows = [{"shard": f"shard-{s['shard']}", "healthy": "yes" if s["healthy"] else "NO",
             "users": s["users"], "posts": s["posts"], "queries": s["queries"],
             "nodes": ", ".join(s["nodes"])} for s in data["per_shard"]]
    st.table(pd.DataFrame(rows).set_index("shard"))
    st.caption("Users and posts: PostgreSQL's live-row estimates (pg_stat_user_tables), sampled by the "
               "controller. Queries: answered by the shard's primary and replicas since the stack started.")
    dist = data["key_distribution"]
    st.markdown(f"**Key distribution**: the newest {dist['sample']:,} user ids over {dist['n']} shards")
    table = pd.DataFrame([{
        "strategy": name, **{f"shard-{i + 1}": c for i, c in enumerate(d["counts"])},
        f"chi-squared (df {dist['degrees_of_freedom']})": f"{d['chi_squared']:,.1f}",
        f"moved by {dist['n']} -> {dist['n'] + 1}": "\u2014" if d["moved_to_n_plus_1"] is None
        else f"{d['moved_to_n_plus_1']:.1%}",
    } for name, d in dist["strategies"].items()]).set_index("strategy")
    st.table(table)
    job = data.get("last_reshard")
    if job:
        fraction = "\u2014" if job["fraction_moved"] is None else f"{job['fraction_moved']:.1%}"
        st.caption(f"Last reshard #{job['id']} ({job['state']}): {job['from'][0]} x {job['from'][1]} -> "
                   f"{job['to'][0]} x {job['to'][1]}, {job['users_moved']:,} of {job['users_total']:,} users "
                   f"moved ({fraction}), {job['posts_moved']:,} posts, {job['batches']} batches"
                   + (f", {job['seconds']:.1f} s" if job.get("seconds") else ""))
    with st.expander("How sharding works here"):
        st.markdown(LESSON)
