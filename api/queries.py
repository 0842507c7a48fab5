"""Query optimization (Phase 3): the hot queries, their plans, and the index that serves them.

The hot queries are a user by id, a user's posts page (newest first) and a user's posts in a time
range. The last two are served by one supporting index; a lesson drops and recreates it live
(topology `indexes.post_user_time`, carried out by the controller) to compare plans and latency.
Admins see each query's `EXPLAIN (ANALYZE, BUFFERS)` through GET /api/v1/admin/explain.
Imports stay light: the controller, which has no Django settings, uses the index DDL.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta

SUPPORTING_INDEX = "api_post_user_time"
INDEX_COLUMNS = '("user_id", "created_at" DESC, "id" DESC)'  # as api.models.Post.Meta.indexes has it
CREATE_INDEX = f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{SUPPORTING_INDEX}" ON "api_post" {INDEX_COLUMNS}'
DROP_INDEX = f'DROP INDEX CONCURRENTLY IF EXISTS "{SUPPORTING_INDEX}"'
INDEX_STATE = "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s"
INDEX_FIELD = "indexes.post_user_time"  # the topology field that toggles it
# Held (pg_advisory_lock) by anything that rebuilds api_post's indexes, such as a bulk seed; the
# controller's index toggle waits while it is held instead of racing it into a deadlock.
INDEX_WORK_LOCK = 0x57425F49  # "WB_I"
HOT = ("user_by_id", "posts_page", "posts_time_range")
DEFAULT_RANGE = timedelta(days=30)      # the time range when the caller gives no bounds

_TIMING = re.compile(r"^(Planning|Execution) Time: ([0-9.]+) ms$")
_USES_INDEX = re.compile(rf"\b(using|on) {SUPPORTING_INDEX}\b")
_ROWS = re.compile(r"\(actual time=[0-9.]+\.\.[0-9.]+ rows=([0-9.]+)")


def default_range(since: datetime | None, until: datetime | None, now: datetime) -> dict:
    """Fill the bounds the caller left out: `until` defaults to now (never before `since`), `since`
    to DEFAULT_RANGE before `until`. Says which were defaulted and what that made the range."""
    days = DEFAULT_RANGE.days
    notes = {("since", "until"): f"since and until not given: the last {days} days up to now",
             ("since",): f"since not given: the {days} days up to `until`",
             ("until",): "until not given: from `since` up to now"}
    defaulted = tuple(name for name, value in (("since", since), ("until", until)) if value is None)
    if until is None:
        until = max(now, since) if since else now
    if since is None:
        since = until - DEFAULT_RANGE
    return {"since": since, "until": until, "defaulted": list(defaulted), "note": notes.get(defaulted)}


def hot_querysets(user_id: int, since: datetime, until: datetime, limit: int = 20) -> dict:
    """The ORM querysets the API runs for each hot query, in the shapes of api.selectors: a
    `get()` (which Django caps at MAX_GET_RESULTS rows), and pages of limit + 1 rows newest first."""
    from django.db.models.query import MAX_GET_RESULTS

    from api.models import Post, User

    posts = Post.objects.filter(user_id=user_id).order_by("-created_at", "-id")
    return {
        "user_by_id": User.objects.filter(id=user_id)[:MAX_GET_RESULTS],
        "posts_page": posts[:limit + 1],
        "posts_time_range": posts.filter(created_at__gte=since, created_at__lte=until)[:limit + 1],
    }


def parse_plan(lines: list[str]) -> dict:
    """The figures of one text `EXPLAIN (ANALYZE, BUFFERS)`: its plan nodes (each line's text up to
    its cost), the rows and buffers of the whole plan (the top node's), planning and execution time."""
    out = {"plan_nodes": [], "rows": None, "buffers": None, "planning_ms": None, "execution_ms": None}
    for line in lines:
        text = line.strip()
        if "(cost=" in text:
            out["plan_nodes"].append(text.split("(cost=")[0].removeprefix("->").strip())
            if out["rows"] is None and (rows := _ROWS.search(text)):
                out["rows"] = round(float(rows[1]))
        elif text.startswith("Buffers:") and out["buffers"] is None:
            out["buffers"] = text.removeprefix("Buffers:").strip()
        elif match := _TIMING.match(text):
            out[f"{match[1].lower()}_ms"] = float(match[2])
    out["uses_supporting_index"] = any(_USES_INDEX.search(node) for node in out["plan_nodes"])
    return out


def index_state(cursor) -> str:
    """The supporting index on the cursor's node: valid, invalid (an interrupted concurrent build
    or drop) or absent."""
    cursor.execute(INDEX_STATE, [SUPPORTING_INDEX])
    row = cursor.fetchone()
    return "absent" if row is None else "valid" if row[0] else "invalid"


def explain(name: str, queryset) -> dict:
    """`EXPLAIN (ANALYZE, BUFFERS)` of one queryset on the node the router picks for it. The query
    runs once: the figures are parsed from the same text that is returned."""
    from django.db import connections

    from api.routing.db import node_name

    alias = queryset.db
    sql, params = queryset.query.sql_with_params()
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        lines = [row[0] for row in cursor.fetchall()]
        state = index_state(cursor)
    return {"query": name, "node": node_name(alias), "sql": connection.ops.compose_sql(sql, params),
            **parse_plan(lines), "supporting_index": state, "plan": "\n".join(lines)}


def explain_hot(user_id: int, since: datetime, until: datetime, limit: int) -> list[dict]:
    """On the user's shard, where the API runs these queries."""
    from api.routing import db, placement

    with db.on_shard(placement.locate(user_id)):
        return [explain(name, queryset) for name, queryset in hot_querysets(user_id, since, until, limit).items()]


def index_toggle() -> dict:
    """The toggle as the topology wants it and as the controller last reported it running."""
    from workbench import topology

    doc, report = topology.store().read(), topology.report()
    running = report.running if report.fresh() else None
    return {"field": INDEX_FIELD, "wanted": doc.topology.indexes.post_user_time,
            "running": (running or {}).get(INDEX_FIELD),
            "pending": any(p["field"] == INDEX_FIELD for p in topology.pending(doc.topology, running))}
