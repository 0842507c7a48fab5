"""`manage.py seed` on the real stack, one shard and several: every seeded user lands on the shard
the router looks for it on (checked on each shard's primary with psycopg, not through the code
under test), its posts beside it, each shard's indexes (the search GIN index too) rebuilt, and the
`directory` table written in meta, balanced.

The seed and the reshard run as `manage.py` subprocesses, as a learner runs them, against the test
stack's own databases. The module leaves the stack as it found it: one shard, hash, the default
seed (tests/settings.py)."""
import os
import subprocess
import sys
from collections import Counter

import psycopg
import pytest
import redis

from api.routing.shards import shard_of
from workbench import topology
from tests.settings import ROOT

USERS, POSTS_PER_USER = 600, 3
INDEXES = {"api_user": {"api_user_pkey", "api_user_username_key", "api_user_email_key"},
           "api_post": {"api_post_pkey", "api_post_search"}}


def manage(*args, timeout=600):
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "WORKBENCH_RESHARD_BATCH": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def seed(users=USERS, posts_per_user=POSTS_PER_USER):
    return manage("seed", "--replace", "--users", str(users), "--posts-per-user", str(posts_per_user),
                  "--no-progress")


def rows(cfg, shard, sql, params=None):
    with psycopg.connect(cfg.shard_url(shard), autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def meta_rows(cfg, sql):
    with psycopg.connect(cfg.meta_db_url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()


def layout(cfg, shards, names=None):
    """user id -> [shards holding it]; post id -> [(its user id, shard)], over `shards` shards;
    `names` (a dict), if given, gets each user's username."""
    users, posts = {}, {}
    for k in range(1, shards + 1):
        for uid, username in rows(cfg, k, "SELECT id, username FROM api_user"):
            users.setdefault(uid, []).append(k)
            if names is not None:
                names[uid] = username
        for pid, uid in rows(cfg, k, "SELECT id, user_id FROM api_post"):
            posts.setdefault(pid, []).append((uid, k))
    return users, posts


def assert_seeded(cfg, shards, where):
    """USERS seeded users, each once and on `where(id)`; each post once, beside its user; every
    shard's indexes back; one account per user in meta. Returns users per shard."""
    names = {}
    users, posts = layout(cfg, shards, names)
    # The bulk-seeded users are user1..userN; the demo accounts (made after --replace) are not.
    seeded = {u: ks for u, ks in users.items() if names[u].startswith("user")}
    assert len(seeded) == USERS, f"{len(seeded)} seeded users found on {shards} shard(s), not {USERS}"
    doubled = {u: ks for u, ks in users.items() if len(ks) != 1}
    assert not doubled, f"users on more than one shard: {list(doubled.items())[:5]}"
    wrong = {u: ks[0] for u, ks in seeded.items() if ks[0] != where(u)}
    assert not wrong, f"{len(wrong)} users on the wrong shard, e.g. {list(wrong.items())[:5]}"
    assert sum(1 for c in posts.values() for uid, _ in c if uid in seeded) == USERS * POSTS_PER_USER
    doubled = {p: c for p, c in posts.items() if len(c) != 1}
    assert not doubled, f"posts on more than one shard: {list(doubled.items())[:5]}"
    apart = [p for p, [(uid, k)] in posts.items() if users.get(uid, [None])[0] != k]
    assert not apart, f"{len(apart)} posts not on their user's shard, e.g. {apart[:5]}"
    for k in range(1, shards + 1):
        for table, wanted in INDEXES.items():
            names = {n for (n,) in rows(cfg, k, "SELECT indexname FROM pg_indexes WHERE tablename = %s", [table])}
            assert wanted <= names, f"shard {k}: {table} lacks {wanted - names} after the seed"
        fk = rows(cfg, k, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'api_post'::regclass AND contype = 'f'")
        assert fk[0][0] == 1, f"shard {k}: the posts' foreign key was not put back"
    accounts = meta_rows(cfg, "SELECT count(*) FROM meta_account WHERE username LIKE 'user%'")[0][0]
    assert accounts == USERS
    return Counter(ks[0] for ks in seeded.values())


@pytest.fixture(scope="module", autouse=True)
def restore(stack):
    yield
    # What the rest of the session expects: one shard, hash, the default seed.
    if _placement() != ("hash", 1):
        manage("reshard", "--to", "1", "--strategy", "hash")
    seed(int(os.environ["WORKBENCH_SEED_USERS"]), int(os.environ["WORKBENCH_SEED_POSTS_PER_USER"]))


def _placement():
    """(sharding, shards) as the stack's topology store holds them (what the seed reads)."""
    from workbench.stack import config
    t = topology.Store(redis.Redis.from_url(config.load().state_url)).read().topology
    return t.sharding, t.shards


def test_seed_on_one_shard(stack_config):
    if _placement()[1] != 1:
        manage("reshard", "--to", "1", "--strategy", "hash")
    out = seed()
    assert f"seeded {USERS:,} users and {USERS * POSTS_PER_USER:,} posts in" in out, out
    per_shard = assert_seeded(stack_config, 1, lambda uid: 1)
    assert per_shard == {1: USERS}
    assert not meta_rows(stack_config, "SELECT 1 FROM meta_shard_directory"), "directory rows without directory"


def test_seed_refuses_to_add_to_existing_users_and_skips_if_empty():
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "seed", "--users", "10", "--no-progress"],
                            capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode != 0 and "--replace" in result.stderr
    assert "not seeding" in manage("seed", "--if-empty", "--users", "10", "--no-progress")


def test_seed_refuses_accounts_left_without_users(stack_config):
    """A seed that died midway can leave accounts in meta and no users anywhere: seeding over them
    would rebuild meta's unique indexes over duplicate usernames. Refused; --replace starts over."""
    with psycopg.connect(stack_config.shard_url(1), autocommit=True, connect_timeout=5) as conn:
        conn.execute("TRUNCATE api_post, api_user")
    result = subprocess.run([sys.executable, str(ROOT / "manage.py"), "seed", "--users", "10", "--no-progress"],
                            capture_output=True, text=True, timeout=120, env=os.environ)
    assert result.returncode != 0 and "--replace" in result.stderr, result.stdout + result.stderr
    assert "not seeding" in manage("seed", "--if-empty", "--users", "10", "--no-progress")
    seed()  # --replace: consistent again for the tests after this one


def test_seed_after_reshard_to_3_consistent_places_every_user_on_its_shard(stack_config):
    manage("reshard", "--to", "3", "--strategy", "consistent")
    assert _placement() == ("consistent", 3)
    out = seed()
    assert "over 3 shards (consistent:" in out, out
    per_shard = assert_seeded(stack_config, 3, lambda uid: shard_of(uid, 3, "consistent"))
    print(f"\nconsistent x 3: {dict(sorted(per_shard.items()))}")
    assert set(per_shard) == {1, 2, 3}
    # A second seed with the stack's shards all holding users is refused, and --if-empty sees them.
    assert "not seeding" in manage("seed", "--if-empty", "--users", "10", "--no-progress")


def test_seed_under_directory_balances_and_writes_the_table(stack_config):
    manage("reshard", "--to", "2", "--strategy", "directory")
    assert _placement() == ("directory", 2)
    out = seed()
    directory = dict(meta_rows(stack_config, "SELECT user_id, shard FROM meta_shard_directory"))
    per_shard = assert_seeded(stack_config, 2, lambda uid: directory.get(uid))
    print(f"\ndirectory x 2: {dict(sorted(per_shard.items()))}; {out.splitlines()[0]}")
    assert abs(per_shard[1] - per_shard[2]) <= 1, per_shard
    # Every row on a shard has its directory entry (the demo accounts' too, made through sign-up).
    users, _ = layout(stack_config, 2)
    assert {u: ks[0] for u, ks in users.items()} == directory
    assert not meta_rows(stack_config, "SELECT 1 FROM meta_shard_directory WHERE next_shard IS NOT NULL")
