"""Resharding: moving users (and their posts) to a new shard count or strategy while the API keeps
serving reads and writes. `python manage.py reshard` drives it; the lessons read its job rows.

How ownership stays exact (see api/routing/placement.py for the fence):
1. Start: the controller is asked to run the old and the new shards (`reshard_shards`), and every
   shard's fence is set to (old mapping, new mapping, moved_upto = 0): nothing has moved yet.
2. Batches, in ascending user id: the next BATCH_USERS ids after moved_upto, [lo, hi]; the last
   batch runs to the largest id, so users who signed up meanwhile are moved too. Per batch:
   a. take every source shard's fence lock exclusively: writes on those shards wait (a write
      takes it shared to read the fence, first in its transaction), and those in flight finish;
   b. on a second connection to each target, delete any leftover copy of the users to move (from
      an interrupted run) and COPY in their user and post rows; compare a checksum of the moved
      rows on both sides; commit the targets;
   c. on each source, delete the moved rows and set moved_upto = hi in the same transaction.
   A write that waited in (a) then reads the new fence, finds its user moved, and goes to the
   owner (placement.Moved). A read that finds nothing asks the fence and follows it.
3. Finish: the directory (if any) takes its new column, the fences go back to rest with the new
   mapping, and the topology gets the new `sharding` and `shards`; the controller retires shards
   that are no longer used once they are empty.

A SIGKILL of this process at any point loses nothing: before (c) commits, the source still owns
its rows (and the targets' copies are deleted and redone by the next run); after it, the target
owns them. Two sources can disagree for a moment (one committed, one not), so the batch in flight
is recorded in the job row, and resuming redoes it on every shard whose fence is still behind.
Rolling back runs the same batches downwards, from the new mapping to the old.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass

import psycopg
from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from workbench import topology

from . import shards
from .db import META
from .placement import FENCE_LOCK
from .ids import MAX_ID

BATCH_USERS = int(os.environ.get("WORKBENCH_RESHARD_BATCH") or 500)
RESHARD_LOCK = 0x5E5A4D   # meta advisory lock: one reshard process at a time
USER_COLUMNS = ("id", "username", "email", "name", "bio", "post_count", "created_at", "updated_at", "avatar")
POST_COLUMNS = ("id", "user_id", "title", "body", "created_at", "updated_at")
CONTROLLER_TIMEOUT_S = 300


class ReshardError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mapping:
    strategy: str
    shards: int
    role: str  # for `directory`: "old" reads the shard column, "new" the next_shard column

    def owners(self, user_ids: list[int]) -> dict[int, int | None]:
        if self.strategy != "directory":
            return {u: shards.shard_of(u, self.shards, self.strategy) for u in user_ids}
        with connections[META].cursor() as cur:
            cur.execute("SELECT user_id, shard, next_shard FROM meta_shard_directory WHERE user_id = ANY(%s)",
                        [list(user_ids)])
            rows = {u: (s, n) for u, s, n in cur.fetchall()}
        out = {}
        for u in user_ids:
            s, n = rows.get(u, (None, None))
            out[u] = (n or s) if self.role == "new" else (s or n)
        return out


def _connect(shard: int) -> psycopg.Connection:
    return psycopg.connect(settings.STACK.shard_url(shard), connect_timeout=5)


def _fence_sql(job: int, old: Mapping, new: Mapping, moved_upto: int):
    return ("UPDATE shard_fence SET job = %s, old_strategy = %s, old_shards = %s, new_strategy = %s, "
            "new_shards = %s, moved_upto = %s WHERE id = 1",
            (job, old.strategy, old.shards, new.strategy, new.shards, moved_upto))


def fences(groups: int) -> dict[int, tuple]:
    out = {}
    for k in range(1, groups + 1):
        with _connect(k) as conn:
            out[k] = conn.execute("SELECT job, old_strategy, old_shards, new_strategy, new_shards, moved_upto "
                                  "FROM shard_fence WHERE id = 1").fetchone()
    return out


def table_sums(groups: int) -> dict:
    """Rows and an order-free checksum (sum of each row's 64-bit hash) of users and posts over all
    shards: equal before and after a reshard that took no writes meanwhile."""
    total = {"users": 0, "posts": 0, "users_sum": 0, "posts_sum": 0}
    for k in range(1, groups + 1):
        with _connect(k) as conn:
            for table, name in (("api_user", "users"), ("api_post", "posts")):
                n, s = conn.execute(f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "
                                    f"FROM {table} t").fetchone()
                total[name] += n
                total[f"{name}_sum"] += int(s)
    total["users_sum"] = str(total["users_sum"])
    total["posts_sum"] = str(total["posts_sum"])
    return total


class Resharder:
    def __init__(self, progress=None):
        self.progress = progress or (lambda job: None)
        self.written_version = 0  # the topology version this reshard last wrote

    # --- entry points ----------------------------------------------------------------------------
    # Each holds RESHARD_LOCK on its own meta connection while it runs, and lets go when it returns.
    def start(self, to_shards: int, to_strategy: str):
        with self._locked():
            return self._start(to_shards, to_strategy)

    def resume(self):
        with self._locked():
            return self._resume()

    def rollback(self):
        with self._locked():
            return self._rollback()

    def _start(self, to_shards: int, to_strategy: str):
        from api.models import ReshardJob
        if not 1 <= to_shards <= shards.MAX_SHARDS:
            raise ReshardError(f"--to must be 1..{shards.MAX_SHARDS}, not {to_shards}")
        if self.active() is not None:
            raise ReshardError("a reshard is already under way: `reshard --resume` or `reshard --rollback`")
        t = topology.store().read().topology
        if (t.sharding, t.shards) == (to_strategy, to_shards):
            raise ReshardError(f"the data is already on {to_shards} shard(s) by {to_strategy}")
        cap = topology.node_cap_error(t.replicas, max(t.shards, to_shards))
        if cap:
            raise ReshardError(cap)
        job = ReshardJob.objects.create(from_strategy=t.sharding, from_shards=t.shards, to_strategy=to_strategy,
                                        to_shards=to_shards, moved_upto=0)
        self._set_topology(reshard_shards=to_shards)  # the controller starts the new shards
        self._wait_for_shards(self.groups(job))
        _fault_point("started", 0)
        self._begin(job)
        return self.forward(job)

    def _begin(self, job) -> None:
        """Count the rows, and set the job's fence on every shard that does not have it yet
        (nothing moved off it so far). A run killed before this finished gets it from --resume
        or --rollback: moving on without it would flip the topology over unmoved rows."""
        if not job.before:
            job.before = table_sums(self.groups(job))
            job.users_total = job.before["users"]
            job.save()
        old, new = self.mappings(job)
        for k, fence in fences(self.groups(job)).items():
            if fence[0] != job.id:
                with _connect(k) as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (FENCE_LOCK,))
                    conn.execute(*_fence_sql(job.id, old, new, 0))

    def _resume(self):
        job = self._active_or_fail()
        self._job_topology(job)
        self._wait_for_shards(self.groups(job))
        self._begin(job)
        return self.forward(job) if job.state == job.MOVING else self.backward(job)

    def _rollback(self):
        from api.models import ReshardJob
        job = self._active_or_fail()
        self._job_topology(job)
        self._wait_for_shards(self.groups(job))
        self._begin(job)
        if job.state == ReshardJob.MOVING:
            self._redo_in_flight(job, forward=True)  # every fence agrees before going back
            job.state = ReshardJob.ROLLING_BACK
            job.save()
        return self.backward(job)

    @staticmethod
    def active():
        from api.models import ReshardJob
        return ReshardJob.objects.filter(state__in=[ReshardJob.MOVING, ReshardJob.ROLLING_BACK]).first()

    # --- the two directions ----------------------------------------------------------------------
    def forward(self, job):
        self._redo_in_flight(job, forward=True)
        while job.moved_upto < MAX_ID:
            lo = job.moved_upto + 1
            ids = self._next_ids(job, lo, ascending=True)
            hi = ids[BATCH_USERS - 1] if len(ids) >= BATCH_USERS else MAX_ID
            self._batch(job, lo, hi, forward=True)
        self._finish(job)
        return job

    def backward(self, job):
        self._redo_in_flight(job, forward=False)
        while job.moved_upto > 0:
            hi = job.moved_upto
            ids = self._next_ids(job, hi, ascending=False)
            lo = ids[BATCH_USERS - 1] if len(ids) >= BATCH_USERS else 1
            self._batch(job, lo, hi, forward=False)
        self._finish(job, rolled_back=True)
        return job

    def _redo_in_flight(self, job, *, forward: bool) -> None:
        if job.batch_lo is not None:
            self._batch(job, job.batch_lo, job.batch_hi, forward=forward)

    # --- one batch ---------------------------------------------------------------------------------
    def _batch(self, job, lo: int, hi: int, *, forward: bool) -> None:
        old, new = self.mappings(job)
        src, dst = (old, new) if forward else (new, old)
        after = hi if forward else lo - 1
        job.batch_lo, job.batch_hi = lo, hi
        job.save(update_fields=["batch_lo", "batch_hi"])
        groups = self.groups(job)
        # Sources: every shard whose fence has not passed this batch (all of them, unless a run
        # was interrupted between two sources' commits).
        behind = [k for k, f in fences(groups).items() if (f[5] < hi if forward else f[5] >= lo)]
        locks = {k: _connect(k) for k in behind}
        copies: dict[int, psycopg.Connection] = {}
        try:
            rows: dict[int, dict] = {}
            for k, conn in locks.items():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (FENCE_LOCK,))
                users = conn.execute(f"SELECT {', '.join(USER_COLUMNS)} FROM api_user WHERE id BETWEEN %s AND %s",
                                     (lo, hi)).fetchall()
                rows[k] = {u[0]: u for u in users}
            every = [u for k in rows for u in rows[k]]
            owner_now = src.owners(every)
            target = self._targets(job, dst, rows, owner_now)
            moving: dict[int, list[int]] = {}   # source -> user ids leaving it
            stale: dict[int, list[int]] = {}    # copies left by an interrupted run: not owned here
            for k in rows:
                for u in rows[k]:
                    if owner_now[u] == k and target[u] != k:
                        moving.setdefault(k, []).append(u)
            arriving = {u for ids in moving.values() for u in ids}
            for k in rows:
                for u in rows[k]:
                    # A copy of a user this batch moves here is replaced by the fresh copy below
                    # (on the copy connection); any other row this shard does not own goes.
                    if owner_now[u] != k and not (u in arriving and target[u] == k):
                        stale.setdefault(k, []).append(u)
            moved_users = moved_posts = 0
            for k, ids in moving.items():
                posts = locks[k].execute(f"SELECT {', '.join(POST_COLUMNS)} FROM api_post WHERE user_id = ANY(%s)",
                                         (ids,)).fetchall()
                want = _sums(locks[k], ids)
                by_target: dict[int, list[int]] = {}
                for u in ids:
                    by_target.setdefault(target[u], []).append(u)
                for t, tids in by_target.items():
                    conn = copies.get(t) or copies.setdefault(t, _connect(t))
                    conn.execute("DELETE FROM api_post WHERE user_id = ANY(%s)", (tids,))
                    conn.execute("DELETE FROM api_user WHERE id = ANY(%s)", (tids,))
                    tset = set(tids)
                    _copy(conn, "api_user", USER_COLUMNS, [rows[k][u] for u in tids])
                    _copy(conn, "api_post", POST_COLUMNS, [p for p in posts if p[1] in tset])
                got = [0, 0, 0, 0]
                for t, tids in by_target.items():
                    for i, v in enumerate(_sums(copies[t], tids)):
                        got[i] += v
                if got != want:
                    raise ReshardError(f"checksum mismatch moving {len(ids)} users off shard {k}: "
                                       f"source {want}, targets {got}")
                moved_users += len(ids)
                moved_posts += len(posts)
            for conn in copies.values():
                conn.commit()
            _fault_point("after-copy", job.batches + 1)
            for k, conn in locks.items():
                for ids in (moving.get(k, []), stale.get(k, [])):
                    if ids:
                        conn.execute("DELETE FROM api_post WHERE user_id = ANY(%s)", (ids,))
                        conn.execute("DELETE FROM api_user WHERE id = ANY(%s)", (ids,))
                conn.execute("UPDATE shard_fence SET moved_upto = %s WHERE id = 1", (after,))
                conn.commit()
        finally:
            for conn in [*locks.values(), *copies.values()]:
                conn.close()
        job.moved_upto = after
        job.batch_lo = job.batch_hi = None
        job.batches += 1
        job.users_seen += len(every)
        job.users_moved += moved_users if forward else -moved_users
        job.posts_moved += moved_posts if forward else -moved_posts
        job.save()
        self.progress(job)

    def _targets(self, job, dst: Mapping, rows: dict, owner_now: dict) -> dict[int, int]:
        """Where each user of the batch goes. For a `directory` target, the table is filled here:
        a user stays on its shard while that shard is under its even share, else it goes to the
        shard with the fewest so far, so the fewest users move."""
        every = sorted(owner_now)
        if dst.strategy != "directory" or dst.role == "old":
            return dst.owners(every)
        with connections[META].cursor() as cur:
            cur.execute("SELECT next_shard, count(*) FROM meta_shard_directory WHERE next_shard IS NOT NULL "
                        "GROUP BY 1")
            kept = {k: 0 for k in range(1, dst.shards + 1)}
            kept.update({k: n for k, n in cur.fetchall() if k in kept})
        share = math.ceil(max(job.users_total, 1) / dst.shards)
        out = {}
        for u in every:
            here = owner_now[u]
            if here is not None and here <= dst.shards and kept[here] < share:
                out[u] = here
            else:
                out[u] = min(kept, key=lambda k: (kept[k], k))
            kept[out[u]] += 1
        with transaction.atomic(using=META), connections[META].cursor() as cur:
            cur.executemany("INSERT INTO meta_shard_directory (user_id, shard, next_shard) VALUES (%s, NULL, %s) "
                            "ON CONFLICT (user_id) DO UPDATE SET next_shard = EXCLUDED.next_shard",
                            list(out.items()))
        return out

    def _next_ids(self, job, start: int, *, ascending: bool) -> list[int]:
        """The next BATCH_USERS user ids from `start` (inclusive), over every shard."""
        op, order = (">=", "ASC") if ascending else ("<=", "DESC")
        ids = []
        for k in range(1, self.groups(job) + 1):
            with _connect(k) as conn:
                ids += [r[0] for r in conn.execute(f"SELECT id FROM api_user WHERE id {op} %s ORDER BY id {order} "
                                                   f"LIMIT %s", (start, BATCH_USERS)).fetchall()]
        return sorted(set(ids), reverse=not ascending)[:BATCH_USERS]

    # --- start and finish ------------------------------------------------------------------------
    def _finish(self, job, rolled_back: bool = False) -> None:
        from api.models import ReshardJob
        old, new = self.mappings(job)
        final = old if rolled_back else new
        with connections[META].cursor() as cur:
            if final.strategy == "directory" and not rolled_back:
                cur.execute("UPDATE meta_shard_directory SET shard = coalesce(next_shard, shard), next_shard = NULL")
            elif final.strategy == "directory":
                cur.execute("UPDATE meta_shard_directory SET next_shard = NULL")
        rest = Mapping(final.strategy, final.shards, "old")
        for k in range(1, self.groups(job) + 1):
            with _connect(k) as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (FENCE_LOCK,))
                conn.execute(*_fence_sql(job.id, rest, rest, MAX_ID))
        if final.strategy != "directory":
            with connections[META].cursor() as cur:
                cur.execute("DELETE FROM meta_shard_directory")
        # Every row is on the final shards now; the others are retired once the topology says so.
        job.after = table_sums(final.shards)
        self._set_topology(sharding=final.strategy, shards=final.shards, reshard_shards=0)
        job.state = ReshardJob.ROLLED_BACK if rolled_back else ReshardJob.DONE
        job.finished_at = timezone.now()
        job.seconds = (job.finished_at - job.started_at).total_seconds()
        job.save()

    @staticmethod
    def mappings(job) -> tuple[Mapping, Mapping]:
        return (Mapping(job.from_strategy, job.from_shards, "old"), Mapping(job.to_strategy, job.to_shards, "new"))

    @staticmethod
    def groups(job) -> int:
        return max(job.from_shards, job.to_shards)

    def _active_or_fail(self):
        job = self.active()
        if job is None:
            raise ReshardError("no reshard is under way")
        return job

    @contextlib.contextmanager
    def _locked(self):
        """RESHARD_LOCK in meta: one reshard process at a time; a SIGKILLed one lets go with its
        connection."""
        with psycopg.connect(settings.STACK.meta_db_url, autocommit=True, connect_timeout=5) as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (RESHARD_LOCK,)).fetchone()[0]:
                raise ReshardError("another reshard process is running")
            yield

    def _job_topology(self, job) -> None:
        """What the topology says while a job runs (a run killed while finishing may have changed
        it already): the old placement, and the new shard count for the controller to run."""
        self._set_topology(sharding=job.from_strategy, shards=job.from_shards, reshard_shards=job.to_shards)

    def _set_topology(self, **fields) -> None:
        doc = topology.store().update(lambda d: {**d, **fields}, "reshard", resharding=True)
        topology.remember(doc)
        self.written_version = doc.version

    def _wait_for_shards(self, groups: int) -> None:
        """Until the controller runs `groups` shards, each primary healthy, as it carries out the
        topology this reshard wrote: a pass for an older version may still be retiring a shard
        that looks healthy now (the previous reshard shrank the count)."""
        deadline = time.monotonic() + CONTROLLER_TIMEOUT_S
        names = [shards.primary_alias(k) for k in range(1, groups + 1)]
        while time.monotonic() < deadline:
            report = topology.report()
            if report.fresh() and report.version >= self.written_version and \
                    (report.running or {}).get("shard_groups", 0) >= groups and \
                    all(report.nodes.get(n, {}).get("healthy") for n in names):
                return
            time.sleep(0.2)
        raise ReshardError(f"the controller did not start {groups} shards within {CONTROLLER_TIMEOUT_S}s; "
                           f"see `python manage.py status`")


def _fault_point(name: str, batch: int) -> None:
    """Tests only (WORKBENCH_FAULTS=1): WORKBENCH_RESHARD_PAUSE=name:batch pauses there, after
    saying so on stdout, so a test can SIGKILL this process at the worst moment."""
    if os.environ.get("WORKBENCH_FAULTS") != "1" or os.environ.get("WORKBENCH_RESHARD_PAUSE") != f"{name}:{batch}":
        return
    print(f"PAUSED {name} batch {batch}", flush=True)
    sys.stdout.flush()
    time.sleep(120)


def _sums(conn, ids: list[int]) -> list[int]:
    """Rows and checksums of these users and their posts, on one connection."""
    u = conn.execute("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM api_user t "
                     "WHERE id = ANY(%s)", (ids,)).fetchone()
    p = conn.execute("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM api_post t "
                     "WHERE user_id = ANY(%s)", (ids,)).fetchone()
    return [u[0], int(u[1]), p[0], int(p[1])]


def _copy(conn, table: str, columns: tuple, rows: list) -> None:
    if not rows:
        return
    with conn.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)

