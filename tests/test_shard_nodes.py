"""Shard groups on real PostgreSQL processes, as the controller runs them: shard 2 started as a
primary of its own (initdb, migrated), reported with its users and posts, given its own streaming
replica, restarted after a SIGKILL, and retired again, but only once it holds no users.

Only the reshard command changes the placement fields; like it, these tests write the topology to
the state Valkey with `resharding=True`, and follow the controller through its report there."""
import os
import signal
import subprocess
import sys

import psycopg
import pytest
import redis

from conftest import ROOT, wait_for
from api.routing import nodes
from workbench import topology

TIMEOUT = 180  # events, not timings: starting a cluster and migrating it takes a few seconds here


class Shards:
    """The topology store and the controller's report, as the reshard command sees them."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.client = redis.Redis.from_url(cfg.state_url)
        self.store = topology.Store(self.client)

    def report(self) -> nodes.Report:
        return nodes.read(self.client)

    def set(self, what: str, **fields) -> None:
        """Change the topology (placement fields too) and wait until the controller runs it."""
        self.store.update(lambda d: {**d, **fields}, "test_shard_nodes", resharding=True)
        self.settled(what)

    def settled(self, what: str) -> nodes.Report:
        def done():
            report = self.report()
            wanted = self.store.read()
            return (report.fresh() and report.version == wanted.version
                    and not topology.still_applying(topology.pending(wanted.topology, report.running)) and report)
        return wait_for(done, timeout=TIMEOUT, what=what)

    def node(self, name: str) -> dict:
        return self.report().nodes.get(name) or {}


def sql(url: str, query: str, params=None):
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else None


@pytest.fixture(scope="module")
def shards(stack, stack_config):
    """Two shard groups for the module; back to one, with no replicas, at its end."""
    helper = Shards(stack_config)
    helper.set("shard-2 to start", reshard_shards=2)
    yield helper
    try:  # a test that failed midway may have left its user on shard-2
        sql(stack_config.shard_url(2), "DELETE FROM api_user WHERE username LIKE 'shard-test-%'")
    except psycopg.OperationalError:
        pass  # retired already
    helper.set("shard-2 to be retired", reshard_shards=0, replicas=0)


def test_the_controller_starts_shard_2_migrated(shards, stack_config, controller):
    report = wait_for(lambda: (r := shards.report()) and r.nodes.get("shard-2", {}).get("users") is not None and r,
                      timeout=TIMEOUT, what="shard-2 reported with its row counts")
    assert report.running["shard_groups"] == 2
    node = report.nodes["shard-2"]
    assert node["healthy"] and node["state"] == "primary" and node["shard"] == 2
    assert node["port"] == stack_config.shard_pg_port(2) and (node["users"], node["posts"]) == (0, 0)
    primary = report.nodes["primary"]
    assert primary["shard"] == 1 and primary["users"] > 0 and primary["posts"] > 0  # the seeded users
    process = controller.process("shard-2")
    assert process["healthy"] and process["role"] == "postgres" and process["port"] == stack_config.shard_pg_port(2)
    assert (stack_config.data_dir / "pg" / "shard-2" / "PG_VERSION").exists()
    assert (stack_config.log_dir / "pg-shard-2.log").exists()
    # Migrated like the primary: the data tables, and the fence row a shard starts with.
    url = stack_config.shard_url(2)
    tables = {t for (t,) in sql(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"api_user", "api_post", "shard_fence"} <= tables, tables
    assert sql(url, "SELECT id, old_shards, new_shards FROM shard_fence") == [(1, 1, 1)]
    assert any(e["event"] == "shard_started" and e.get("name") == "shard-2" for e in controller.events())


def test_users_on_shard_2_are_counted(shards, stack_config):
    sql(stack_config.shard_url(2), "INSERT INTO api_user (id, username, email, name, bio, post_count, created_at, "
                                   "updated_at) VALUES (2, 'shard-test-1', 'shard-test-1@example.org', '', '', 0, "
                                   "now(), now())")
    wait_for(lambda: shards.node("shard-2").get("users") == 1, timeout=30, what="shard-2's user count")
    assert shards.node("primary")["users"] > 1  # each shard counts its own


def test_status_shows_the_nodes_shard_by_shard(shards, stack_config):
    """`manage.py status` groups the data nodes by shard, each with its users and posts."""
    wait_for(lambda: shards.node("shard-2").get("users") is not None, timeout=TIMEOUT, what="shard-2's counts")
    text = subprocess.run([sys.executable, "manage.py", "status"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ)).stdout
    lines = text.splitlines()
    shard_1 = next(i for i, line in enumerate(lines) if line.startswith("shard 1: "))
    shard_2 = next(i for i, line in enumerate(lines) if line.startswith("shard 2: "))
    assert lines[shard_1 + 1].startswith("primary ") and lines[shard_2 + 1].startswith("shard-2 "), text
    assert lines[shard_2] == "shard 2: users 1, posts 0", text


def test_each_shard_streams_to_its_own_replica(shards, stack_config, controller):
    shards.set("a replica per shard", replicas=1)
    report = shards.report()
    assert report.running["replicas"] == 1 and report.running["shard_groups"] == 2
    assert set(report.running["replica_delays_ms"]) == {"replica-1", "shard-2-replica-1"}
    node = report.nodes["shard-2-replica-1"]
    assert node["healthy"] and node["state"] == "streaming" and node["shard"] == 2 and node["lag_bytes"] is not None
    assert node["port"] == stack_config.shard_replica_port(2, 1)
    assert controller.process("shard-2-replica-1")["healthy"]
    # A hot standby of shard-2 (not of the primary), under the same slot name replica_1.
    replica_url = stack_config.shard_replica_url(2, 1)
    assert sql(replica_url, "SELECT pg_is_in_recovery()") == [(True,)]
    assert sql(stack_config.shard_url(2), "SELECT application_name, state FROM pg_stat_replication") == \
        [("replica_1", "streaming")]
    assert sql(stack_config.data_database_url, "SELECT application_name FROM pg_stat_replication") == [("replica_1",)]
    sql(stack_config.shard_url(2), "UPDATE api_user SET bio = 'streamed' WHERE id = 2")
    wait_for(lambda: sql(replica_url, "SELECT bio FROM api_user WHERE id = 2") == [("streamed",)], timeout=30,
             what="the write on shard-2 to reach its replica")
    # Replication mode and the supporting index are carried out on every shard's primary.
    shards.set("synchronous replication on every shard", replication="remote_write")
    for url in (stack_config.data_database_url, stack_config.shard_url(2)):
        assert sql(url, "SHOW synchronous_commit") == [("remote_write",)]
    index = "SELECT 1 FROM pg_indexes WHERE indexname = 'api_post_user_time'"
    assert sql(stack_config.shard_url(2), index) == [(1,)]
    shards.set("async replication again", replication="async")
    assert sql(stack_config.shard_url(2), "SHOW synchronous_commit") == [("on",)]


def test_a_sigkilled_shard_primary_is_restarted(shards, stack_config, controller):
    victim = controller.process("shard-2")["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not shards.node("shard-2").get("healthy"), timeout=30, interval=0.02,
             what="the report to show shard-2 down")
    wait_for(lambda: (p := controller.process("shard-2"))["healthy"] and p["pid"] != victim, timeout=TIMEOUT,
             what="the supervisor to restart shard-2")
    wait_for(lambda: shards.node("shard-2").get("healthy"), timeout=TIMEOUT, what="shard-2 healthy again")
    events = controller.events()
    assert any(e["event"] == "died" and e.get("name") == "shard-2" for e in events)
    assert any(e["event"] == "restarted" and e.get("name") == "shard-2" for e in events)
    assert controller.process("shard-2")["restarts"] >= 1
    assert sql(stack_config.shard_url(2), "SELECT username FROM api_user WHERE id = 2") == [("shard-test-1",)]
    wait_for(lambda: shards.node("shard-2-replica-1").get("state") == "streaming", timeout=TIMEOUT,
             what="shard-2's replica streaming again")


def test_a_shard_holding_users_is_not_retired(shards, stack_config, controller):
    shards.store.update(lambda d: {**d, "reshard_shards": 0}, "test_shard_nodes", resharding=True)
    wait_for(lambda: "not retiring shard-2" in (shards.report().progress or ""), timeout=TIMEOUT,
             what="the controller to refuse retiring shard-2")
    assert controller.process("shard-2")["healthy"]
    assert (stack_config.data_dir / "pg" / "shard-2" / "PG_VERSION").exists()
    assert sql(stack_config.shard_url(2), "SELECT count(*) FROM api_user") == [(1,)]
    assert shards.report().running["shard_groups"] == 2  # still pending, with the reason as progress
    assert any(e["event"] == "shard_retire_refused" and e.get("name") == "shard-2" for e in controller.events())


def test_an_empty_shard_is_retired(shards, stack_config, controller):
    sql(stack_config.shard_url(2), "DELETE FROM api_user WHERE id = 2")
    report = shards.settled("shard-2 to be retired once empty")
    assert report.running["shard_groups"] == 1 and report.running["replicas"] == 1
    assert not any(n.startswith("shard-2") for n in report.nodes), report.nodes
    names = {p["name"] for p in controller.status()["processes"]}
    assert not {"shard-2", "shard-2-replica-1"} & names, names
    for alias in ("shard-2", "shard-2-replica-1"):
        assert not (stack_config.data_dir / "pg" / alias).exists(), alias
    with pytest.raises(psycopg.OperationalError):
        sql(stack_config.shard_url(2), "SELECT 1")
    assert any(e["event"] == "shard_retired" and e.get("name") == "shard-2" for e in controller.events())


# --- lessons/data_nodes.py: the dashboard's rows, pure (no stack) ---------------------------------
SHARDED = {
    "nodes": {
        "shard-2-replica-1": {"healthy": True, "state": "streaming", "shard": 2, "port": 22421, "lag_ms": 0.0,
                              "lag_bytes": 0, "connections": 1},
        "meta": {"queries": 7},
        "shard-2": {"healthy": True, "state": "primary", "shard": 2, "port": 22420, "lag_ms": 0.0, "lag_bytes": 0,
                    "connections": 2, "users": 1234, "posts": 5678},
        "replica-1": {"healthy": True, "state": "streaming", "shard": 1, "port": 22402, "lag_ms": 1.5,
                      "lag_bytes": 10},
        "primary": {"healthy": True, "state": "primary", "shard": 1, "port": 22401, "lag_ms": 0.0, "lag_bytes": 0,
                    "users": 300, "posts": None},
    },
    "running": {"shard_groups": 2, "replicas": 1, "replica_delays_ms": {"replica-1": 0, "shard-2-replica-1": 0}},
}


def test_node_rows_come_shard_by_shard_with_their_users_and_posts():
    from lessons import data_nodes
    rows = data_nodes.node_rows(SHARDED)
    assert [(r["node"], r["shard"]) for r in rows] == [
        ("primary", "shard-1"), ("replica-1", "shard-1"), ("shard-2", "shard-2"),
        ("shard-2-replica-1", "shard-2"), ("meta", data_nodes.DASH)]
    by_name = {r["node"]: r for r in rows}
    assert (by_name["shard-2"]["users"], by_name["shard-2"]["posts"]) == ("1,234", "5,678")
    assert (by_name["primary"]["users"], by_name["primary"]["posts"]) == ("300", data_nodes.DASH)
    assert by_name["shard-2-replica-1"]["users"] == data_nodes.DASH
    assert by_name["shard-2-replica-1"]["replay lag (ms)"] == "0.0" and by_name["shard-2"]["replay lag (ms)"] == "—"
    assert by_name["shard-2-replica-1"]["health"] == "healthy"
    # One shard: the columns as before sharding, no shard, users or posts.
    single = {"nodes": {k: v for k, v in SHARDED["nodes"].items() if not k.startswith("shard-")}}
    assert all(set(r) & {"shard", "users", "posts"} == set() for r in data_nodes.node_rows(single))


def test_a_value_that_differs_per_shard_is_shown_per_shard():
    from lessons import data_nodes
    from workbench.stack.datanodes import _agreed
    assert _agreed({"primary": 1, "shard-2": 1}) == 1
    assert _agreed({"primary": 1, "shard-2": 0}) == {"primary": 1, "shard-2": 0}
    assert data_nodes.running_value({"primary": 1, "shard-2": 0}) == "primary: 1, shard-2: 0"
    assert data_nodes.running_value(None) == data_nodes.DASH and data_nodes.running_value(2) == 2
