"""Bulk-load users and posts with COPY: drop indexes and constraints, load, rebuild them, ANALYZE.

Ids are real snowflakes made from each row's created_at (generator 1023 is kept for seeding), so
seeded and live rows sort the same way. Seeded accounts get no password hash: hashing costs about
0.2 s each here; load tests use tokens minted in bulk instead.
"""
import sys
import time

import numpy as np
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from api.models import User
from api.queries import INDEX_WORK_LOCK
from api.routing import ids
from api.routing.db import META, PRIMARY

DAY_MS = 86_400_000
CHUNK = 100_000
WORDS = ("scaling cache replica shard latency queue token bucket primary failover index cursor "
         "throughput budget region edge proxy snapshot stream backlog capacity").split()


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
    """Drop a table's indexes and constraints, and put the same ones back afterwards."""

    def __init__(self, alias: str, tables: list[str]):
        self.alias, self.tables = alias, tables

    def __enter__(self):
        with connections[self.alias].cursor() as cur:
            # The controller's index toggle stays away until this is over (released in __exit__, or
            # with the session if the seed dies).
            cur.execute("SELECT pg_advisory_lock(%s)", [INDEX_WORK_LOCK])
            cur.execute("""SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), contype
                           FROM pg_constraint WHERE conrelid::regclass::text = ANY(%s) AND contype IN ('p','u','f')""",
                        [self.tables])
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
            for table in self.tables:
                cur.execute(f"ANALYZE {table}")
            cur.execute("SELECT pg_advisory_unlock(%s)", [INDEX_WORK_LOCK])


class Command(BaseCommand):
    help = "Seed users and posts in bulk (COPY), with their accounts in meta."

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
        has_data = User.objects.exists()
        if has_data and if_empty:
            self.stdout.write("users exist already: not seeding")
            return
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

        with connections[PRIMARY].cursor() as cur, connections[META].cursor() as meta:
            if replace:
                cur.execute("TRUNCATE api_post, api_user")
                meta.execute("DELETE FROM meta_account")
        with IndexesOff(PRIMARY, ["api_user", "api_post"]), IndexesOff(META, ["meta_account"]):
            copy_rows(META, "meta_account",
                      ["user_id", "username", "email", "role", "state", "signup_fingerprint", "password", "created_at"],
                      [user_id_text, usernames, emails, np.full(users, "member"), np.full(users, "active"),
                       np.full(users, ""), np.full(users, "!"), user_times], progress, "accounts (meta)")
            copy_rows(PRIMARY, "api_user",
                      ["id", "username", "email", "name", "bio", "post_count", "created_at", "updated_at"],
                      [user_id_text, usernames, emails, np.char.add("User ", n), np.full(users, ""),
                       np.full(users, str(posts_per_user)), user_times, user_times], progress, "users")
            copy_rows(PRIMARY, "api_post", ["id", "user_id", "title", "body", "created_at", "updated_at"],
                      [post_ids.astype(str), user_id_text[post_owner], post_titles, post_bodies,
                       post_times, post_times], progress, "posts")
            if progress.enabled:
                sys.stderr.write("building indexes and constraints...\n")
        elapsed = time.perf_counter() - started
        self.stdout.write(f"seeded {users:,} users and {len(post_ms):,} posts in {elapsed:.1f}s")
        if replace:
            call_command("demo_accounts", stdout=self.stdout)
