"""The topology: defaults, validation naming fields, versioning under concurrent writers, two app
servers following a change, the admin token, and the CLI. All against the real `state` Valkey."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis
import requests

from conftest import ANONYMOUS, ROOT, assert_problem, wait_for
from workbench import topology

DEFAULTS = topology.Topology().to_dict()


@pytest.fixture(scope="module")
def admin(topology_admin):
    yield topology_admin
    # Leave the defaults (as a new version), carried out, so no other module runs under this one's changes.
    topology_admin.apply({}, replace=True)


def manage(*args):
    return subprocess.run([sys.executable, "manage.py", "topology", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=dict(os.environ))


# --- defaults and round trips ------------------------------------------------------------------
def test_the_defaults(admin, stack_config):
    # Modules that change the topology leave the defaults behind them, as a new version.
    response = admin.get()
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["topology"] == DEFAULTS
    assert (data["version"] == 0) == (data["updated_at"] is None)
    assert data["topology"]["app_servers"] == stack_config.app_servers
    assert data["pending"] == []
    assert 0 <= int(response.headers["X-Topology-Version"]) <= data["version"]  # a worker's copy may be a second old
    # The store itself, on keys nobody has written: the defaults at version 0.
    client = redis.Redis.from_url(stack_config.state_url)
    fresh = topology.Store(client, key=f"test:{uuid.uuid4().hex}", version_key=f"test:{uuid.uuid4().hex}")
    doc = fresh.read()
    assert (doc.version, doc.topology.to_dict(), fresh.version()) == (0, DEFAULTS, 0)


def test_patch_merges_put_replaces_and_get_reads_back(admin):
    before = admin.data()
    response = admin.patch({"read_policy": "least_lag", "emulation": {"rtt_ms": 0.5}})
    assert response.status_code == 200, response.text
    patched = response.json()["data"]
    assert patched["version"] == before["version"] + 1
    assert patched["topology"] == {**before["topology"], "read_policy": "least_lag",
                                   "emulation": {**before["topology"]["emulation"], "rtt_ms": 0.5}}
    assert patched["updated_by"].startswith("api") and patched["updated_at"].endswith("Z")
    assert admin.data() == patched

    replaced = admin.put({"app_servers": 3}).json()["data"]
    assert replaced["version"] == patched["version"] + 1
    assert replaced["topology"] == {**DEFAULTS, "app_servers": 3}  # absent fields went back to defaults
    # Pending until the controller has started app-3 (seconds: a gunicorn boots), then drained again.
    # Each change is waited for: a change undone before the controller has picked it up (it polls
    # every 0.25 s) can look settled for a moment and still be carried out after.
    assert replaced["pending"] == [{"field": "app_servers", "wanted": 3, "running": 2}]
    admin.settled()
    admin.put({})
    assert admin.settled()["pending"] == []


# --- validation --------------------------------------------------------------------------------
INVALID = [
    ({"bogus": 1}, {"bogus"}),
    ({"replicas": 5}, {"replicas"}),
    ({"replicas": "two"}, {"replicas"}),
    ({"emulation": {"rtt_ms": 501}}, {"emulation.rtt_ms"}),
    ({"emulation": {"nope": True}}, {"emulation.nope"}),
    ({"emulation": 3}, {"emulation"}),
    ({"replication": "remote_apply"}, {"replication"}),  # sync with no replica would block every write
    ({"replicas": 1, "emulation": {"stale_replica": 2}}, {"emulation.stale_replica"}),
    ({"replication": "sync"}, {"replication"}),
    ({"read_policy": "nearest", "pool_max": 0, "app_servers": 9, "emulation": {"node_concurrency": -1}},
     {"read_policy", "pool_max", "app_servers", "emulation.node_concurrency"}),
]


@pytest.mark.parametrize("method", ["put", "patch"])
@pytest.mark.parametrize("body,fields", INVALID, ids=[",".join(sorted(f)) for _, f in INVALID])
def test_invalid_topology_names_each_field_and_changes_nothing(admin, method, body, fields):
    admin.patch({"read_policy": "random"})
    before = admin.data()
    response = getattr(admin, method)(body)
    assert_problem(response, 400, *fields)
    assert admin.data() == before


def test_the_node_cap_is_stated(admin):
    before = admin.data()
    response = admin.patch({"replicas": 12})
    assert_problem(response, 400, "replicas")
    details = [e["detail"] for e in response.json()["errors"] if e["field"] == "replicas"]
    assert any("cap on this machine is 12" in d for d in details), details
    assert admin.data() == before
    # Shards are fixed at 1 for now; the rule is already (replicas + 1) x shards.
    assert "16 database nodes" in topology.node_cap_error(3, 4)
    assert topology.node_cap_error(2, 4) is None


def test_problem_pointer_follows_the_nested_field(admin):
    response = admin.patch({"emulation": {"rtt_ms": -1}})
    error = response.json()["errors"][0]
    assert (error["field"], error["pointer"], error["in"]) == ("emulation.rtt_ms", "#/emulation/rtt_ms", "body")


# --- versions ----------------------------------------------------------------------------------
def test_each_accepted_change_is_exactly_one_version(admin):
    start = admin.data()["version"]
    versions = [admin.patch({"max_lag_ms": 10 * i}).json()["data"]["version"] for i in range(1, 4)]
    admin.patch({"replicas": 99})  # rejected: no version
    versions.append(admin.patch({"max_lag_ms": 10}).json()["data"]["version"])  # same value: still a change
    assert versions == [start + 1, start + 2, start + 3, start + 4]


def test_concurrent_patches_lose_no_update(admin, stack):
    """20 writers at once through Caddy: versions are consecutive, and each version's document is
    exactly the previous one with that writer's patch merged in."""
    admin.put({})
    before = admin.data()
    patches = []
    for i in range(20):
        patches.append([{"max_lag_ms": 100 + i}, {"emulation": {"node_concurrency": i}},
                        {"read_your_writes_s": i}, {"emulation": {"rtt_ms": i}}][i % 4])
    barrier = threading.Barrier(len(patches))
    results = [None] * len(patches)

    def write(i):
        barrier.wait()
        results[i] = admin.patch(patches[i])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(len(patches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results if r.status_code != 200]
    written = sorted(((r.json()["data"], patches[i]) for i, r in enumerate(results)), key=lambda p: p[0]["version"])
    assert [d["version"] for d, _ in written] == list(range(before["version"] + 1, before["version"] + 21))
    doc = before["topology"]
    for data, patch in written:
        doc = topology.merge(doc, patch)
        assert data["topology"] == doc, f"version {data['version']} lost an update"
    final = admin.data()
    assert final["version"] == before["version"] + 20 and final["topology"] == doc


def test_store_read_modify_write_is_atomic(stack_config):
    """The store's compare-and-set, on its own keys: 20 threads each add one; none is lost."""
    client = redis.Redis.from_url(stack_config.state_url)
    keys = [f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"]
    store = topology.Store(client, key=keys[0], version_key=keys[1])
    try:
        def bump():
            store.update(lambda t: {**t, "pool_max": t["pool_max"] + 1}, "test")

        threads = [threading.Thread(target=bump) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        doc = store.read()
        assert (doc.version, doc.topology.pool_max, store.version()) == (20, DEFAULTS["pool_max"] + 20, 20)
    finally:
        client.delete(*keys)


# --- every app server follows ------------------------------------------------------------------
def test_both_app_servers_report_the_new_version(admin, stack):
    version = admin.patch({"read_policy": "random"}).json()["data"]["version"]
    for url in stack["direct_urls"]:
        def seen(url=url):
            return requests.get(url + "/api/v1/users?limit=1", timeout=10).headers["X-Topology-Version"] == str(version)
        wait_for(seen, timeout=30, what=f"{url} to report topology version {version}")
    # A refresh is at most a second away, so after it every worker of each server agrees.
    time.sleep(topology.REFRESH_S + 0.5)
    for url in stack["direct_urls"]:
        headers = {requests.get(url + path, timeout=10).headers["X-Topology-Version"]
                   for path in ["/api/v1/users?limit=1", "/api/v1/nope", "/healthz"] * 4}
        assert headers == {str(version)}, url


def test_the_header_costs_no_valkey_call_per_request(admin, stack, stack_config):
    """200 requests, yet only about one version check (a GET) per worker per second."""
    client = redis.Redis.from_url(stack_config.state_url)

    def gets():
        return client.info("commandstats").get("cmdstat_get", {}).get("calls", 0)

    url = stack["direct_urls"][0] + "/healthz"
    with requests.Session() as http:
        before, started = gets(), time.monotonic()
        for _ in range(200):
            assert http.get(url, timeout=10).headers["X-Topology-Version"]
        elapsed, calls = time.monotonic() - started, gets() - before
    workers = len(stack["direct_urls"]) * stack_config.app_workers  # any of them may check meanwhile
    assert calls <= workers * (elapsed / topology.REFRESH_S + 2), (calls, elapsed)


# --- admin only --------------------------------------------------------------------------------
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic {token}", "Bearer {token}x", "Bearer é"])
def test_admin_topology_needs_the_controller_token(admin, stack_config, authorization):
    before = admin.data()
    headers = dict(ANONYMOUS)
    if authorization:
        headers["Authorization"] = authorization.format(token=stack_config.controller_token()).encode("utf-8")
    for method in ("get", "put", "patch"):
        response = getattr(requests, method)(admin.url, headers=headers, json={"replicas": 1}, timeout=10)
        assert_problem(response, 401, "Authorization")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.headers["X-Topology-Version"]
    assert admin.data() == before


# --- the CLI -----------------------------------------------------------------------------------
def test_cli_show_and_set(admin):
    before = admin.data()
    shown = manage("show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == before

    changed = manage("set", "app_servers=3", "read_policy=least_lag", "emulation.node_concurrency=3",
                     "emulation.rtt_ms=2")
    assert changed.returncode == 0, changed.stderr
    after = admin.data()
    assert after["version"] == before["version"] + 1 and after["updated_by"].startswith("cli")
    assert after["topology"] == topology.merge(before["topology"], {
        "app_servers": 3, "read_policy": "least_lag", "emulation": {"node_concurrency": 3, "rtt_ms": 2}})

    text = manage("show")
    assert text.returncode == 0, text.stderr
    assert f"version {after['version']}" in text.stdout and "emulation.rtt_ms" in text.stdout
    # Listed as pending only until the controller has started app-3, which may be done by now.
    assert "pending for the controller: app_servers 2 -> 3" in text.stdout or "pending" not in text.stdout

    admin.settled()  # app-3 started before it is undone (see test_patch_merges_put_replaces_and_get_reads_back)
    reset = manage("reset")
    assert reset.returncode == 0, reset.stderr
    assert admin.data()["topology"] == DEFAULTS
    admin.settled()


def test_cli_invalid_set_exits_non_zero_and_changes_nothing(admin):
    before = admin.data()
    bad = manage("set", "replicas=9", "emulation.rtt_ms=fast", "nosuch=1")
    assert bad.returncode != 0
    for field in ("replicas:", "emulation.rtt_ms:", "nosuch:"):
        assert field in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert manage("set", "no-equals-sign").returncode != 0
    assert admin.data() == before


def test_a_stored_document_from_newer_code_is_read_with_the_fields_this_code_knows(stack_config):
    """An older controller or worker must keep working when newer code has stored a field it
    does not know yet (it did fail on every read: "unknown field")."""
    client = redis.Redis.from_url(stack_config.state_url)
    keys = [f"test:{uuid.uuid4().hex}", f"test:{uuid.uuid4().hex}"]
    store = topology.Store(client, key=keys[0], version_key=keys[1])
    try:
        newer = {**DEFAULTS, "replicas": 1, "from_the_future": True,
                 "emulation": {**DEFAULTS["emulation"], "rtt_ms": 2, "jitter_ms": 1}}
        client.set(keys[0], json.dumps({"version": 7, "updated_at": None, "updated_by": "newer code",
                                        "topology": newer}))
        doc = store.read()
        assert doc.version == 7 and doc.topology.replicas == 1 and doc.topology.emulation.rtt_ms == 2
        # Writes stay strict: an unknown field in a change is still refused, naming it.
        with pytest.raises(topology.TopologyError) as refused:
            store.patch({"from_the_future": 1}, "test")
        assert [name for name, _ in refused.value.errors] == ["from_the_future"]
    finally:
        client.delete(*keys)
