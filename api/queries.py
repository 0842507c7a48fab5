"""Query optimization (Phase 3): the hot queries, their plans, and the index that serves them.

The hot queries are a user by id, a user's posts page (newest first) and a user's posts in a time
range. The last two are served by one supporting index; a lesson drops and recreates it live
(topology `indexes.post_user_time`, carried out by the controller) to compare plans and latency.
Imports stay light: the controller, which has no Django settings, uses the index DDL.
"""
from __future__ import annotations

SUPPORTING_INDEX = "api_post_user_time"
CREATE_INDEX = (f'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{SUPPORTING_INDEX}" '
                'ON "api_post" ("user_id", "created_at" DESC, "id" DESC)')
DROP_INDEX = f'DROP INDEX CONCURRENTLY IF EXISTS "{SUPPORTING_INDEX}"'
INDEX_STATE = "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = %s"
HOT = ("user_by_id", "posts_page", "posts_time_range")


def hot_querysets(user_id: int, since, until, limit: int = 20):
    """The ORM querysets the API runs for each hot query (the same shapes as api.selectors)."""
    from api.models import Post, User

    return {
        "user_by_id": User.objects.filter(id=user_id),
        "posts_page": Post.objects.filter(user_id=user_id).order_by("-created_at", "-id")[:limit + 1],
        "posts_time_range": Post.objects.filter(user_id=user_id, created_at__gte=since, created_at__lte=until)
                                        .order_by("-created_at", "-id")[:limit + 1],
    }


def explain(name: str, queryset) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of one queryset on the node the router picks for it."""
    import json

    from django.db import connections

    alias = queryset.db
    sql, params = queryset.query.sql_with_params()
    with connections[alias].cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        text = "\n".join(row[0] for row in cursor.fetchall())
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]
    return {"query": name, "node": alias, "sql": str(queryset.query),
            "execution_ms": top.get("Execution Time"), "planning_ms": top.get("Planning Time"),
            "uses_index": SUPPORTING_INDEX in text, "plan": text}
