"""PgBouncer, the optional external pooler, on real processes: the controller starting it when the
topology asks, the app's primary connections going through it (a new client connection per
request, few server connections), a SIGKILL of it restarted by the supervisor with no failed
write once it is healthy again, and retiring it. Skipped where PgBouncer is not installed."""
import os
import signal
import time
import uuid

import psutil
import psycopg
import pytest
import redis
import requests

from conftest import Background, wait_for
from api.routing import nodes
from workbench import topology
from workbench.stack import binaries, pgbouncer, ports

try:
    binaries.pgbouncer_bin()
except binaries.BinaryNotFound as exc:
    pytest.skip(f"PgBouncer is not installed ({exc}); .ci/run installs it", allow_module_level=True)


def report(cfg) -> nodes.Report:
    return nodes.read(redis.Redis.from_url(cfg.state_url))


def bouncer_stats(cfg) -> dict:
    """SHOW STATS for the primary's database, from PgBouncer's admin console."""
    with psycopg.connect(pgbouncer.url(cfg, "pgbouncer"), autocommit=True, connect_timeout=5,
                         cursor_factory=psycopg.ClientCursor) as conn:
        cursor = conn.execute("SHOW STATS")
        columns = [c.name for c in cursor.description]
        rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
    return next(r for r in rows if r["database"] == pgbouncer.database(cfg))


def primary_sessions(cfg) -> int:
    """Sessions the primary has opened since its statistics began: one per new connection to it."""
    with psycopg.connect(cfg.data_database_url, autocommit=True) as conn:
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = 'workbench'").fetchone()[0]


def app_uses_pgbouncer(cfg) -> bool:
    """What every app worker decides for each new primary connection, run here on the same state
    Valkey (this process's copies are at most a second old, as a worker's are)."""
    from api.routing.backend.base import pgbouncer_ready
    return pgbouncer_ready()


def workers_follow():
    """Each app worker checks the topology at most once a second and the node report four times."""
    time.sleep(topology.REFRESH_S + nodes.REFRESH_S + 0.5)


def create_post(api_url, user_id, http=None) -> requests.Response:
    return (http or requests).post(f"{api_url}/users/{user_id}/posts",
                                   json={"title": f"via pgbouncer {uuid.uuid4().hex[:8]}"}, timeout=30)


@pytest.fixture(scope="module")
def bouncer(topology_admin):
    """PgBouncer on for the module; every test module leaves the defaults behind it."""
    yield topology_admin.apply({"pgbouncer": True}, replace=True)
    topology_admin.apply({}, replace=True)


# --- validation ------------------------------------------------------------------------------------
def test_pgbouncer_without_a_binary_is_refused_naming_the_field(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_PGBOUNCER_BIN", str(tmp_path / "no-such-pgbouncer"))
    with pytest.raises(topology.TopologyError) as caught:
        topology.parse({"pgbouncer": True})
    assert [name for name, _ in caught.value.errors] == ["pgbouncer"]
    message = caught.value.errors[0][1]
    assert "apt-get install pgbouncer" in message and "WORKBENCH_PGBOUNCER_BIN" in message, message
    assert topology.parse({"pgbouncer": False}).pgbouncer is False  # off needs nothing
    # A stored document is not re-checked on reading, so it can always be switched off again.
    assert topology.parse({"pgbouncer": True}, check_machine=False).pgbouncer is True
    monkeypatch.delenv("WORKBENCH_PGBOUNCER_BIN")
    assert topology.parse({"pgbouncer": True}).pgbouncer is True  # the installed one


# --- on real processes -----------------------------------------------------------------------------
def test_the_controller_runs_pgbouncer(bouncer, controller, stack_config):
    assert bouncer["pending"] == [] and bouncer["topology"]["pgbouncer"] is True
    proc = controller.process("pgbouncer")
    assert proc["healthy"] and proc["pid"] and proc["port"] == stack_config.pgbouncer_port
    assert report(stack_config).running["pgbouncer"] is True
    # A real PgBouncer in front of the primary: a query through it, and its admin console.
    with psycopg.connect(pgbouncer.url(stack_config), autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_setting('port')::int").fetchone()[0] == stack_config.data_pg_port
    node = wait_for(lambda: report(stack_config).nodes.get("pgbouncer", {}).get("servers_idle") is not None
                    and report(stack_config).nodes["pgbouncer"], timeout=30, what="PgBouncer's pool counts")
    assert node["healthy"] and node["port"] == stack_config.pgbouncer_port
    assert {"clients_active", "clients_waiting", "servers_active", "servers_idle"} <= set(node)


def test_the_app_reaches_the_primary_through_pgbouncer(bouncer, api_url, stack_config, new_user):
    """Writes and reads work, every request's queries pass through PgBouncer (its own counters),
    and the primary opens almost no new session for them: PgBouncer keeps its server
    connections. Connected directly, either the primary would count a session per request (no
    pool) or PgBouncer would count none of them (the app's own pool)."""
    wait_for(lambda: app_uses_pgbouncer(stack_config), timeout=30, what="PgBouncer running and healthy")
    workers_follow()
    user = new_user()
    before, sessions_before = bouncer_stats(stack_config), primary_sessions(stack_config)
    created = []
    for _ in range(30):
        response = create_post(api_url, user["id"])
        assert response.status_code == 201, response.text
        created.append(response.json()["data"]["id"])
    for post_id in created[:10]:
        response = requests.get(f"{api_url}/users/{user['id']}/posts/{post_id}", timeout=10)
        assert response.status_code == 200 and response.headers["X-DB-Node"] == "primary"
    after, sessions_after = bouncer_stats(stack_config), primary_sessions(stack_config)
    through = after["total_xact_count"] - before["total_xact_count"]
    new_sessions = sessions_after - sessions_before
    print(f"\n40 requests: {through} transactions through PgBouncer, {new_sessions} new sessions on the primary")
    assert through >= 40, (before, after)
    assert new_sessions <= pgbouncer.DEFAULT_POOL_SIZE, new_sessions


def test_a_sigkilled_pgbouncer_is_restarted_and_writes_carry_on(bouncer, api_url, controller, stack_config,
                                                               new_user):
    """Writers run while PgBouncer is SIGKILLed. The supervisor restarts it; once it is healthy
    again, no write fails (the ones in flight at the kill may, and are printed)."""
    wait_for(lambda: app_uses_pgbouncer(stack_config), timeout=30, what="PgBouncer running and healthy")
    workers_follow()
    user = new_user()
    load = Background(lambda http: create_post(api_url, user["id"], http))
    with load:
        wait_for(lambda: len(load.results) > 40, timeout=30, what="writes to flow")
        victim = controller.process("pgbouncer")["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: (p := controller.process("pgbouncer"))["healthy"] and p["pid"] not in (None, victim),
                 timeout=120, what="the supervisor to restart PgBouncer")
        wait_for(lambda: app_uses_pgbouncer(stack_config), timeout=60, what="PgBouncer healthy in the report")
        healthy_at = time.monotonic()
        through_before = bouncer_stats(stack_config)["total_xact_count"]
        wait_for(lambda: sum(1 for s, _ in load.results if s > healthy_at) >= 100, timeout=120,
                 what="100 writes after PgBouncer is healthy again")
        through_after = bouncer_stats(stack_config)["total_xact_count"]
    results = [(s, r if isinstance(r, str) else r.status_code) for s, r in load.results]
    during = [(round(s - killed_at, 3), c) for s, c in results if killed_at - 1 <= s <= healthy_at and c != 201]
    after = [(round(s - killed_at, 3), c) for s, c in results if s > healthy_at and c != 201]
    print(f"\n{len(results)} writes; healthy again {healthy_at - killed_at:.2f}s after the SIGKILL; failed "
          f"around the kill: {len(during)} {during[:5]}; failed after: {len(after)}")
    assert after == [], after[:5]
    assert through_after - through_before >= 50  # the writes after went through the new PgBouncer
    events = controller.events()
    assert any(e["event"] == "died" and e.get("name") == "pgbouncer" for e in events)
    assert any(e["event"] == "restarted" and e.get("name") == "pgbouncer" for e in events)


def test_turning_it_off_retires_it_and_the_app_connects_directly(bouncer, topology_admin, api_url, controller,
                                                                stack_config, new_user):
    pid = controller.process("pgbouncer")["pid"]
    data = topology_admin.apply({"pgbouncer": False, "pool": False})
    assert data["pending"] == [] and data["topology"]["pgbouncer"] is False
    assert "pgbouncer" not in {p["name"] for p in controller.status()["processes"]}
    wait_for(lambda: not ports.in_use(stack_config.pgbouncer_port), timeout=30, what="PgBouncer's port to close")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    wait_for(lambda: "pgbouncer" not in report(stack_config).nodes, timeout=10, what="the report to drop it")
    assert report(stack_config).running["pgbouncer"] is False
    wait_for(lambda: not app_uses_pgbouncer(stack_config), timeout=10, what="the app to connect directly")
    workers_follow()
    # Unpooled and direct: each request opens its own session on the primary.
    user = new_user()
    before = primary_sessions(stack_config)
    for _ in range(20):
        assert create_post(api_url, user["id"]).status_code == 201
    assert primary_sessions(stack_config) - before >= 20
    assert any(e["event"] == "pgbouncer_retired" for e in controller.events())
    topology_admin.apply({}, replace=True)
