"""Authorization: what a principal (api/gateway/auth.py) may do to whose data. Roles, as in DESIGN.md:
- `member`: their own profile, avatar and posts;
- `moderator`: as a member, and any member's existing posts (edit, delete), not their profiles;
- `admin`: everything, and the topology (the admin endpoints).

Object-level, on every write: the owner is the `user_id` in the path (every resource is addressed
through its user, `/users/{user_id}/posts/{post_id}`, and a post under the wrong user is a 404), so
comparing the path's owner with the token's user stops IDOR (OWASP API1: changing the id in the
URL to reach someone else's object) before any query runs. Reads are not owner-checked: profiles
and posts are public here; whether anonymous reads are allowed is the topology's
(`auth.anonymous_reads`, checked by the gateway).

An OAuth token whose scope is read-only (only `read`) may not write at all: 403 naming the
Authorization header, whoever's data it is.

A refused write is 403 problem+json naming the path parameter `user_id`; it takes no database or
cache work.
"""
from __future__ import annotations

from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission


class Forbidden(exceptions.PermissionDenied):
    def __init__(self, detail: str, field: str = "user_id"):
        super().__init__(detail)
        self.field, self.where = field, ("header" if field == "Authorization" else "path")


def allowed(principal, method: str, owner: int | None, *, post: bool) -> bool:
    """Pure: may `principal` send `method` to a resource of `owner` (a post when `post`)?"""
    if method in SAFE_METHODS or owner is None:
        return True
    if principal is None:
        return False
    if principal.is_admin:
        return True
    if post and principal.role == "moderator" and method in ("PUT", "PATCH", "DELETE"):
        return True
    return principal.user_id == owner


class OwnerOrRole(BasePermission):
    """Every API view's permission (the default in settings.REST_FRAMEWORK)."""

    def has_permission(self, request, view):
        principal = getattr(request, "principal", None)
        owner = view.kwargs.get("user_id")
        if principal is not None and principal.read_only and request.method not in SAFE_METHODS:
            raise Forbidden("This token's scope is read-only: writing needs the `write` scope "
                            "(or `moderate`, `admin`).", field="Authorization")
        if allowed(principal, request.method, owner, post="post_id" in view.kwargs):
            return True
        if principal is None:
            raise exceptions.NotAuthenticated("This request needs a token.")
        raise Forbidden(f"A {principal.role} may not {request.method} another user's "
                        f"{'post' if 'post_id' in view.kwargs else 'data'} (user {owner}).")
