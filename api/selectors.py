"""Reads. Each is a fixed number of queries, whatever the page size. A user's reads run on the
user's shard (api.routing.placement); listing all users asks every shard.

The reads of one user's rows go through the query cache (api.caching.querycache), which answers
them from Valkey when `cache.query_cache` is on and runs them unchanged when it is off. Each names
its owner: the user whose rows it reads (the user row, or posts with that user_id), since writes
invalidate per owner."""
from __future__ import annotations

import heapq
from datetime import datetime

from django.db.models import Q

from api.caching import querycache
from api.gateway.errors import NotFound
from api.models import Post, User
from api.pagination import PageParams
from api.routing import db, placement
from workbench import topology


def user_get(*, user_id: int) -> User:
    def get():
        try:
            return querycache.get(User.objects.filter(id=user_id), owner=user_id)
        except User.DoesNotExist:
            raise NotFound("user_id", f"No user {user_id}.") from None

    return placement.read(user_id, get, NotFound)


def users_by_id(*, user_ids: list[int]) -> dict[int, User]:
    """Several users at once, one query per shard that holds any of them (the router's guess, like
    user_list; not through the query cache, whose entries are per user). A user missing from the
    answer may have been deleted, or moved by a reshard under way: read it with user_get, which
    follows the fence. For v2's embedded authors (api/versioning.py)."""
    by_shard: dict[int, list[int]] = {}
    for user_id in user_ids:
        by_shard.setdefault(placement.locate(user_id), []).append(user_id)
    found = {}
    for shard, ids in by_shard.items():
        with db.on_shard(shard):
            found.update((user.id, user) for user in User.objects.filter(id__in=ids))
    return found


def user_list(*, page: PageParams) -> list[User]:
    """Users by id; fetches limit+1 rows so the caller knows whether a next page exists.
    Scatter-gather: every shard returns its first limit+1 users after the cursor, and the pages
    are merged by id. A user being moved by a reshard can be on two shards for a moment (copied,
    not yet deleted); the copies are the same row, and the merge keeps one."""
    return merge_pages([_users_on(shard, page) for shard in shards_in_use()], key=lambda u: u.id,
                       limit=page.limit)


def shards_in_use() -> range:
    return range(1, topology.current().topology.shard_groups + 1)


def _users_on(shard: int, page: PageParams) -> list[User]:
    with db.on_shard(shard):
        rows = User.objects.order_by("id")
        if page.after:
            rows = rows.filter(id__gt=page.after[0])
        return list(rows[: page.limit + 1])


def post_list(*, user_id: int, page: PageParams, since: datetime | None, until: datetime | None) -> list[Post]:
    """A user's posts, newest first, optionally within [since, until]. Two queries: the user's
    existence (so an unknown user is a 404, not an empty page) and the page itself."""
    def page_of_posts():
        if not querycache.exists(User.objects.filter(id=user_id), owner=user_id):
            raise NotFound("user_id", f"No user {user_id}.")
        rows = Post.objects.filter(user_id=user_id).order_by("-created_at", "-id")
        if since:
            rows = rows.filter(created_at__gte=since)
        if until:
            rows = rows.filter(created_at__lte=until)
        if page.after:
            at, last_id = page.after
            rows = rows.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=last_id))
        return querycache.rows(rows[: page.limit + 1], owner=user_id)

    return placement.read(user_id, page_of_posts, NotFound)


def post_get(*, user_id: int, post_id: int) -> Post:
    def get():
        try:
            return querycache.get(Post.objects.filter(id=post_id, user_id=user_id), owner=user_id)
        except Post.DoesNotExist:
            raise NotFound("post_id", f"No post {post_id} of user {user_id}.") from None

    return placement.read(user_id, get, NotFound)


# --- global full-text search over every shard ----------------------------------------------------
# Exactly the expression of the GIN index api_post_search (migration 0002), so the planner uses it.
SEARCH_DOCUMENT = "to_tsvector('english', title || ' ' || body)"
SEARCH_QUERY = "websearch_to_tsquery('english', %(q)s)"


def post_search_sql(*, after: tuple[float, int] | None, limit: int) -> str:
    """One shard's page of matches, best first: (rank desc, id desc), strictly after `after`
    (rank, id). ts_rank is a float4; the cursor's rank is compared as a float4 too (`::real`), so
    the row it came from compares equal and is never returned again. Parameters: q, and rank and
    id after a cursor. Also selects the rank as PostgreSQL writes it (shortest exact text)."""
    rank = f"ts_rank({SEARCH_DOCUMENT}, {SEARCH_QUERY})"
    cursor = "WHERE (rank, id) < (%(rank)s::real, %(id)s)" if after else ""
    return (f"SELECT id, user_id, title, body, created_at, updated_at, rank, rank::text AS rank_text FROM "
            f"(SELECT id, user_id, title, body, created_at, updated_at, {rank} AS rank FROM api_post "
            f"WHERE {SEARCH_DOCUMENT} @@ {SEARCH_QUERY}) AS found "
            f"{cursor} ORDER BY rank DESC, id DESC LIMIT {int(limit)}")


def post_search(*, q: str, page: PageParams) -> tuple[list[Post], int]:
    """Posts matching `q` on every shard, by rank (ts_rank: it depends only on the post and the
    query, not on the shard's other rows, so ranks from different shards compare), then id, both
    descending. Scatter-gather like user_list: each shard returns its first limit+1 matches after
    the cursor (rank, id), and the pages are merged; a post being moved by a reshard may be on two
    shards for a moment, and the merge keeps one. Returns (limit+1 posts at most, shards asked).
    Each post carries `rank` (a float) and `rank_text` (as PostgreSQL wrote it)."""
    shards = shards_in_use()
    params = {"q": q}
    if page.after:
        params["rank"], params["id"] = page.after
    sql = post_search_sql(after=page.after, limit=page.limit + 1)
    pages = [_search_on(shard, sql, params) for shard in shards]
    return merge_pages(pages, key=lambda p: (-p.rank, -p.id), limit=page.limit), len(shards)


def merge_pages(pages: list[list], *, key, limit: int) -> list:
    """Shards' pages, each sorted by `key`, merged into the first limit+1 distinct rows (by id)."""
    merged, seen = [], set()
    for row in heapq.merge(*pages, key=key):
        if row.id not in seen:
            seen.add(row.id)
            merged.append(row)
        if len(merged) > limit:
            break
    return merged


def _search_on(shard: int, sql: str, params: dict) -> list[Post]:
    with db.on_shard(shard):
        return list(Post.objects.raw(sql, params))
