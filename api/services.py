"""Writes. Keyword-only `entity_action` functions; views stay thin.

Accounts (meta) and users (data) live in different databases, so a user's sign-up, email change
and deletion are small state machines on the account row, each step committed on its own:

    sign-up:  account pending  -> user inserted       -> account active
    email:    account updating -> user updated        -> account active
    delete:   account deleting -> user (+posts) gone  -> account deleted

While a request runs a protocol it holds a PostgreSQL advisory lock on the user id in `meta`.
The lock dies with the request's connection, so `accounts_reconcile` can tell a live request
(lock held: leave it alone) from a dead one (lock free: roll it forward or back). No interleaving
of a SIGKILL leaves an orphan or a duplicate for longer than one reconcile pass.

Each write of a user or post tells the application cache what it changed (api.caching.writes),
once its transaction has committed, so every app server's cached copies are invalidated. With
`read_model` on, each such write also inserts a row into the read model's outbox as the last
statement of its own transaction (api/readmodel.py), which the relay turns into a new document.

With `cache.mode` = `write-behind` (api/caching/behind.py), profile updates and post creates and
updates are validated here, then queued instead of written; `flush_write` applies them later, in
the flusher. Sign-up, email changes and deletes stay synchronous: they need the database's answer
(uniqueness, existence) before they can be acknowledged.
"""
from __future__ import annotations

import hashlib
import hmac
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import IntegrityError, connections
from django.db.models import F, Q
from django.utils import timezone

from api import faults, readmodel, selectors
from api.caching import behind
from api.caching import querycache
from api.caching import writes as cache
from api.gateway.errors import Conflict, NotFound
from api.models import Account, Post, User
from api.routing import db, ids, placement
from api.routing.db import META


class InProgress(Conflict):
    """Another live request holds this account's lock."""


@contextmanager
def account_lock(user_id: int, *, wait: bool):
    """Hold the advisory lock on `user_id` in meta; yields False if `wait` is off and it is taken."""
    with connections[META].cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_lock(%s)", [user_id])
            got = True
        else:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [user_id])
            got = cursor.fetchone()[0]
        try:
            yield got
        finally:
            if got:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [user_id])


def _fingerprint(username: str, email: str, password: str) -> str:
    message = f"{username}\x00{email}\x00{password}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def user_sign_up(*, username: str, email: str, password: str | None, name: str = "", bio: str = "",
                 role: str = "member") -> tuple[User, bool]:
    """Create the account and the user. Returns (user, created): an identical retry of a sign-up
    that died midway resumes it and returns the same user instead of a conflict. Never queued by
    write-behind: only meta can say whether the username and email are free."""
    behind.mark("sync")
    fingerprint = _fingerprint(username, email, password or "")
    for _attempt in range(3):
        user_id = ids.next_id()
        with account_lock(user_id, wait=True):
            try:
                Account.objects.create(user_id=user_id, username=username, email=email, role=role,
                                       password=make_password(password), state=Account.PENDING,
                                       signup_fingerprint=fingerprint)
            except IntegrityError:
                pass  # someone has this username or email: decide below, outside this lock
            else:
                placement.assign(user_id)  # `directory` only: the user's shard, in meta too
                faults.point("signup-after-meta")
                user = _insert_user(user_id, username, email, name, bio)
                faults.point("signup-after-data")
                Account.objects.filter(user_id=user_id).update(state=Account.ACTIVE)
                return user, True
        resumed = _resolve_taken(username, email, fingerprint, name, bio)
        if resumed is not None:
            return resumed, False
    raise Conflict("username", "The username or email changed hands repeatedly; retry.")


def _resolve_taken(username, email, fingerprint, name, bio) -> User | None:
    """The username or email is taken. Resume our own dead sign-up, clear a dead stranger's
    pending one (return None to try again), or report the conflict."""
    holder = Account.objects.filter(Q(username=username) | Q(email=email)).first()
    if holder is None:
        return None  # it was released meanwhile
    field = "username" if holder.username == username else "email"
    if holder.state == Account.ACTIVE and holder.signup_fingerprint != fingerprint:
        raise Conflict(field, f"That {field} is taken.")
    with account_lock(holder.user_id, wait=False) as got:
        if not got:
            raise InProgress(field, f"A sign-up or change of this {field} is in progress; retry shortly.")
        holder.refresh_from_db()
        if holder.signup_fingerprint == fingerprint and holder.state in (Account.PENDING, Account.ACTIVE):
            user = _insert_user(holder.user_id, holder.username, holder.email, name, bio)
            Account.objects.filter(user_id=holder.user_id).update(state=Account.ACTIVE)
            return user
        if holder.state == Account.ACTIVE:
            raise Conflict(field, f"That {field} is taken.")
        _reconcile_locked(holder)
        return None


def _insert_user(user_id: int, username: str, email: str, name: str, bio: str) -> User:
    """Insert the data row on the user's shard, or return it if a previous attempt already did."""
    now = ids.created_at(user_id)

    def insert():
        user = User.objects.create(id=user_id, username=username, email=email, name=name, bio=bio,
                                   post_count=0, created_at=now, updated_at=now)
        cache.user_changed(user_id)
        readmodel.record(user_id, "sign-up")  # the read model's outbox, in this transaction
        return user

    try:
        return placement.write(user_id, insert)
    except IntegrityError:
        existing = _find_user(user_id)
        if existing is None:
            raise Conflict("username", "The username or email is held by another user.") from None
        return existing


def _find_user(user_id: int) -> User | None:
    try:
        return selectors.user_get(user_id=user_id)
    except NotFound:
        return None


def user_update(*, user_id: int, changes: dict) -> User:
    """With write-behind, a name or bio change is queued; an email change never is (meta must
    say whether the new email is free)."""
    behind.mark(None)
    user = selectors.user_get(user_id=user_id)
    new_email = changes.get("email")
    if new_email is None or new_email == user.email:
        if behind.active():
            try:
                return _queue_user_update(user, changes)
            except behind.Unreachable:
                pass  # written now instead; the response says sync-fallback
        return _update_user_row(user_id, changes)
    behind.mark("sync")
    with account_lock(user_id, wait=True):
        try:
            moved = Account.objects.filter(user_id=user_id, state=Account.ACTIVE).update(
                email=new_email, state="updating")
        except IntegrityError:
            raise Conflict("email", "That email is taken.") from None
        if not moved:
            raise InProgress("email", "This account is being changed or deleted; retry shortly.")
        user = _update_user_row(user_id, changes)
        Account.objects.filter(user_id=user_id).update(state=Account.ACTIVE)
        return user


def _queue_user_update(user: User, changes: dict) -> User:
    """Queue the change; answer with the row, every change still queued for it, and this one."""
    at = behind.now()
    fields = {name: changes[name] for name in PROFILE_FIELDS if name in changes}
    merged = behind.enqueue("user", user.id, fields, at=at)
    for name in PROFILE_FIELDS:
        if name in merged:
            setattr(user, name, merged[name])
    user.updated_at = at
    behind.put_user(user)  # a read right after this write is served the new representation
    return user


PROFILE_FIELDS = ("name", "bio")
POST_FIELDS = ("title", "body")


def _update_user_row(user_id: int, changes: dict) -> User:
    def update():
        if not User.objects.filter(id=user_id).update(**changes, updated_at=timezone.now()):
            raise NotFound("user_id", f"No user {user_id}.")
        user = User.objects.get(id=user_id)
        cache.user_changed(user_id, user=user)  # runs once the transaction has committed
        readmodel.record(user_id, "user")
        return user

    return placement.write(user_id, update)


def user_delete(*, user_id: int) -> None:
    """Synchronous in every mode. Writes of this user still queued by write-behind are rejected
    by the flusher (counted and recorded) once they find the user gone."""
    behind.mark("sync")
    with account_lock(user_id, wait=True):
        marked = Account.objects.filter(user_id=user_id, state=Account.ACTIVE).update(state=Account.DELETING)
        if not marked and _find_user(user_id) is None:
            raise NotFound("user_id", f"No user {user_id}.")
        _delete_user_rows(user_id)
        Account.objects.filter(user_id=user_id).delete()


def _delete_user_rows(user_id: int) -> None:
    def delete():
        Post.objects.filter(user_id=user_id)._raw_delete(db.write_alias())
        User.objects.filter(id=user_id)._raw_delete(db.write_alias())
        cache.user_deleted(user_id)  # every cached key of the user, in every layer, once committed
        readmodel.record(user_id, "delete")

    placement.write(user_id, delete)
    placement.forget(user_id)
    behind.drop_user(user_id)
    from api import avatars  # (it imports this module)
    avatars.delete_user_blobs(user_id)  # committed: a blob that fails to go is an orphan, not an error


def post_create(*, user_id: int, title: str, body: str) -> Post:
    behind.mark(None)
    if behind.active():
        selectors.user_get(user_id=user_id)  # a 404 now, not a rejection after the acknowledgement
    post_id = ids.next_id()
    now = ids.created_at(post_id)
    if behind.active():
        try:
            behind.enqueue("post_create", user_id, {"title": title, "body": body}, post_id=post_id, at=now,
                           record_fields={"user_id": str(user_id), "created_at": now.isoformat()})
        except behind.Unreachable:
            pass  # written now instead, with the same id
        else:
            cache.invalidate(user_id, user_entry=False, posts=True)  # the user's entry keeps a queued profile
            return Post(id=post_id, user_id=user_id, title=title, body=body, created_at=now, updated_at=now)

    def create(post_id):
        # The UPDATE takes the user's row lock first, so concurrent writers serialise on it and
        # post_count stays exact; zero rows means there is no such user.
        if not User.objects.filter(id=user_id).update(post_count=F("post_count") + 1):
            raise NotFound("user_id", f"No user {user_id}.")
        now = ids.created_at(post_id)
        post = Post.objects.create(id=post_id, user_id=user_id, title=title, body=body,
                                   created_at=now, updated_at=now)
        cache.posts_changed(user_id, post_count=True)
        readmodel.record(user_id, "post")
        return post

    try:
        return placement.write(user_id, lambda: create(post_id))
    except IntegrityError:
        # A taken id: only after the state Valkey lost id leases (persistence off; see
        # docs/reliability.md, "Write-behind"). A new id comes from a later millisecond.
        return placement.write(user_id, lambda: create(ids.next_id()))


def post_update(*, user_id: int, post_id: int, changes: dict) -> Post:
    behind.mark(None)
    if behind.active():
        try:
            return _queue_post_update(user_id, post_id, changes)
        except behind.Unreachable:
            pass  # written now instead; the response says sync-fallback

    def update():
        if not Post.objects.filter(id=post_id, user_id=user_id).update(**changes, updated_at=timezone.now()):
            raise NotFound("post_id", f"No post {post_id} of user {user_id}.")
        post = Post.objects.get(id=post_id)
        cache.posts_changed(user_id, post_count=False)
        readmodel.record(user_id, "post")
        return post

    return placement.write(user_id, update)


def _queue_post_update(user_id: int, post_id: int, changes: dict) -> Post:
    """Queue the change. The answer starts from what is queued for the post (its create may not be
    flushed yet), else from its row; a missing post is a 404 now."""
    base = None
    queued = behind.queued(behind.post_record(post_id))
    if queued is None or int(queued.get("user_id", 0)) != user_id:
        post = selectors.post_get(user_id=user_id, post_id=post_id)
        base = {"user_id": str(user_id), "title": post.title, "body": post.body,
                "created_at": post.created_at.isoformat()}
    at = behind.now()
    fields = {name: changes[name] for name in POST_FIELDS if name in changes}
    merged = behind.enqueue("post_update", user_id, fields, post_id=post_id, at=at, record_fields=base)
    cache.invalidate(user_id, user_entry=False, posts=True)
    return Post(id=post_id, user_id=user_id, title=merged["title"], body=merged["body"],
                created_at=datetime.fromisoformat(merged["created_at"]), updated_at=at)


def post_delete(*, user_id: int, post_id: int) -> None:
    """Synchronous in every mode; a post whose create is still queued is a 409 until it is flushed."""
    behind.mark("sync")

    def delete():
        if not Post.objects.filter(id=post_id, user_id=user_id)._raw_delete(db.write_alias()):
            if behind.active() and _still_queued(post_id):
                raise Conflict("post_id", f"Post {post_id} is still queued by write-behind; retry once it "
                                          "is flushed.")
            raise NotFound("post_id", f"No post {post_id} of user {user_id}.")
        User.objects.filter(id=user_id).update(post_count=F("post_count") - 1)
        cache.posts_changed(user_id, post_count=True)
        readmodel.record(user_id, "post")

    placement.write(user_id, delete)


def _still_queued(post_id: int) -> bool:
    try:
        return behind.queued(behind.post_record(post_id)) is not None
    except behind.Unreachable:
        return False


# --- write-behind: the flusher's side (manage.py flush_writes) -------------------------------------
def flush_write(write: dict) -> str | None:
    """Apply one queued write on its user's shard. Returns None once it is in place (or already
    was: a replayed entry), else why it can no longer apply. Every update applies only over an
    older row (`updated_at` is its acknowledgement time), so a replay never undoes a newer write."""
    user_id, post_id = int(write["user_id"]), write.get("post_id")
    at = datetime.fromisoformat(write["at"])
    kind, fields = write["kind"], write["fields"]
    if kind == "user":
        fields = {name: fields[name] for name in PROFILE_FIELDS if name in fields}
        return _flushed(user_id, lambda: _flush_user(user_id, fields, at), user=True, posts=False)
    fields = {name: fields[name] for name in POST_FIELDS if name in fields}
    if kind == "post_create":  # the user's post_count changes too
        return _flushed(user_id, lambda: _flush_post_create(user_id, int(post_id), fields, at), user=True, posts=True)
    if kind == "post_update":
        return _flushed(user_id, lambda: _flush_post_update(user_id, int(post_id), fields, at), user=False, posts=True)
    return f"unknown kind of write {kind!r}"


def _flushed(user_id: int, work, *, user: bool, posts: bool) -> str | None:
    """`work()` in its shard's transaction; a write that applied moves the query cache's generations
    of what it touched once it commits, as every synchronous write does (api.caching.querycache)."""
    def run():
        why = work()
        if why is None:
            querycache.changed(user_id, user=user, posts=posts)
            readmodel.record(user_id, "flush")
        return why
    return placement.write(user_id, run)


def _flush_user(user_id: int, fields: dict, at: datetime) -> str | None:
    if User.objects.filter(id=user_id, updated_at__lte=at).update(**fields, updated_at=at):
        return None
    if User.objects.filter(id=user_id).exists():
        return None  # a newer write is in place already
    return f"no user {user_id}: deleted after the write was acknowledged"


def _flush_post_create(user_id: int, post_id: int, fields: dict, at: datetime) -> str | None:
    with connections[db.write_alias()].cursor() as cursor:
        # The user's row lock first, as post_create's UPDATE takes it: post_count stays exact.
        cursor.execute("SELECT 1 FROM api_user WHERE id = %s FOR UPDATE", [user_id])
        if cursor.fetchone() is None:
            return f"no user {user_id}: deleted after the post was acknowledged"
        cursor.execute("INSERT INTO api_post (id, user_id, title, body, created_at, updated_at) "
                       "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                       [post_id, user_id, fields["title"], fields.get("body", ""), at, at])
        inserted = cursor.rowcount == 1
    if inserted:
        User.objects.filter(id=user_id).update(post_count=F("post_count") + 1)
        return None
    owner = Post.objects.filter(id=post_id).values_list("user_id", flat=True).first()
    return None if owner == user_id else f"post id {post_id} is taken by a post of user {owner}"


def _flush_post_update(user_id: int, post_id: int, fields: dict, at: datetime) -> str | None:
    mine = Post.objects.filter(id=post_id, user_id=user_id)
    if mine.filter(updated_at__lte=at).update(**fields, updated_at=at) or mine.exists():
        return None  # applied, or a newer write is in place already
    return f"no post {post_id} of user {user_id}: deleted after the update was acknowledged"


def accounts_reconcile(*, older_than_s: float = 5.0) -> dict:
    """Finish or undo every protocol whose request died (its lock is free). Returns counts."""
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    counts = {"activated": 0, "removed": 0, "synced": 0, "deleted": 0, "busy": 0}
    # A pending sign-up gets a moment to finish; an update or delete in flight is skipped by its lock.
    stuck = Account.objects.exclude(state=Account.ACTIVE).filter(
        ~Q(state=Account.PENDING) | Q(created_at__lt=cutoff))
    for account in stuck:
        with account_lock(account.user_id, wait=False) as got:
            if not got:
                counts["busy"] += 1
                continue
            account.refresh_from_db()
            counts[_reconcile_locked(account)] += 1
    return counts


def _reconcile_locked(account: Account) -> str:
    """Roll one dead protocol forward or back. The caller holds the account's lock."""
    if account.state == Account.PENDING:
        if _find_user(account.user_id) is not None:
            Account.objects.filter(user_id=account.user_id).update(state=Account.ACTIVE)
            return "activated"
        placement.forget(account.user_id)
        Account.objects.filter(user_id=account.user_id).delete()
        return "removed"
    if account.state == "updating":
        # The new email was reserved in meta before the data write: roll forward to it.
        _update_user_row(account.user_id, {"email": account.email})
        Account.objects.filter(user_id=account.user_id).update(state=Account.ACTIVE)
        return "synced"
    if account.state == Account.DELETING:
        _delete_user_rows(account.user_id)
        Account.objects.filter(user_id=account.user_id).delete()
        return "deleted"
    return "busy"
