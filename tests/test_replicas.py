"""Read replicas on real PostgreSQL processes: the controller starting and retiring them, reads
routed to replicas and writes to the primary, lag, stale reads and read-your-writes, a replica
SIGKILLed under reads, synchronous replication, the pooling toggle and the injected round trip."""
import json
import os
import signal
import time
import uuid

import psycopg
import pytest
import redis
import requests

from conftest import ANONYMOUS, Background, wait_for
from api.routing import nodes, stats


@pytest.fixture(scope="module")
def replicas(topology_admin, stack_config):
    """Two streaming replicas for the module; retired again at its end."""
    data = topology_admin.apply({"replicas": 2}, replace=True)
    yield data
    topology_admin.apply({}, replace=True)
    assert not (stack_config.data_dir / "pg" / "replica-1").exists(), "a retired replica keeps no stale copy"


def report(cfg) -> nodes.Report:
    return nodes.read(redis.Redis.from_url(cfg.state_url))


def a_user(api_url) -> dict:
    return requests.get(f"{api_url}/users?limit=1", timeout=10).json()["data"]["results"][0]


def test_the_controller_runs_the_replicas_the_topology_asks_for(replicas, stack_config, controller):
    assert replicas["pending"] == []
    names = {p["name"]: p for p in controller.status()["processes"]}
    for i in (1, 2):
        assert names[f"replica-{i}"]["healthy"] and names[f"replica-{i}"]["port"] == stack_config.replica_port(i)
        # A real hot standby, streaming from the primary.
        with psycopg.connect(stack_config.replica_url(i), autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
    with psycopg.connect(stack_config.data_database_url, autocommit=True) as conn:
        streams = conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall()
    assert sorted(streams) == [("replica_1", "streaming"), ("replica_2", "streaming")]
    nodes_now = report(stack_config).nodes
    assert nodes_now["replica-1"]["healthy"] and nodes_now["replica-1"]["lag_bytes"] is not None


def test_writes_go_to_the_primary_and_reads_to_the_replicas(replicas, api_url, stack_config, new_user):
    client = redis.Redis.from_url(stack_config.state_url)
    before = stats.totals(client)
    user = new_user()
    write = requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "written"}, timeout=10)
    assert write.status_code == 200 and write.headers["X-DB-Node"] == "primary"
    assert write.headers["X-DB-Lag-Ms"] == "0.0"
    seen = [requests.get(f"{api_url}/users/{user['id']}", timeout=10).headers["X-DB-Node"] for _ in range(20)]
    assert set(seen) == {"replica-1", "replica-2"}, seen  # round robin over both; none on the primary
    # The per-node counters (flushed by each worker at most every half second) agree.
    time.sleep(stats.FLUSH_S + 0.2)
    for _ in range(4):  # a request to each worker flushes what it counted
        requests.get(f"{api_url}/users/{user['id']}", timeout=10)
    after = wait_for(lambda: (t := stats.totals(client)) and t.get("replica-1", 0) - before.get("replica-1", 0) >= 5
                     and t, timeout=10, what="the replica counters")
    assert after.get("replica-1", 0) > before.get("replica-1", 0)
    assert after.get("replica-2", 0) > before.get("replica-2", 0)
    assert after.get("primary", 0) > before.get("primary", 0)


@pytest.mark.parametrize("policy", ["random", "least_lag"])
def test_other_read_policies_use_replicas(replicas, topology_admin, api_url, policy):
    topology_admin.apply({"read_policy": policy})
    try:
        user = a_user(api_url)
        seen = {requests.get(f"{api_url}/users/{user['id']}", timeout=10).headers["X-DB-Node"] for _ in range(30)}
        assert seen <= {"replica-1", "replica-2"} and seen, seen
        if policy == "random":
            assert seen == {"replica-1", "replica-2"}
    finally:
        topology_admin.apply({"read_policy": "round_robin"})


@pytest.fixture
def stale_replica_1(replicas, topology_admin):
    """replica-1 replays 3 s late; max_lag_ms is high enough that the router still uses it."""
    topology_admin.apply({"max_lag_ms": 60_000, "read_policy": "round_robin",
                          "emulation": {"stale_replica": 1, "apply_delay_ms": 3000}})
    yield
    topology_admin.apply({"max_lag_ms": 1000, "read_your_writes_s": 0,
                          "emulation": {"stale_replica": 0}})


def _visible_user(new_user, api_url) -> str:
    """A new user's URL, once every replica has it (a delayed replica answers 404 before that)."""
    url = f"{api_url}/users/{new_user()['id']}"
    wait_for(lambda: all(requests.get(url, timeout=10).status_code == 200 for _ in range(6)), timeout=30,
             what="the new user on every replica")
    return url


def _bio_reads(url, want, n=12, headers=None):
    out = []
    for _ in range(n):
        r = requests.get(url, headers=headers or {}, timeout=10)
        out.append((r.headers["X-DB-Node"], r.json()["data"]["bio"] == want, float(r.headers["X-DB-Lag-Ms"])))
    return out


def test_a_stale_read_on_a_delayed_replica(stale_replica_1, api_url, stack_config, new_user):
    url = _visible_user(new_user, api_url)
    wait_for(lambda: report(stack_config).nodes["replica-1"]["healthy"], timeout=30, what="replica-1")
    want = f"bio {uuid.uuid4().hex[:8]}"
    assert requests.patch(url, json={"bio": want}, timeout=10).status_code == 200
    reads = _bio_reads(url, want)
    stale = [r for r in reads if not r[1]]
    assert stale and {node for node, _, _ in stale} == {"replica-1"}, reads  # only the delayed one is stale
    assert all(fresh for node, fresh, _ in reads if node == "replica-2"), reads
    # The controller measures the lag, and the response says how far behind its replica was.
    wait_for(lambda: report(stack_config).nodes["replica-1"]["lag_ms"] >= 500, timeout=10, what="lag to show")
    later = _bio_reads(url, want, n=4)
    assert any(node == "replica-1" and lag >= 500 for node, _, lag in later), later
    # After the delay the replica has caught up.
    wait_for(lambda: all(fresh for _, fresh, _ in _bio_reads(url, want, n=4)), timeout=30, what="catch-up")


def test_read_your_writes_avoids_the_stale_read(stale_replica_1, topology_admin, api_url, new_user):
    topology_admin.apply({"read_your_writes_s": 10})
    url = _visible_user(new_user, api_url)
    want = f"bio {uuid.uuid4().hex[:8]}"
    me = {"X-Client-Id": f"learner-{uuid.uuid4().hex[:6]}"}
    assert requests.patch(url, json={"bio": want}, headers=me, timeout=10).status_code == 200
    mine = _bio_reads(url, want, headers=me)
    assert all(fresh and node == "primary" for node, fresh, _ in mine), mine
    others = _bio_reads(url, want)  # another client has no window: it can still read stale data
    assert any(not fresh for _, fresh, _ in others), others


def test_a_replica_past_max_lag_is_skipped(stale_replica_1, topology_admin, api_url, stack_config, new_user):
    topology_admin.apply({"max_lag_ms": 500})
    url = _visible_user(new_user, api_url)
    want = f"bio {uuid.uuid4().hex[:8]}"
    assert requests.patch(url, json={"bio": want}, timeout=10).status_code == 200
    wait_for(lambda: report(stack_config).nodes["replica-1"]["lag_ms"] > 1000, timeout=10, what="replica-1 to lag")
    time.sleep(nodes.REFRESH_S + 0.1)  # every worker has the report
    reads = _bio_reads(url, want)
    assert {node for node, _, _ in reads} == {"replica-2"} and all(f for _, f, _ in reads), reads


def test_a_replica_sigkilled_under_reads_fails_no_read(replicas, api_url, controller, stack_config):
    """Readers run while replica-1's postmaster is SIGKILLed: every read succeeds (a failed one is
    retried on another node), and the controller takes it out of rotation and back."""
    user = a_user(api_url)
    load = Background(lambda http: http.get(f"{api_url}/users/{user['id']}", timeout=30))
    with load:
        wait_for(lambda: len(load.results) > 40, timeout=30, what="reads to flow")
        victim = controller.process("replica-1")["pid"]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: not report(stack_config).nodes["replica-1"]["healthy"], timeout=30,
                 interval=0.02, what="the controller to take replica-1 out of rotation")
        noticed_s = time.monotonic() - killed_at
        wait_for(lambda: report(stack_config).nodes["replica-1"]["healthy"], timeout=60,
                 what="replica-1 to be restarted and back in rotation")
        back_at = time.monotonic()
        wait_for(lambda: any(s > back_at and not isinstance(r, str) and r.headers.get("X-DB-Node") == "replica-1"
                             for s, r in load.results), timeout=30, what="reads on replica-1 again")
    failures = [r if isinstance(r, str) else r.status_code for _, r in load.results
                if isinstance(r, str) or r.status_code != 200]
    retried = [r.headers["X-DB-Retried-From"] for _, r in load.results
               if not isinstance(r, str) and "X-DB-Retried-From" in r.headers]
    print(f"\ncontroller noticed the SIGKILLed replica after {noticed_s:.3f}s; {len(load.results)} reads, "
          f"{len(failures)} failed, {len(retried)} retried on another node: {retried[:3]}")
    assert failures == [], failures[:5]
    events = controller.events()
    assert any(e["event"] == "died" and e.get("name") == "replica-1" for e in events)
    assert any(e["event"] == "replica_out_of_rotation" and e.get("name") == "replica-1" for e in events)


def test_replicas_retired_and_made_again_fail_no_read(replicas, topology_admin, api_url):
    """Every worker's pools hold connections to the replicas; retiring them and making new ones
    (new processes on the same ports) must not turn those dead connections into failed reads."""
    user = a_user(api_url)
    url = f"{api_url}/users/{user['id']}"
    with requests.Session() as http:
        assert all(http.get(url, timeout=10).status_code == 200 for _ in range(40))  # fill the pools
        topology_admin.apply({"replicas": 0})
        topology_admin.apply({"replicas": 2})
        time.sleep(nodes.REFRESH_S + 0.1)  # every worker has the new report
        answers = [http.get(url, timeout=10) for _ in range(60)]
    assert [r.status_code for r in answers] == [200] * 60
    assert {r.headers["X-DB-Node"] for r in answers} >= {"replica-1", "replica-2"}


def test_the_admin_api_reports_the_data_nodes(replicas, stack, stack_config):
    url = stack["api_url"] + "/api/v1/admin/nodes"
    assert requests.get(url, headers=ANONYMOUS, timeout=10).status_code == 401
    response = requests.get(url, headers={"Authorization": f"Bearer {stack_config.controller_token()}"}, timeout=10)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["fresh"] and data["age_s"] < 5
    assert data["running"]["replicas"] == 2
    for name in ("replica-1", "replica-2"):
        node = data["nodes"][name]
        assert node["healthy"] and node["state"] == "streaming" and node["lag_bytes"] is not None
        assert node["lag_ms"] is not None and node["connections"] is not None


def test_status_reports_the_data_nodes(replicas, stack_config):
    import subprocess
    import sys
    from conftest import ROOT
    out = subprocess.run([sys.executable, "manage.py", "status", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ))
    data = json.loads(out.stdout)["data_nodes"]
    assert set(data["nodes"]) >= {"primary", "replica-1", "replica-2"}
    assert data["running"]["replicas"] == 2
    text = subprocess.run([sys.executable, "manage.py", "status"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ)).stdout
    assert "replica-2" in text and "LAG MS" in text


def test_a_replica_in_another_region(replicas, topology_admin, api_url):
    """replica-2 "in another region": its queries pay the region round trip and it replays half a
    round trip late; replica-1, local, does neither."""
    data = topology_admin.apply({"read_policy": "round_robin",
                                 "emulation": {"remote_replica": 2, "region_rtt_ms": 100}})
    try:
        assert data["topology"]["emulation"]["remote_replica"] == 2
        assert topology_admin.data()["pending"] == []  # the controller set replica-2's apply delay to 50 ms
        user = a_user(api_url)
        timings = {}
        for _ in range(10):
            r = requests.get(f"{api_url}/users/{user['id']}", timeout=10)
            timings.setdefault(r.headers["X-DB-Node"], []).append(r.elapsed.total_seconds())
        assert min(timings["replica-2"]) >= 0.1 > min(timings["replica-1"]), timings
    finally:
        topology_admin.apply({"emulation": {"remote_replica": 0}})


def _timed_write(api_url, user_id) -> float:
    started = time.perf_counter()
    r = requests.patch(f"{api_url}/users/{user_id}", json={"bio": uuid.uuid4().hex}, timeout=60)
    assert r.status_code == 200, r.text
    return time.perf_counter() - started


def test_synchronous_replication_waits_for_a_standby(replicas, topology_admin, api_url, stack_config, new_user):
    """remote_apply with every replica applying 1.5 s late: a commit waits for a replica to apply
    it, so a write takes the delay. Async, the same write does not wait."""
    topology_admin.apply({"replicas": 1, "emulation": {"stale_replica": 1, "apply_delay_ms": 1500}})
    user_id = new_user()["id"]
    try:
        asynchronous = _timed_write(api_url, user_id)
        data = topology_admin.apply({"replication": "remote_apply"})
        assert data["topology"]["replication"] == "remote_apply"
        with psycopg.connect(stack_config.data_database_url, autocommit=True) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "remote_apply"
            assert conn.execute("SELECT sync_state FROM pg_stat_replication").fetchone()[0] == "quorum"
        synchronous = _timed_write(api_url, user_id)
        print(f"\nwrite with a 1.5 s apply delay: async {asynchronous * 1000:.0f} ms, "
              f"remote_apply {synchronous * 1000:.0f} ms")
        assert synchronous >= 1.4 > asynchronous
    finally:
        topology_admin.apply({"replicas": 2, "replication": "async", "emulation": {"stale_replica": 0}})


def _sessions(cfg) -> int:
    with psycopg.connect(cfg.data_database_url, autocommit=True) as conn:
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = 'workbench'").fetchone()[0]


def test_the_pool_toggle(topology_admin, stack, stack_config):
    """Pooled, 40 requests open (almost) no new connection; unpooled, each opens its own."""
    url = stack["api_url"] + "/api/v1/users?limit=1"
    topology_admin.apply({"replicas": 0, "pool": True}, replace=True)
    for _ in range(20):  # warm every worker's pool
        requests.get(url, timeout=10)
    before = _sessions(stack_config)
    for _ in range(40):
        assert requests.get(url, timeout=10).status_code == 200
    pooled = _sessions(stack_config) - before
    topology_admin.apply({"pool": False})
    time.sleep(1.5)  # every worker has seen the change
    before = _sessions(stack_config)
    for _ in range(40):
        assert requests.get(url, timeout=10).status_code == 200
    unpooled = _sessions(stack_config) - before
    topology_admin.apply({"pool": True})
    print(f"\nnew connections for 40 requests: pooled {pooled}, unpooled {unpooled}")
    assert unpooled >= 40 and pooled <= 8, (pooled, unpooled)


def test_the_injected_round_trip(topology_admin, stack, stack_config):
    """Emulation on with a 60 ms round trip: a one-query read takes at least that; off, it does not."""
    url = stack["api_url"] + "/healthz"
    user_url = stack["api_url"] + "/api/v1/users?limit=1"
    topology_admin.apply({"emulation": {"enabled": True, "rtt_ms": 60, "node_concurrency": 0}}, replace=True)
    try:
        time.sleep(1.5)
        slow = min(requests.get(user_url, timeout=10).elapsed.total_seconds() for _ in range(3))
        assert requests.get(url, timeout=10).elapsed.total_seconds() < 0.06  # no data query, no round trip
    finally:
        topology_admin.apply({}, replace=True)
    time.sleep(1.5)
    fast = min(requests.get(user_url, timeout=10).elapsed.total_seconds() for _ in range(3))
    assert slow >= 0.06 > fast, (slow, fast)


def _concurrent_reads(url: str, n: int) -> float:
    """Seconds for n reads sent at once (each through Caddy, spread over every app worker)."""
    from concurrent.futures import ThreadPoolExecutor
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        assert all(r.status_code == 200 for r in pool.map(lambda _: requests.get(url, timeout=30), range(n)))
    return time.perf_counter() - started


def test_the_node_concurrency_limit_queues_queries(topology_admin, stack):
    """Emulation with a 150 ms round trip: with one slot on the primary, 4 reads at once (in
    different app workers) take their turns, over 4 x 150 ms; with 4 slots they overlap."""
    url = stack["api_url"] + "/api/v1/users/" + str(a_user(stack["api_url"] + "/api/v1")["id"])
    try:
        topology_admin.apply({"emulation": {"enabled": True, "rtt_ms": 150, "node_concurrency": 1}}, replace=True)
        time.sleep(1.5)  # every worker has the change
        one_slot = _concurrent_reads(url, 4)
        topology_admin.apply({"emulation": {"enabled": True, "rtt_ms": 150, "node_concurrency": 4}}, replace=True)
        time.sleep(1.5)
        four_slots = _concurrent_reads(url, 4)
    finally:
        topology_admin.apply({}, replace=True)
    print(f"\n4 concurrent reads, 150 ms round trip: 1 slot {one_slot:.2f}s, 4 slots {four_slots:.2f}s")
    assert one_slot >= 0.6 > four_slots, (one_slot, four_slots)


def test_the_node_limit_holds_across_processes(tmp_path):
    """The per-node slots are flock(2) locks: a second process cannot take a held slot."""
    import subprocess
    import sys
    script = ("import fcntl, os, sys\n"
              "fd = os.open(sys.argv[1], os.O_RDWR)\n"
              "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('took')\n"
              "except BlockingIOError:\n    print('busy')\n")
    from api.routing import emulation
    from django.conf import settings
    with emulation.node_slot("test-node", 1):
        path = settings.STACK.run_dir / "node-slots" / "test-node.0"
        held = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=30)
    free = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=30)
    assert (held.stdout.strip(), free.stdout.strip()) == ("busy", "took")
