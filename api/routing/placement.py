"""Which shard holds a user, and the check that keeps a write on the shard that owns it.

The router's guess comes from the topology (`sharding`, `shards`; api/routing/shards.py, and the
`directory` table in meta). The truth is each shard's fence row (api.models.ShardFence), which
a reshard moves batch by batch. Every write transaction reads its shard's fence under a shared
advisory lock (FENCE_LOCK) before touching a row: if the fence says another shard owns the user,
the transaction is abandoned and the write goes there instead (`Moved`). A batch being moved
holds the lock exclusively, so no write can land between its copy and its delete; a write that
waited for it reads the new fence.

A read that finds nothing asks its shard's fence whether the user was moved away, and if so
reads again on the owner's primary. So a worker still on the old topology (for up to a second
after a reshard ends), or a read racing a batch, still finds its row, at the cost of one query.

`directory` is the one strategy that is not a function of the id: each user's shard is a row in
meta, assigned at sign-up to the shard with the fewest users. That makes meta a single point of
failure for every request that misses this process's copy of the table.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from django.db import transaction

from workbench import topology

from . import db, nodes, shards
from .ids import MAX_ID

DIRECTORY_CACHE_MAX = 200_000
# Shared by every write transaction on a shard, exclusive for a reshard batch. The function
# shard_fence_for_write() (api/migrations/0004_fence_lock.py) takes it, then reads the fence.
FENCE_LOCK = 0x5B5A4E


class Moved(Exception):
    """The user belongs to another shard than the one this transaction runs on."""

    def __init__(self, owner: int):
        super().__init__(f"owned by shard {owner}")
        self.owner = owner


@dataclass(frozen=True)
class Fence:
    job: int = 0
    old_strategy: str = "hash"
    old_shards: int = 1
    new_strategy: str = "hash"
    new_shards: int = 1
    moved_upto: int = MAX_ID

    def owner(self, user_id: int) -> int:
        if user_id <= self.moved_upto:
            return place(user_id, self.new_strategy, self.new_shards, moving=self.job_running)
        return place(user_id, self.old_strategy, self.old_shards, moving=False)

    @property
    def job_running(self) -> bool:
        return (self.old_strategy, self.old_shards) != (self.new_strategy, self.new_shards) or \
            self.moved_upto != MAX_ID


FENCE_COLUMNS = "job, old_strategy, old_shards, new_strategy, new_shards, moved_upto"


def read_fence(cursor, *, for_write: bool = False) -> Fence:
    """The fence of the shard `cursor` is connected to; `for_write` holds the shared lock on it
    until the transaction ends."""
    source = "shard_fence_for_write()" if for_write else "shard_fence WHERE id = 1"
    cursor.execute(f"SELECT {FENCE_COLUMNS} FROM {source}")
    row = cursor.fetchone()
    return Fence(*row) if row else Fence()


# --- placement -----------------------------------------------------------------------------------
def place(user_id: int, strategy: str, count: int, *, moving: bool = False) -> int:
    """The shard of `user_id` under a mapping. For `directory`, `moving` reads where a running
    reshard puts the user (next_shard) rather than where it was."""
    if strategy != "directory":
        return shards.shard_of(user_id, count, strategy)
    return directory_shard(user_id, count, moving=moving)


def locate(user_id: int) -> int:
    """The router's guess: the topology's mapping. During a reshard that is the old mapping, and
    a moved user costs one more query (a Moved write, or a read that asks the fence)."""
    t = topology.current().topology
    return place(user_id, t.sharding, t.shards)


# --- running work on the owner -------------------------------------------------------------------
def write(user_id: int, work, *, attempts: int = 4):
    """Run `work()` in one transaction on the primary of the shard that owns `user_id`, after
    checking that shard's fence. Returns what `work` returns."""
    shard = locate(user_id)
    for _ in range(attempts):
        with db.on_shard(shard):
            try:
                with transaction.atomic(using=db.write_alias()):
                    check_fence(user_id)
                    return work()
            except Moved as moved:
                shard = moved.owner
    # Two fences disagree: a reshard died between two shards' commits of one batch. The rows are
    # safe (its `--resume` or `--rollback` settles them); the write is refused until then.
    from api.gateway.errors import Unavailable
    raise Unavailable(f"User {user_id} is being moved between shards (an interrupted reshard); retry shortly.")


def check_fence(user_id: int) -> None:
    """Inside a write transaction: raise Moved unless this shard owns `user_id`."""
    from django.db import connections
    with connections[db.write_alias()].cursor() as cursor:
        owner = read_fence(cursor, for_write=True).owner(user_id)
    if owner != db.current_shard():
        raise Moved(owner)


def read(user_id: int, work, not_found: type[Exception]):
    """Run `work()` on the shard that holds `user_id`. If it raises `not_found` there, ask that
    shard's fence whether the user moved away, and if so run it again on the owner's primary."""
    shard = locate(user_id)
    with db.on_shard(shard):
        try:
            return work()
        except not_found:
            # With one shard and no reshard under way nothing can have moved (a reshard takes
            # seconds to start, and every worker sees its topology within REFRESH_S), so a 404
            # costs one query there.
            if topology.current().topology.shard_groups == 1:
                raise
            owner = fence_owner(user_id)
            if owner == shard:
                raise
    with db.on_shard(owner):
        db.read_on_primary()
        return work()


def fence_owner(user_id: int) -> int:
    """Who owns `user_id` according to the fence of this context's shard (read on its primary)."""
    from django.db import connections
    with connections[db.write_alias()].cursor() as cursor:
        return read_fence(cursor).owner(user_id)


# --- the directory -------------------------------------------------------------------------------
_directory: dict[int, int] = {}
_directory_version = -1
_directory_lock = threading.Lock()


def directory_shard(user_id: int, count: int, *, moving: bool = False) -> int:
    """The user's shard from meta's directory table. Entries change only while a reshard runs or
    when a user is deleted, so at rest this process keeps a copy (dropped whenever the topology
    changes); during a reshard every lookup asks meta. An unknown user gets shard 1, where a read
    then finds nothing (404) and a write is refused by the fence check."""
    global _directory_version
    doc = topology.current()
    at_rest = doc.topology.reshard_shards == 0 and not moving
    if at_rest:
        with _directory_lock:
            if _directory_version != doc.version:
                _directory.clear()
                _directory_version = doc.version
            if user_id in _directory:
                return _directory[user_id]
    from api.models import ShardDirectory
    row = ShardDirectory.objects.filter(user_id=user_id).values_list("shard", "next_shard").first()
    if row is None:
        return 1
    shard = (row[1] or row[0]) if moving else (row[0] or row[1])
    shard = min(max(shard or 1, 1), count)
    if at_rest:
        with _directory_lock:
            if len(_directory) >= DIRECTORY_CACHE_MAX:
                _directory.clear()
            _directory[user_id] = shard
    return shard


def assign(user_id: int) -> None:
    """A new user, before its row is written: under `directory`, give it the shard holding the
    fewest users (the controller's per-shard counts), so the table balances the load."""
    t = topology.current().topology
    if t.sharding != "directory":
        return  # a reshard moving to `directory` assigns new users when its last batch reaches them
    from api.models import ShardDirectory
    shard = least_loaded(t.shards)
    ShardDirectory.objects.update_or_create(user_id=user_id, defaults={"shard": shard})


_assigned: dict[int, int] = {}   # users this process assigned since the report it counted from
_assigned_at = 0.0


def least_loaded(count: int) -> int:
    """The shard with the fewest users: the controller's count of meta's directory (once a second,
    exact as of then) plus what this process assigned since, so a burst of sign-ups does not all go
    to one shard. Without that count (meta was unreachable), each primary's row statistics."""
    global _assigned_at
    report = nodes.current()
    directory = report.nodes.get("meta", {}).get("directory")
    with _directory_lock:
        if report.at != _assigned_at:
            _assigned.clear()
            _assigned_at = report.at
        if directory is not None:
            users = {k: directory.get(str(k), 0) + _assigned.get(k, 0) for k in range(1, count + 1)}
        else:
            users = {k: (report.nodes.get(shards.primary_alias(k), {}).get("users") or 0) + _assigned.get(k, 0)
                     for k in range(1, count + 1)}
        shard = min(users, key=lambda k: (users[k], k))
        _assigned[shard] = _assigned.get(shard, 0) + 1
    return shard


def forget(user_id: int) -> None:
    """A deleted user's directory entry goes too."""
    from api.models import ShardDirectory
    ShardDirectory.objects.filter(user_id=user_id).delete()
    with _directory_lock:
        _directory.pop(user_id, None)
