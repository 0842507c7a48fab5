"""Reads. Each is a fixed number of queries, whatever the page size. A user's reads run on the
user's shard (api.routing.placement); listing all users asks every shard."""
from __future__ import annotations

import heapq
from datetime import datetime

from django.db.models import Q

from api.gateway.errors import NotFound
from api.models import Post, User
from api.pagination import PageParams
from api.routing import db, placement
from workbench import topology


def user_get(*, user_id: int) -> User:
    def get():
        try:
            return User.objects.get(id=user_id)
        except User.DoesNotExist:
            raise NotFound("user_id", f"No user {user_id}.") from None

    return placement.read(user_id, get, NotFound)


def user_list(*, page: PageParams) -> list[User]:
    """Users by id; fetches limit+1 rows so the caller knows whether a next page exists.
    Scatter-gather: every shard returns its first limit+1 users after the cursor, and the pages
    are merged by id. A user being moved by a reshard can be on two shards for a moment (copied,
    not yet deleted); the copies are the same row, and the merge keeps one."""
    merged, seen = [], set()
    for user in heapq.merge(*(_users_on(shard, page) for shard in shards_in_use()), key=lambda u: u.id):
        if user.id not in seen:
            seen.add(user.id)
            merged.append(user)
        if len(merged) > page.limit:
            break
    return merged


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
        if not User.objects.filter(id=user_id).exists():
            raise NotFound("user_id", f"No user {user_id}.")
        rows = Post.objects.filter(user_id=user_id).order_by("-created_at", "-id")
        if since:
            rows = rows.filter(created_at__gte=since)
        if until:
            rows = rows.filter(created_at__lte=until)
        if page.after:
            at, last_id = page.after
            rows = rows.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=last_id))
        return list(rows[: page.limit + 1])

    return placement.read(user_id, page_of_posts, NotFound)


def post_get(*, user_id: int, post_id: int) -> Post:
    def get():
        try:
            return Post.objects.get(id=post_id, user_id=user_id)
        except Post.DoesNotExist:
            raise NotFound("post_id", f"No post {post_id} of user {user_id}.") from None

    return placement.read(user_id, get, NotFound)
