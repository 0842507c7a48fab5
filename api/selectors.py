"""Reads. Each is a fixed number of queries, whatever the page size."""
from __future__ import annotations

from datetime import datetime

from django.db.models import Q

from api.gateway.errors import NotFound
from api.models import Post, User
from api.pagination import PageParams


def user_get(*, user_id: int) -> User:
    try:
        return User.objects.get(id=user_id)
    except User.DoesNotExist:
        raise NotFound("user_id", f"No user {user_id}.") from None


def user_list(*, page: PageParams) -> list[User]:
    """Users by id; fetches limit+1 rows so the caller knows whether a next page exists."""
    rows = User.objects.order_by("id")
    if page.after:
        rows = rows.filter(id__gt=page.after[0])
    return list(rows[: page.limit + 1])


def post_list(*, user_id: int, page: PageParams, since: datetime | None, until: datetime | None) -> list[Post]:
    """A user's posts, newest first, optionally within [since, until]. Two queries: the user's
    existence (so an unknown user is a 404, not an empty page) and the page itself."""
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


def post_get(*, user_id: int, post_id: int) -> Post:
    try:
        return Post.objects.get(id=post_id, user_id=user_id)
    except Post.DoesNotExist:
        raise NotFound("post_id", f"No post {post_id} of user {user_id}.") from None
