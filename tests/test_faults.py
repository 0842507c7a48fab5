"""Faults under load (issue 12): real SIGKILLs through the chaos API while the load generator runs,
with the ledger of acknowledged writes checked afterwards (workbench/loadgen/faults.py). The tests
assert what happens; the figures (outage windows, availability) go to docs/reliability.md through
`python manage.py faults all`."""
import threading
import time

import psycopg
import pytest
import requests

from api.gateway import auth
from conftest import assert_problem, wait_for
from workbench.loadgen import faults
from workbench.stack import launcher

RATE, DURATION, FAULT_AT = 40, 6, 2


@pytest.fixture(scope="module", autouse=True)
def default_topology_after(topology_admin, stack_config):
    yield
    for name in launcher.status(stack_config)["chaos"]["held"]:
        launcher.chaos(stack_config, "start", name)
    topology_admin.apply({}, replace=True)


def run(stack_config, name: str, **kw) -> faults.Outcome:
    outcome = faults.run(stack_config, faults.SCENARIOS[name], rate=RATE, duration_s=DURATION,
                         fault_at_s=FAULT_AT, **kw)
    print(faults.row(outcome, name), *faults.timeline(outcome), sep="\n")
    assert outcome.requests >= RATE * DURATION * 0.95, "the load ran"
    assert outcome.acknowledged_writes > 0, "writes were made and acknowledged"
    assert outcome.recovery_s is not None, f"no {outcome.recovered} event after the fault"
    return outcome


def events_named(outcome, event: str, name: str) -> list:
    return [e for e in outcome.events if e["event"] == event and e.get("name") == name]


def test_a_killed_replica_costs_no_read(stack_config):
    o = run(stack_config, "replica")
    assert events_named(o, "chaos_kill", "replica-1") and events_named(o, "restarted", "replica-1")
    assert o.failed_reads() == 0, o.errors
    assert o.writes_lost == 0


def test_a_killed_cache_node_costs_no_5xx(stack_config):
    o = run(stack_config, "cache-node")
    assert events_named(o, "chaos_kill", "valkey-cache") and events_named(o, "restarted", "valkey-cache")
    assert o.five_xx() == 0, o.errors
    assert o.writes_lost == 0


def test_a_killed_app_server_fails_requests_only_around_the_kill(stack_config):
    o = run(stack_config, "app-server")
    assert events_named(o, "chaos_kill", "app-2")
    # Only what app-2 held when it died can fail: Caddy retries refused dials on app-1 and its
    # health check (each second) takes app-2 out. Nothing fails later than that.
    if o.first_failure_s is not None:
        assert o.first_failure_s >= o.fault_s - 0.05, (o.first_failure_s, o.fault_s)
        assert o.last_failure_s <= o.fault_s + 3.0, (o.last_failure_s, o.errors)
    assert o.writes_lost == 0


def write_succeeds(api_url, new_user) -> bool:
    try:
        new_user()
        return True
    except AssertionError:  # conftest.sign_up asserts its 201
        return False


def test_primary_lost_then_failed_over_loses_no_acknowledged_write_with_sync_replication(stack_config, api_url,
                                                                                             new_user):
    o = run(stack_config, "primary", replication="remote_apply")
    done = [e for e in o.events if e["event"] == "failover_done"]
    assert done and done[0]["reason"].startswith("auto"), [e["event"] for e in o.events]
    # One outage, one failover: the promoted primary is not taken for down in its turn.
    assert [e["event"] for e in o.events].count("failover_started") == 1, [e["event"] for e in o.events]
    assert o.failed_reads() == 0, o.errors              # reads went on from the replicas
    assert set(o.errors) <= {"503"}, o.errors            # writes: 503 with Retry-After, never 500 or a hang
    assert o.failed_writes() > 0                         # the window was real
    assert o.writes_lost == 0, o.lost_ids
    wait_for(lambda: write_succeeds(api_url, new_user), timeout=60, what="writes to succeed after the failover")


def test_meta_down_stops_sign_ins_not_reads_or_posts(stack_config):
    o = run(stack_config, "meta")
    assert o.probes["sign-in"][0] == 503 and o.probes["sign-up"][0] == 503, o.probes
    assert o.probes["read a user"][0] == 200, o.probes
    assert o.failed == 0, o.errors                        # under hash placement no read or post needs meta
    assert o.writes_lost == 0


# --- the chaos API itself -----------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    ({"action": "explode", "role": "app-1"}, "action"),
    ({"action": "kill", "role": "nothing-1"}, "role"),
    ({"action": "kill"}, "role"),
    ({"action": "slow", "role": "app-1", "ms": 10}, "role"),
    ({"action": "slow", "role": "primary", "ms": -1}, "ms"),
    ({"action": "slow", "role": "primary", "ms": "lots"}, "ms"),
    ({"action": "failover", "shard": 0}, "shard"),
    (["kill"], "(body)"),
])
def test_bad_chaos_requests_name_the_field(stack_config, body, field):
    response = requests.post(stack_config.controller_url + "/chaos", json=body,
                             headers=stack_config.operator_headers(), timeout=10)
    assert response.status_code == 400 and response.json()["field"] == field, response.text


def test_failover_without_a_replica_changes_nothing(stack_config, topology_admin, controller):
    topology_admin.apply({}, replace=True)
    pid = controller.process("pg-primary")["pid"]
    code, answer = launcher.chaos(stack_config, "failover")
    assert code == 409 and "no live replica" in answer["error"], answer
    assert controller.process("pg-primary")["pid"] == pid and controller.process("pg-primary")["healthy"]


def test_slow_adds_its_delay_to_each_query_and_is_undone(stack_config, api_url, new_user):
    url = f"{api_url}/users/{new_user()['id']}"

    def took() -> float:
        started = time.monotonic()
        assert requests.get(url, timeout=30).status_code == 200
        return time.monotonic() - started

    assert launcher.chaos(stack_config, "slow", "primary", ms=300)[0] == 200
    try:
        wait_for(lambda: took() >= 0.3, timeout=10, what="a read slowed by 300 ms")
    finally:
        assert launcher.chaos(stack_config, "slow", "primary", ms=0)[0] == 200
    wait_for(lambda: took() < 0.25, timeout=10, what="reads fast again")


def test_a_write_while_the_primary_is_held_down_is_a_prompt_503(stack_config, api_url, new_user, controller):
    user = new_user()
    launcher.chaos(stack_config, "stop", "primary")
    try:
        wait_for(lambda: not controller.status()["data_nodes"]["nodes"]["primary"]["healthy"], timeout=10,
                 what="the report to see the primary down")
        started = time.monotonic()
        response = requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "x"},
                                  headers={"Authorization": f"Bearer {auth.access_token(int(user['id']), 'member')}"},
                                  timeout=30)
        assert time.monotonic() - started < 2.0
        assert_problem(response, 503)
        assert response.headers["Retry-After"]
    finally:
        launcher.chaos(stack_config, "start", "primary")
    wait_for(lambda: controller.process("pg-primary")["healthy"], timeout=60, what="the primary back")


def test_a_primary_left_in_synchronous_mode_is_made_async_until_its_replicas_run(stack_config, topology_admin):
    """What bring-up does before migrating (workbench/stack/datanodes.start_async): a commit that
    waits for a replica that is not there is released."""
    from workbench.stack import datanodes
    topology_admin.apply({}, replace=True)  # no replicas
    url = datanodes.node_url(stack_config, "primary")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'")
        conn.execute("SELECT pg_reload_conf()")
    committed = threading.Event()

    def commit():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE t (x int)")  # a transaction that writes WAL
            conn.execute("SELECT txid_current()")
        committed.set()

    try:
        threading.Thread(target=commit, daemon=True).start()
        assert not committed.wait(1.5), "the commit should wait for a synchronous replica"
        datanodes.start_async(url)
        assert committed.wait(10), "start_async released the waiting commit"
    finally:
        datanodes.start_async(url)
