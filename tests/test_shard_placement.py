"""Sharding on the real stack (issue 5): each strategy's placement, the evenness of real generator
ids, and point operations that touch exactly one data node.

The test stack is resharded to each strategy with 4 shards by the one command allowed to change
the placement fields, `python manage.py reshard --to N --strategy S`, and back to one shard at the
end of the module (other modules expect one). Where a user's row really is comes from each shard's
PostgreSQL directly (psycopg), never from the API under test."""
import collections
import json
import os
import subprocess
import sys
import time

import psycopg
import pytest
import redis
import requests

from conftest import ARTIFACTS, wait_for
from api.routing import ids, nodes, shards, stats
from workbench import topology
from workbench.stack import apps
from workbench.stack.config import PROJECT_DIR

SHARDS = 4
STRATEGIES = ("hash", "consistent", "modulo", "range", "directory")
PASSWORD = "correct-horse"
RESHARD_TIMEOUT = 900      # events, not timings: moving the seeded users and starting three shards
SETTLE_TIMEOUT = 240
PLACEMENT_USERS = 16       # new users per strategy whose shard is checked on the stack
EVENNESS_USERS = 160       # one at a time, through the API: real generator ids (each pays a password hash)
EVENNESS_PAUSE_S = 0.02    # between sign-ups: a low rate, so each id has its own millisecond
# Chi-squared critical value at p = 0.001 for 3 degrees of freedom (4 shards): an even spread
# exceeds it one time in a thousand (standard tables; scipy.stats.chi2.ppf(0.999, 3) = 16.266).
CHI2_CRIT_DF3_P001 = 16.27
# Queries one request runs on its shard (api/selectors.py, api/services.py; replicas off, cache off):
# GET /users/{id}: the user. GET .../posts: the user's existence, the page.
# PUT /users/{id} (email unchanged): the user, then the write transaction: the fence check (one
# round trip, api/routing/placement.py), UPDATE, re-read. POST .../posts: the fence check, UPDATE
# post_count, INSERT.
QUERIES = {"get_user": 1, "get_posts": 2, "put_user": 4, "post_post": 3}


# --- helpers shared with tests/test_shard_signup_faults.py ----------------------------------------
def sql(url: str, query: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


class ShardedStack:
    """The topology store, the controller's report and each shard's database, as the tests see them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.state = redis.Redis.from_url(cfg.state_url)
        self.store = topology.Store(self.state)

    def topology(self) -> topology.Topology:
        return self.store.read().topology

    def reshard(self, strategy: str, count: int, *, serving: bool = True) -> None:
        """Run the reshard command (only if the stack is not already there), then wait until the
        controller runs what the new topology asks for and every worker has read it; with
        `serving`, also until every app server answers for a user of every shard (a reshard
        retires and starts shards; test_a_shard_started_again_is_served_at_once needs no wait)."""
        t = self.topology()
        if (t.sharding, t.shards, t.reshard_shards) == (strategy, count, 0):
            return
        env = {**os.environ, **apps.stack_env(self.cfg)}
        done = subprocess.run([sys.executable, str(PROJECT_DIR / "manage.py"), "reshard", "--to", str(count),
                               "--strategy", strategy], cwd=PROJECT_DIR, env=env, capture_output=True,
                              text=True, timeout=RESHARD_TIMEOUT)
        assert done.returncode == 0, f"reshard failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        t = self.topology()
        assert (t.sharding, t.shards, t.reshard_shards) == (strategy, count, 0), t
        self.settled(f"the controller to run {count} shard(s) after the reshard to {strategy}")
        if serving:
            drained = []
            wait_for(lambda: not drained.append(len(self.failed_reads())) and drained[-1] == 0, timeout=120,
                     interval=0, what="every app server to answer for every shard")
            if sum(drained):
                print(f"\n(after the reshard to {strategy} x {count}: failed reads per round {drained})")

    def failed_reads(self, rounds: int = 8) -> list:
        """GET a user of each shard `rounds` times through each app server, each on a new
        connection (so every worker gets some): the (app server, shard, status) of each non-200."""
        users = {k: rows[0][0] for k, rows in self.rows("SELECT min(id) FROM api_user").items() if rows[0][0]}
        failed = []
        for index in range(1, self.topology().app_servers + 1):
            for _ in range(rounds):
                for shard, user_id in users.items():
                    response = requests.get(f"{self.cfg.direct_url(index)}/api/v1/users/{user_id}", timeout=30,
                                            headers={"Connection": "close"})
                    if response.status_code != 200:
                        failed.append((f"app-{index}", shard, response.status_code))
        return failed

    def settled(self, what: str) -> nodes.Report:
        def done():
            report = nodes.read(self.state)
            wanted = self.store.read()
            return (report.fresh() and report.version == wanted.version
                    and not topology.still_applying(topology.pending(wanted.topology, report.running)) and report)
        report = wait_for(done, timeout=SETTLE_TIMEOUT, what=what)
        # Workers check the topology's version at most every REFRESH_S, on their next request.
        time.sleep(topology.REFRESH_S + 0.5)
        return report

    def version(self) -> int:
        return self.store.version()

    def rows(self, query: str, params=None) -> dict[int, list]:
        """`query` on every shard's primary: {shard: rows}."""
        return {k: sql(self.cfg.shard_url(k), query, params) for k in range(1, self.topology().shards + 1)}

    def where(self, user_ids) -> dict[int, list[int]]:
        """The shards whose primary holds each user's row (a user should be on exactly one)."""
        found = collections.defaultdict(list)
        for shard, rows in self.rows("SELECT id FROM api_user WHERE id = ANY(%s)", [list(user_ids)]).items():
            for (user_id,) in rows:
                found[user_id].append(shard)
        return {u: sorted(found.get(u, [])) for u in user_ids}

    def directory(self, user_ids=None) -> dict[int, tuple]:
        """meta's directory: {user_id: (shard, next_shard)}."""
        query = "SELECT user_id, shard, next_shard FROM meta_shard_directory"
        rows = sql(self.cfg.meta_db_url, query + " WHERE user_id = ANY(%s)", [list(user_ids)]) if user_ids \
            is not None else sql(self.cfg.meta_db_url, query)
        return {u: (s, n) for u, s, n in rows}

    def expected_shard(self, user_id: int) -> int:
        """Where the topology's strategy says the user lives (for `directory`, meta's row)."""
        t = self.topology()
        if t.sharding != "directory":
            return shards.shard_of(user_id, t.shards, t.sharding)
        row = self.directory([user_id]).get(user_id)
        assert row is not None, f"user {user_id} has no directory entry"
        return row[0]

    def query_totals(self) -> dict[str, int]:
        """Queries per node (by alias: primary, shard-2, ...; and meta) since the stack started, as
        the app workers flushed them to the state Valkey."""
        return stats.totals(self.state)


def header_name(shard: int) -> str:
    return f"shard-{shard}/primary"


_names = collections.Counter()


def unique_name(prefix: str) -> str:
    """A username no other test (or earlier run on this data directory) uses: 3..30 of [a-z0-9_]."""
    _names[prefix] += 1
    return f"{prefix}{os.getpid() % 10000}_{time.time_ns() % 10**8}_{_names[prefix]}"[:30]


def sign_up(http, base: str, username: str) -> dict:
    response = http.post(f"{base}/users", timeout=60,
                         json={"username": username, "email": f"{username}@example.org", "password": PASSWORD})
    assert response.status_code == 201, response.text
    return response.json()["data"]


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sharded_stack(stack, stack_config):
    """The helper; the stack goes back to one shard (hash) when the module ends."""
    if not (PROJECT_DIR / "workbench" / "management" / "commands" / "reshard.py").exists():
        pytest.skip("needs `manage.py reshard` (issue 5), the only way to change the shard count")
    helper = ShardedStack(stack_config)
    assert helper.topology().replicas == 0, "these tests count queries on primaries: replicas off"
    yield helper
    helper.reshard("hash", 1)


@pytest.fixture(scope="module", params=STRATEGIES)
def sharded(request, sharded_stack):
    """The stack resharded to this strategy with 4 shards."""
    sharded_stack.reshard(request.param, SHARDS)
    return sharded_stack


# --- 1. placement --------------------------------------------------------------------------------------
def test_new_users_land_on_the_shard_their_strategy_names(sharded, api_url):
    strategy = sharded.topology().sharding
    before = shard_loads(sharded)
    with requests.Session() as http:
        made = [int(sign_up(http, api_url, unique_name(f"pl{strategy[:3]}"))["id"]) for _ in range(PLACEMENT_USERS)]
        where = sharded.where(made)
        if strategy == "directory":
            directory = sharded.directory(made)
            assert set(directory) == set(made), "every new user has a directory entry in meta"
            assert all(next_shard is None and 1 <= shard <= SHARDS for shard, next_shard in directory.values())
            expected = {u: directory[u][0] for u in made}
        else:
            expected = {u: shards.shard_of(u, SHARDS, strategy) for u in made}
        assert where == {u: [expected[u]] for u in made}, "each user on exactly one shard: its own"
        version = sharded.version()
        for user_id in made:
            response = http.get(f"{api_url}/users/{user_id}", timeout=30)
            assert response.status_code == 200, response.text
            assert int(response.headers["X-Topology-Version"]) >= version
            assert response.headers["X-DB-Node"] == header_name(expected[user_id])
    spread = collections.Counter(expected.values())
    print(f"\n{strategy}: {PLACEMENT_USERS} new users per shard {dict(sorted(spread.items()))}")
    if strategy == "directory":
        # The directory gives each new user the shard with the fewest users. Each worker process knows
        # the exact counts as of the last second plus its own sign-ups since, so the gap between the
        # fullest and the emptiest shard grows by at most one user per worker process.
        after = shard_loads(sharded)
        processes = sharded.cfg.app_servers * sharded.cfg.app_workers
        gap_before, gap_after = max(before.values()) - min(before.values()), max(after.values()) - min(after.values())
        print(f"users per shard before {before}, after {after}")
        assert gap_after <= max(gap_before, 1) + processes, (before, after)
        if gap_before < PLACEMENT_USERS // 2:
            assert len(spread) > 1, spread  # nothing lopsided to fill first: more than one shard takes them


def shard_loads(sharded) -> dict[int, int]:
    """Users per shard, counted on each shard's primary."""
    return {k: rows[0][0] for k, rows in sharded.rows("SELECT count(*) FROM api_user").items()}


def test_every_row_on_every_shard_belongs_there(sharded):
    """Every user the reshard moved (the seeded ones) and every new one: on the shard its
    strategy names, on no other, and its posts with it."""
    strategy = sharded.topology().sharding
    users = sharded.rows("SELECT id FROM api_user")
    assert sum(len(r) for r in users.values()) > 0
    if strategy == "directory":
        directory = sharded.directory()
        wrong = {k: [u for (u,) in rows if directory.get(u, (None,))[0] != k] for k, rows in users.items()}
    else:
        wrong = {k: [u for (u,) in rows if shards.shard_of(u, SHARDS, strategy) != k] for k, rows in users.items()}
    assert not any(wrong.values()), {k: v[:5] for k, v in wrong.items()}
    all_ids = [u for rows in users.values() for (u,) in rows]
    assert len(all_ids) == len(set(all_ids)), "no user on two shards"
    orphan_posts = sharded.rows("SELECT count(*) FROM api_post p WHERE NOT EXISTS "
                                "(SELECT 1 FROM api_user u WHERE u.id = p.user_id)")
    assert all(rows == [(0,)] for rows in orphan_posts.values()), orphan_posts
    print(f"\n{strategy}: users per shard {({k: len(r) for k, r in users.items()})}")


# --- 2. evenness ---------------------------------------------------------------------------------------
def chi_squared(counts: collections.Counter, n: int) -> float:
    expected = sum(counts.values()) / n
    return sum((counts.get(k, 0) - expected) ** 2 / expected for k in range(1, n + 1))


@pytest.mark.parametrize("sharded", ["hash"], indirect=True)
def test_real_ids_made_one_at_a_time_spread_evenly_under_hash_and_consistent(sharded, api_url):
    """EVENNESS_USERS sign-ups, one at a time at a low rate, so their ids come from the app servers'
    generators as a real trickle of sign-ups would make them. The spread of those ids under each
    pure strategy (shard_of), and on the stack under `hash` (rows counted on each shard)."""
    made = []
    with requests.Session() as http:
        for _ in range(EVENNESS_USERS):
            made.append(int(sign_up(http, api_url, unique_name("ev"))["id"]))
            time.sleep(EVENNESS_PAUSE_S)
    assert len(set(made)) == EVENNESS_USERS
    sequence_0 = sum(u & ids.MAX_SEQUENCE == 0 for u in made) / len(made)
    generators = len({(u >> ids.SEQUENCE_BITS) & ids.MAX_GENERATOR for u in made})
    result = {"users": EVENNESS_USERS, "shards": SHARDS, "share_with_sequence_0": sequence_0,
              "generators": generators, "chi2_critical_df3_p001": CHI2_CRIT_DF3_P001, "strategies": {}}
    spreads = {}
    for strategy in shards.STRATEGIES:
        counts = collections.Counter(shards.shard_of(u, SHARDS, strategy) for u in made)
        spreads[strategy] = counts
        result["strategies"][strategy] = {"per_shard": {k: counts.get(k, 0) for k in range(1, SHARDS + 1)},
                                          "chi2": round(chi_squared(counts, SHARDS), 2)}
    # On the stack, under hash: the rows are where shard_of says, so the spread is the stack's.
    where = sharded.where(made)
    on_stack = collections.Counter(s[0] for s in where.values() if len(s) == 1)
    result["on_stack_hash"] = {k: on_stack.get(k, 0) for k in range(1, SHARDS + 1)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "shard_evenness.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n" + json.dumps(result, indent=2))

    assert on_stack == spreads["hash"], "each row is on the shard hash names"
    for strategy in ("hash", "consistent"):
        assert result["strategies"][strategy]["chi2"] < CHI2_CRIT_DF3_P001, (strategy, result["strategies"][strategy])
    # The known skews (api/routing/shards.py). One at a time, ids end in sequence 0, so the seed's
    # `id % 4` sees only that: (nearly) everyone on shard 1.
    assert sequence_0 >= 0.95, sequence_0
    assert spreads["modulo"][1] >= 0.95 * EVENNESS_USERS, spreads["modulo"]
    # `range` slices time: every new user is in the slice of now, one hot shard.
    assert len(spreads["range"]) == 1, spreads["range"]


# --- 3. single-node point operations --------------------------------------------------------------
def _poke_every_worker(sharded: ShardedStack, rounds: int = 16) -> None:
    """Workers flush their counters after a request, at most every FLUSH_S: wait that long, then
    send /healthz (no database) on new connections to each app server, so each worker gets some."""
    time.sleep(stats.FLUSH_S + 0.1)
    for index in range(1, sharded.topology().app_servers + 1):
        for _ in range(rounds):
            requests.get(f"{sharded.cfg.direct_url(index)}/healthz", timeout=10, headers={"Connection": "close"})


def quiet_totals(sharded: ShardedStack) -> dict[str, int]:
    """The per-node totals once every worker has flushed what it counted (two rounds agree)."""
    last = None
    for _ in range(20):
        _poke_every_worker(sharded)
        now = sharded.query_totals()
        if now == last:
            return now
        last = now
    raise AssertionError(f"the query counters kept changing with no traffic: {last}")


def test_point_operations_touch_exactly_one_data_node(sharded, stack_config):
    """A GET and a PUT of a user, a GET of its posts and a POST of a post: X-DB-Node names one
    node, and of the per-node query counters only that shard's primary's rises, by exactly the
    queries those requests run. One keep-alive connection to app-1, so one worker serves them
    all (and `directory` is warmed in that worker first)."""
    strategy = sharded.topology().sharding
    rounds = 10
    base = stack_config.direct_url(1) + "/api/v1"
    with requests.Session() as http:
        user = sign_up(http, base, unique_name(f"pt{strategy[:3]}"))
        user_id = int(user["id"])
        shard = sharded.expected_shard(user_id)
        assert sharded.where([user_id]) == {user_id: [shard]}
        for _ in range(3):  # warm this worker: its directory copy, its pooled connections
            assert http.get(f"{base}/users/{user_id}", timeout=30).status_code == 200
            assert http.get(f"{base}/users/{user_id}/posts", timeout=30).status_code == 200

        before = quiet_totals(sharded)
        for i in range(rounds):
            responses = {
                "get_user": http.get(f"{base}/users/{user_id}", timeout=30),
                "put_user": http.put(f"{base}/users/{user_id}", timeout=30,
                                     json={"email": user["email"], "name": f"n{i}", "bio": f"round {i}"}),
                "get_posts": http.get(f"{base}/users/{user_id}/posts", timeout=30),
                "post_post": http.post(f"{base}/users/{user_id}/posts", timeout=30,
                                       json={"title": f"t{i}", "body": "one node"}),
            }
            for what, response in responses.items():
                assert response.status_code in (200, 201), (what, response.text)
                assert response.headers["X-DB-Node"] == header_name(shard), (what, response.headers["X-DB-Node"])
        expected = rounds * sum(QUERIES.values())
        target = shards.primary_alias(shard)

        def flushed():
            time.sleep(stats.FLUSH_S + 0.1)
            http.get(f"{stack_config.direct_url(1)}/healthz", timeout=10)  # the same worker flushes
            now = sharded.query_totals()
            return now.get(target, 0) - before.get(target, 0) >= expected and now
        wait_for(flushed, timeout=60, interval=0, what=f"{target}'s query count to rise by {expected}")
    after = quiet_totals(sharded)
    rise = {name: after.get(name, 0) - before.get(name, 0) for name in set(after) | set(before)}
    rise = {name: n for name, n in rise.items() if n}
    print(f"\n{strategy}: user {user_id} on shard {shard}; query counts rose by {rise}")
    assert rise == {target: expected}, rise



@pytest.mark.parametrize("sharded", ["hash"], indirect=True)
def test_the_nodes_report_shows_each_shards_query_count(sharded, api_url):
    """GET /api/v1/admin/nodes publishes, per data node, the queries the workers counted."""
    with requests.Session() as http:  # some reads on every shard
        for user_id in [u for rows in sharded.rows("SELECT id FROM api_user LIMIT 3").values() for (u,) in rows]:
            assert http.get(f"{api_url}/users/{user_id}", timeout=30).status_code == 200
    totals = quiet_totals(sharded)
    counted_at = time.time()
    report = wait_for(lambda: (r := nodes.read(sharded.state)).at > counted_at and r, timeout=30,
                      what="a nodes report taken after the counts")
    shown = {shards.primary_alias(k): report.nodes.get(shards.primary_alias(k), {}).get("queries")
             for k in range(1, SHARDS + 1)}
    counted = {alias: totals.get(alias) for alias in shown}
    assert shown == counted, f"report {shown}, counters {counted}; raw counter names {sorted(stats.totals(sharded.state))}"


@pytest.mark.parametrize("sharded", ["hash"], indirect=True)
def test_a_shard_started_again_is_served_at_once(sharded):
    """4 shards, every worker with pooled connections to each; reshard to 1 (shards 2..4 retired)
    and back to 4 (started again): the first reads of every shard through every worker answer."""
    assert sharded.failed_reads() == []  # and each worker now holds connections to every shard
    sharded.reshard("hash", 1)
    sharded.reshard("hash", SHARDS, serving=False)
    failed = sharded.failed_reads()
    assert failed == [], f"{len(failed)} failed reads: {collections.Counter(failed)}"
