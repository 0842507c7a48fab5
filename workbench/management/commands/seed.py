"""Bulk-load users and posts with COPY: drop indexes and constraints, load, rebuild them, ANALYZE.

Ids are real snowflakes made from each row's created_at (generator 1023 is kept for seeding), so
seeded and live rows sort the same way. Seeded accounts get no password hash: hashing costs about
0.2 s each here; load tests use tokens minted in bulk instead.

With more than one shard, users are partitioned by the topology's placement (the same functions
as api/routing/placement.py, vectorised and checked against it on a sample) and each partition,
with its users' posts, is copied into its own shard's primary, whose indexes are dropped and
rebuilt there. Under `directory` the seed assigns users to the shards with the fewest users first
(round robin when they are even) and writes the directory rows into meta with the accounts.
"""
import contextlib
import sys
import time

import numpy as np
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import OperationalError, connections

from api.queries import INDEX_WORK_LOCK
from api.routing import ids, placement, shards
from api.routing.db import META
from workbench import topology
from workbench.loadgen.workload import SEED_WORDS as WORDS

DAY_MS = 86_400_000
CHUNK = 100_000
PLACEMENT_CHECK = 2_000  # users whose vectorised placement is checked against placement.place


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.perf_counter()

    def __call__(self, label: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{label:<22} [{'#' * filled}{'.' * (width - filled)}] {done:>9,}/{total:,} "
                         f"{time.perf_counter() - self.started:6.1f}s")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def make_ids(ms: np.ndarray) -> np.ndarray:
    """Snowflake ids for millisecond timestamps; rows in the same millisecond get a sequence."""
    order = np.argsort(ms, kind="stable")
    ordered = ms[order]
    index = np.arange(len(ordered))
    new_group = np.r_[True, ordered[1:] != ordered[:-1]]
    sequence = index - np.maximum.accumulate(np.where(new_group, index, 0))
    if sequence.size and sequence.max() > ids.MAX_SEQUENCE:
        raise CommandError("too many rows in one millisecond; spread the data over more time")
    out = np.empty_like(ms)
    out[order] = ((ordered - ids.EPOCH_MS) << (ids.GENERATOR_BITS + ids.SEQUENCE_BITS)) \
        | (ids.SEED_GENERATOR << ids.SEQUENCE_BITS) | sequence
    return out


def pg_times(ms: np.ndarray) -> np.ndarray:
    return np.char.add(np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms"), "+00")


def copy_rows(alias: str, table: str, columns: list[str], column_values: list, progress, label: str) -> None:
    total = len(column_values[0])
    with connections[alias].cursor() as cursor:
        with cursor.connection.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for start in range(0, total, CHUNK):
                parts = [col[start:start + CHUNK] for col in column_values]
                copy.write("\n".join(map("\t".join, zip(*parts))) + "\n")
                progress(label, min(start + CHUNK, total), total)


class IndexesOff:
    """Drop a table's indexes and constraints, and put the same ones back afterwards (every index
    on the tables: the search GIN index on api_post too, rebuilt from its own definition)."""

    def __init__(self, alias: str, tables: list[str]):
        self.alias, self.tables = alias, tables

    def __enter__(self):
        with connections[self.alias].cursor() as cur:
            # The controller's index toggle stays away until this is over (released in __exit__, or
            # with the session if the seed dies).
            cur.execute("SELECT pg_advisory_lock(%s)", [INDEX_WORK_LOCK])
            # Also other tables' foreign keys onto these (OAuth's onto meta_account): they depend on
            # the primary key, so they go first and come back last.
            cur.execute("""SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype
                           FROM pg_constraint WHERE (conrelid::regclass::text = ANY(%s) AND contype IN ('p','u','f'))
                           OR (contype = 'f' AND confrelid::regclass::text = ANY(%s))""",
                        [self.tables, self.tables])
            self.constraints = sorted(cur.fetchall(), key=lambda c: c[3] == "f")  # FKs last on the way back
            cur.execute("""SELECT indexdef, indexname FROM pg_indexes WHERE tablename = ANY(%s)
                           AND indexname NOT IN (SELECT conname FROM pg_constraint)""", [self.tables])
            self.indexes = cur.fetchall()
            for table, name, _, _ in sorted(self.constraints, key=lambda c: c[3] != "f"):
                cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
            for _, name in self.indexes:
                cur.execute(f'DROP INDEX "{name}"')
        return self

    def __exit__(self, *exc):
        with connections[self.alias].cursor() as cur:
            cur.execute("SET maintenance_work_mem = '256MB'")
            for table, name, definition, _ in self.constraints:
                cur.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
            for definition, _ in self.indexes:
                cur.execute(definition)
            # The COPY's row counts reach pg_stat_user_tables only when this backend flushes them;
            # flushed after ANALYZE they would be added on top of its count (n_live_tup doubled).
            cur.execute("SELECT pg_stat_force_next_flush()")
            for table in self.tables:
                cur.execute(f"ANALYZE {table}")
            cur.execute("SELECT pg_advisory_unlock(%s)", [INDEX_WORK_LOCK])


# --- placement, vectorised ---------------------------------------------------------------------
def _mix64(x: np.ndarray) -> np.ndarray:
    """api.routing.shards.mix64 on uint64 arrays (numpy's uint64 products wrap modulo 2**64)."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shards_of(user_ids: np.ndarray, count: int, strategy: str) -> np.ndarray:
    """shards.shard_of for an array of ids (1-based shard per id), for the pure strategies."""
    if count == 1:
        return np.ones(len(user_ids), dtype=np.int64)
    if strategy == "hash":
        return (_mix64(user_ids) % np.uint64(count)).astype(np.int64) + 1
    if strategy == "consistent":
        points, owners = shards.ring(count)
        at = np.searchsorted(np.array(points, dtype=np.uint64), _mix64(user_ids), side="left")
        return np.array(owners, dtype=np.int64)[at % len(points)]
    if strategy == "modulo":
        return user_ids % count + 1
    if strategy == "range":
        return np.searchsorted(np.array(shards._range_bounds(count), dtype=np.int64), user_ids, side="right") + 1
    raise CommandError(f"unknown sharding strategy {strategy!r}")


def balanced(users: int, counts: dict[int, int]) -> np.ndarray:
    """`directory`: the shard of each new user, each to a shard with the fewest users at its turn
    (ties to the lowest number), so even shards fill round robin: 1, 2, 3, 1, 2, 3, ..."""
    top = max(counts.values()) + -(-users // len(counts))
    levels = np.concatenate([np.arange(c + 1, top + 1) for c in counts.values()])
    owners = np.concatenate([np.full(max(top - c, 0), k) for k, c in counts.items()])
    order = np.lexsort((owners, levels))[:users]  # by level, then shard number
    return owners[order].astype(np.int64)


def partition(user_ids: np.ndarray, t, directory_counts: dict[int, int] | None) -> np.ndarray:
    if t.sharding == "directory":
        return balanced(len(user_ids), directory_counts) if t.shards > 1 else np.ones(len(user_ids), dtype=np.int64)
    out = shards_of(user_ids, t.shards, t.sharding)
    step = max(1, len(user_ids) // PLACEMENT_CHECK)
    for i in range(0, len(user_ids), step):  # the vectorised copy must agree with the router
        if out[i] != placement.place(int(user_ids[i]), t.sharding, t.shards):
            raise CommandError(f"seed placement of user {user_ids[i]} disagrees with the router")
    return out


# --- the shards --------------------------------------------------------------------------------
def _has_users(alias: str) -> bool:
    with connections[alias].cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM api_user)")
        return cur.fetchone()[0]


def _has_accounts() -> bool:
    with connections[META].cursor() as cur:
        cur.execute("SELECT EXISTS (SELECT 1 FROM meta_account)")
        return cur.fetchone()[0]


def data_exists(count: int) -> bool:
    """Whether any shard holds users. Shard 1 is asked first (the one-shard answer, as before).
    A shard whose primary does not answer (the controller starts shards 2..N after the seed at
    bring-up) counts as holding users exactly when meta holds accounts: every user has one.
    Accounts with no users anywhere (a seed or a reshard that died midway) count too: seeding over
    them would rebuild meta's unique indexes over duplicate usernames, and fail or lose them."""
    if _has_users(shards.primary_alias(1)):
        return True
    for k in range(2, count + 1):
        try:
            if _has_users(shards.primary_alias(k)):
                return True
        except OperationalError:
            return _has_accounts()
    return _has_accounts()


class Command(BaseCommand):
    help = "Seed users and posts in bulk (COPY) on their shards, with their accounts in meta."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=10_000)
        parser.add_argument("--posts-per-user", type=int, default=10)
        parser.add_argument("--if-empty", action="store_true", help="do nothing if users exist")
        parser.add_argument("--replace", action="store_true", help="delete all users, posts and accounts first")
        parser.add_argument("--no-progress", action="store_true")
        parser.add_argument("--random-seed", type=int, default=42)

    def handle(self, *args, users, posts_per_user, if_empty, replace, no_progress, random_seed, **options):
        if users < 0 or posts_per_user < 0 or users > 10_000_000:
            raise CommandError("--users must be 0..10,000,000 and --posts-per-user at least 0")
        t = topology.current().topology
        if if_empty and data_exists(t.shard_groups):
            # `up` after a stop in the middle of a reshard lands here: the data stays as it is.
            self.stdout.write("users exist already: not seeding")
            return
        if t.reshard_shards:
            raise CommandError(f"a reshard to {t.reshard_shards} shards is under way: finish it "
                               f"(`reshard --resume` or `--rollback`), then seed")
        count = t.shards
        aliases = [shards.primary_alias(k) for k in range(1, count + 1)]
        has_data = data_exists(count)
        if has_data and not replace:
            raise CommandError("users exist already: use --replace to start over, or --if-empty")
        started = time.perf_counter()
        progress = Progress(not no_progress)
        rng = np.random.default_rng(random_seed)
        now_ms = int(time.time() * 1000)
        span = min(365 * DAY_MS, now_ms - ids.EPOCH_MS - DAY_MS)

        user_ms = np.sort(rng.integers(now_ms - span, now_ms - DAY_MS, users))
        post_owner = np.repeat(np.arange(users), posts_per_user)
        post_ms = user_ms[post_owner] + (rng.random(len(post_owner)) * (now_ms - user_ms[post_owner])).astype(np.int64)
        all_ids = make_ids(np.concatenate([user_ms, post_ms]))
        user_ids, post_ids = all_ids[:users], all_ids[users:]

        n = np.arange(1, users + 1).astype(str)
        usernames = np.char.add("user", n)
        emails = np.char.add(usernames, "@example.test")
        user_times = pg_times(user_ms)
        user_id_text = user_ids.astype(str)
        words = np.array(WORDS)
        post_titles = np.char.add("Notes on ", words[rng.integers(0, len(words), len(post_ms))])
        bodies = np.array([" ".join(rng.choice(words, 24)) + "." for _ in range(64)])
        post_bodies = bodies[rng.integers(0, len(bodies), len(post_ms))]
        post_times = pg_times(post_ms)

        directory = t.sharding == "directory"
        try:
            with contextlib.ExitStack() as stack:
                meta = stack.enter_context(connections[META].cursor())
                data = [stack.enter_context(connections[a].cursor()) for a in aliases]
                if replace:
                    for cur in data:
                        cur.execute("TRUNCATE api_post, api_user")
                    # CASCADE: what references the accounts goes with them (OAuth applications and
                    # their tokens), else the delete fails on their foreign keys.
                    meta.execute("TRUNCATE meta_account CASCADE")
                    meta.execute("DELETE FROM meta_shard_directory")
                counts = None
                if directory:
                    meta.execute("SELECT shard, count(*) FROM meta_shard_directory GROUP BY shard")
                    counts = dict.fromkeys(range(1, count + 1), 0)
                    for shard, how_many in meta.fetchall():
                        if shard in counts:
                            counts[shard] = how_many
        except OperationalError as exc:
            raise CommandError(f"a shard's primary does not answer ({exc}); is the stack up with "
                               f"{count} shard(s)?") from None
        user_shard = partition(user_ids, t, counts)

        user_columns = ["id", "username", "email", "name", "bio", "post_count", "created_at", "updated_at"]
        user_values = [user_id_text, usernames, emails, np.char.add("User ", n), np.full(users, ""),
                       np.full(users, str(posts_per_user)), user_times, user_times]
        post_columns = ["id", "user_id", "title", "body", "created_at", "updated_at"]
        post_values = [post_ids.astype(str), user_id_text[post_owner], post_titles, post_bodies, post_times,
                       post_times]
        meta_tables = ["meta_account"] + (["meta_shard_directory"] if directory else [])
        with contextlib.ExitStack() as stack:
            for alias in aliases:
                stack.enter_context(IndexesOff(alias, ["api_user", "api_post"]))
            stack.enter_context(IndexesOff(META, meta_tables))
            copy_rows(META, "meta_account",
                      ["user_id", "username", "email", "role", "state", "signup_fingerprint", "password", "created_at"],
                      [user_id_text, usernames, emails, np.full(users, "member"), np.full(users, "active"),
                       np.full(users, ""), np.full(users, "!"), user_times], progress, "accounts (meta)")
            if directory:
                copy_rows(META, "meta_shard_directory", ["user_id", "shard"],
                          [user_id_text, user_shard.astype(str)], progress, "directory (meta)")
            if count == 1:  # one shard: everything goes to its primary, as before sharding
                copy_rows(aliases[0], "api_user", user_columns, user_values, progress, "users")
                copy_rows(aliases[0], "api_post", post_columns, post_values, progress, "posts")
            else:
                post_shard = user_shard[post_owner]
                for k, alias in enumerate(aliases, start=1):
                    mine, their_posts = np.flatnonzero(user_shard == k), np.flatnonzero(post_shard == k)
                    copy_rows(alias, "api_user", user_columns, [col[mine] for col in user_values], progress,
                              f"users (shard {k})")
                    copy_rows(alias, "api_post", post_columns, [col[their_posts] for col in post_values], progress,
                              f"posts (shard {k})")
            if progress.enabled:
                sys.stderr.write("building indexes and constraints...\n")
        elapsed = time.perf_counter() - started
        spread = ""
        if count > 1:
            per_shard = np.bincount(user_shard, minlength=count + 1)[1:]
            spread = f" over {count} shards ({t.sharding}: " + ", ".join(f"{c:,}" for c in per_shard) + " users)"
        self.stdout.write(f"seeded {users:,} users and {len(post_ms):,} posts{spread} in {elapsed:.1f}s")
        if replace:
            call_command("demo_accounts", stdout=self.stdout)
