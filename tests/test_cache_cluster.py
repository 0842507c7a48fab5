"""The `cache` role as a Valkey Cluster (topology `cache_nodes`, workbench/stack/cachecluster.py and
api/caching/valkey.py) on the real stack: reads hit through the cluster and its keys spread over
the nodes; invalidation (the Valkey entries and every app server's L1, whose pub/sub now goes
through the cluster) still works; a node SIGKILLed under load fails no request, only its slots
turn into misses while the others keep hitting, and the supervisor brings it back with its slots;
back to one node stops the cluster."""
import os
import signal
import time

import pytest
import redis
import requests
from redis.cluster import ClusterNode, RedisCluster

from conftest import Background, wait_for
from api.caching import keys
from test_caching import TOMBSTONE_S, cached_get, get
from workbench import topology
from workbench.stack import cachecluster

NODES = [cachecluster.name(i) for i in range(1, 4)]


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


@pytest.fixture(scope="module")
def cluster(topology_admin, stack_config):
    """cache_nodes=3 with cache-aside (max_lag_ms 0: a write's tombstone lasts only its margin)."""
    topology_admin.apply({"cache_nodes": 3, "max_lag_ms": 0, "cache": {"mode": "cache-aside"}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)  # every app worker has picked it up
    ports = [stack_config.cache_node_port(i) for i in range(1, 4)]
    assert cachecluster.cluster_ok(ports)
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports])
    yield client
    client.close()


@pytest.fixture(scope="module")
def seeded(api_url, cluster):
    """60 seeded users' ids (read through the API: reads only, no sign-up)."""
    data = requests.get(f"{api_url}/users?limit=60", timeout=10).json()["data"]
    ids = [u["id"] for u in data["results"]]
    assert len(ids) >= 30
    return ids


def owner(client: RedisCluster, user_id: int) -> int:
    """The port of the node that owns the user's keys (the hash tag {u:ID})."""
    return client.get_node_from_key(keys.user(user_id)).port


def node_keys(stack_config) -> list[int]:
    return [redis.Redis(port=stack_config.cache_node_port(i)).dbsize() for i in range(1, 4)]


def admin_cache(stack_config, api_url) -> dict:
    return requests.get(f"{api_url}/admin/cache", timeout=10,
                        headers={"Authorization": f"Bearer {stack_config.controller_token()}"}).json()["data"]


def test_reads_hit_through_the_cluster_and_keys_spread(cluster, seeded, api_url, stack_config, controller):
    assert all(controller.process(name)["healthy"] for name in NODES)
    before = node_keys(stack_config)
    with requests.Session() as http:
        for uid in seeded:  # misses, which fill (no write of these users: no tombstone)
            assert http.get(f"{api_url}/users/{uid}", timeout=10).status_code == 200
            assert http.get(f"{api_url}/users/{uid}/posts", timeout=10).status_code == 200
        for uid in seeded:
            url = f"{api_url}/users/{uid}"
            wait_for(lambda: http.get(url, timeout=10).headers["X-Cache"] == "hit", timeout=10, what=f"a hit on {url}")
    after = node_keys(stack_config)
    assert all(a > b for a, b in zip(after, before)), (before, after)  # every node got some
    assert len({owner(cluster, uid) for uid in seeded}) == 3
    # The report: per node keys, memory, hits and misses.
    server = admin_cache(stack_config, api_url)["layers"]["valkey"]["server"]
    assert server["cache_nodes"] == 3 and server["nodes_down"] == 0
    assert [n["node"] for n in server["nodes"]] == NODES
    assert all(n["keys"] > 0 and n["used_memory"] > 0 and n["keyspace_hits"] > 0 for n in server["nodes"])
    assert server["keys"] == sum(n["keys"] for n in server["nodes"])


def test_invalidation_and_the_l1_work_in_cluster_mode(topology_admin, cluster, stack, new_user):
    """l1_ttl_ms is a minute: only the invalidation message, published on the node owning the
    user's slot and broadcast by the cluster, can explain app-2 reading the new bio at once."""
    topology_admin.apply({"cache": {"l1": True, "l1_ttl_ms": 60_000}})
    time.sleep(topology.REFRESH_S + 0.2)
    app_1, app_2 = (url + "/api/v1" for url in stack["direct_urls"][:2])
    user = new_user(bio="before")
    on_2 = f"{app_2}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)
    wait_for(lambda: get(on_2).headers["X-Cache"] == "hit-l1", timeout=30, what="hit-l1 on app-2")
    for _ in range(12):
        get(on_2)  # both workers of app-2 hold it
    patched = requests.patch(f"{app_1}/users/{user['id']}", json={"bio": "after"}, timeout=10)
    assert patched.status_code == 200
    reads = [get(on_2) for _ in range(12)]
    assert [r.json()["data"]["bio"] for r in reads] == ["after"] * 12, [r.headers["X-Cache"] for r in reads]
    time.sleep(TOMBSTONE_S + 0.1)
    assert cached_get(f"{app_1}/users/{user['id']}").json()["data"]["bio"] == "after"
    topology_admin.apply({"cache": {"l1": False}})
    time.sleep(topology.REFRESH_S + 0.2)


def test_a_node_killed_under_load_fails_no_request(cluster, seeded, api_url, controller, stack_config):
    victim = NODES[1]
    victim_port = stack_config.cache_node_port(2)
    on_victim = [u for u in seeded if owner(cluster, u) == victim_port]
    elsewhere = [u for u in seeded if owner(cluster, u) != victim_port]
    assert on_victim and elsewhere
    urls = [f"{api_url}/users/{u}" for u in seeded]
    counter = iter(range(10**9))
    load = Background(lambda http: http.get(urls[next(counter) % len(urls)], timeout=30))

    def seen(status, since, users=None):
        wanted = None if users is None else {f"{api_url}/users/{u}" for u in users}
        return [r for s, r in list(load.results) if s > since and not isinstance(r, str)
                and r.headers.get("X-Cache") == status and (wanted is None or r.url in wanted)]

    with load:
        wait_for(lambda: seen("hit", 0), timeout=30, what="X-Cache: hit")
        before = controller.process(victim)
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        # Readiness names the dead node (the controller restarts it no sooner than 0.75 s later).
        ready = requests.get(api_url.rsplit("/api/", 1)[0] + "/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["failing"] == ["valkey-cache"], ready.text
        assert f":{victim_port}" in ready.json()["checks"]["valkey-cache"]["error"], ready.text
        wait_for(lambda: seen("down", killed_at, on_victim), timeout=30, what="X-Cache: down on the dead node's users")
        # Meanwhile the other nodes' users keep hitting (a breaker per node, not one for the cache).
        down_at = time.monotonic()
        wait_for(lambda: seen("hit", down_at, elsewhere), timeout=30, what="hits on the other nodes")
        wait_for(lambda: (p := controller.process(victim))["healthy"] and p["pid"] != before["pid"],
                 timeout=60, what=f"{victim} restarted")
        back_at = time.monotonic()
        wait_for(lambda: seen("hit", back_at + 0.5, on_victim), timeout=60, what="hits on the dead node's users again")
    outcomes = [r if isinstance(r, str) else r.status_code for _, r in load.results]
    failures = [o for o in outcomes if o != 200]
    print(f"\n{len(outcomes)} requests, {len(failures)} failed, {len(seen('down', 0))} X-Cache: down")
    assert failures == [], failures[:5]
    wrong = [r.url for r in seen("down", 0) if r.url not in {f"{api_url}/users/{u}" for u in on_victim}]
    assert not wrong, wrong[:5]  # only the dead node's keys were skipped
    assert cachecluster.cluster_ok([stack_config.cache_node_port(i) for i in range(1, 4)])  # same slots


def test_back_to_one_node_stops_the_cluster(topology_admin, api_url, stack_config, controller, new_user):
    topology_admin.apply({"cache_nodes": 1})
    time.sleep(topology.REFRESH_S + 0.2)
    names = {p["name"] for p in controller.status()["processes"]}
    assert not names & set(NODES), names
    assert "valkey-cache" in names
    wait_for(lambda: not any(_listening(stack_config.cache_node_port(i)) for i in range(1, 4)), timeout=30,
             what="the cluster's ports to close")
    user = new_user()
    time.sleep(TOMBSTONE_S + 0.1)
    assert cached_get(f"{api_url}/users/{user['id']}").headers["X-Cache"] == "hit"
    server = admin_cache(stack_config, api_url)["layers"]["valkey"]["server"]
    assert server["cache_nodes"] == 1 and [n["node"] for n in server["nodes"]] == ["valkey-cache"]


def _listening(port: int) -> bool:
    from workbench.stack import ports
    return ports.in_use(port)
