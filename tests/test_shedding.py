"""Load shedding on queue time (api/gateway/shedding.py), on the real stack: Caddy stamps each request
(X-Request-Start), and a request that waited past the topology's budget for a worker gets a quick 503
problem+json with Retry-After and X-Shed, never a 500; with shedding off the same burst gets no 503; a
stamp is believed only from the trusted proxy. Events, never timing thresholds: the burst is more slow
requests at once than the app servers have threads, so some must queue behind a slow one."""
import threading

import pytest
import requests

from conftest import assert_problem, wait_for
from api.gateway import shedding
from workbench import topology

import test_rate_limit
from test_rate_limit import session_from

settled = test_rate_limit.settled  # the fixture: every app worker runs the topology just written

SLOW = {"X-Workbench-Pause": "handler:0.6"}  # api/faults.py: each request holds its thread 0.6 s
OLD_STAMP = "t=1000000000000"                # 2001-09-09: a request that "waited" 25 years


@pytest.fixture(scope="module")
def shed_config(topology_admin, settled):
    """`shed_config(**fields)` patches the shedding group; the module's end puts it back."""
    before = topology_admin.data()["topology"]["shedding"]

    def apply(**fields) -> None:
        response = topology_admin.patch({"shedding": fields})
        assert response.status_code == 200, response.text
        settled()
    yield apply
    assert topology_admin.patch({"shedding": before}).status_code == 200
    settled()


@pytest.fixture(scope="module")
def user_path(api_url, stack):
    user = requests.get(f"{api_url}/users?limit=1", timeout=10).json()["data"]["results"][0]["id"]
    return f"/api/v1/users/{user}"


def burst(url: str, count: int) -> list:
    """`count` slow requests at once (each in its own connection), through Caddy: every response."""
    results, gate = [], threading.Barrier(count)

    def one():
        gate.wait()
        try:
            results.append(requests.get(url, headers={**SLOW, "Connection": "close"}, timeout=60))
        except requests.RequestException as exc:
            results.append(type(exc).__name__)
    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def shed_counters(stack, api_url, topology_admin) -> dict:
    for base in stack["direct_urls"]:  # each worker flushes its counters on its next request
        for _ in range(4):
            requests.get(base + "/healthz", timeout=10)
    response = requests.get(f"{api_url}/admin/ratelimit", headers=topology_admin.headers, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["shedding"]["counters"]


def threads_total(stack_config) -> int:
    return stack_config.app_servers * stack_config.app_workers * stack_config.app_threads


def test_a_burst_past_the_budget_is_shed_with_503_and_off_it_is_queued(shed_config, stack, stack_config, api_url,
                                                                       user_path, topology_admin):
    count = threads_total(stack_config) * 2  # at least half must wait for a thread held 0.6 s
    url = stack["api_url"] + user_path
    shed_config(enabled=True, queue_budget_ms=20, retry_after_s=2)
    before = shed_counters(stack, api_url, topology_admin)["shed"]
    on = burst(url, count)
    statuses = sorted(r.status_code if isinstance(r, requests.Response) else r for r in on)
    assert all(isinstance(r, requests.Response) for r in on), statuses
    assert 500 not in statuses and set(statuses) <= {200, 503}, statuses
    shed = [r for r in on if r.status_code == 503]
    assert shed and any(r.status_code == 200 for r in on), statuses
    for response in shed:
        assert_problem(response, 503)
        assert response.headers["Retry-After"] == "2"
        assert response.headers["X-Shed"].startswith("queue-time=") and response.headers["X-Shed"].endswith("ms")
        assert response.json()["type"].endswith("/load-shed") and response.json()["budget_ms"] == 20
        assert "queue;dur=" in response.headers["Server-Timing"]
        assert "X-Db-Node" in response.headers and response.headers["X-Db-Node"] == "none"  # no database work
    wait_for(lambda: shed_counters(stack, api_url, topology_admin)["shed"] >= before + len(shed), timeout=20,
             what="the shed counter to count the burst's 503s")

    shed_config(enabled=False)
    off = burst(url, count)
    assert [r.status_code for r in off] == [200] * count  # every request waited its turn: nothing shed


def test_a_stamp_is_believed_only_from_the_trusted_proxy(shed_config, stack, user_path):
    shed_config(enabled=True, queue_budget_ms=5000, retry_after_s=1)
    direct = stack["direct_urls"][0] + user_path
    # Straight to an app server from an address that is not a trusted proxy: the forged stamp is ignored.
    with session_from("127.0.0.5") as attacker:
        forged = attacker.get(direct, headers={"X-Request-Start": OLD_STAMP}, timeout=10)
    assert forged.status_code == 200 and "X-Shed" not in forged.headers
    assert "queue;dur=" not in forged.headers["Server-Timing"]
    # Through Caddy, a client's stamp is replaced by Caddy's own: admitted.
    through = requests.get(stack["api_url"] + user_path, headers={"X-Request-Start": OLD_STAMP}, timeout=10)
    assert through.status_code == 200 and "X-Shed" not in through.headers
    assert "queue;dur=" in through.headers["Server-Timing"]
    # From the trusted proxy's address (127.0.0.1), the same stamp is believed: shed at once.
    trusted = requests.get(direct, headers={"X-Request-Start": OLD_STAMP}, timeout=10)
    assert_problem(trusted, 503)
    assert trusted.headers["Retry-After"] == "1" and "X-Shed" in trusted.headers
    # A garbled stamp, even from the trusted proxy, means no shedding for that request.
    for garbled in ("yesterday", "t=", "t=12ab", "1000000000000", ""):
        response = requests.get(direct, headers={"X-Request-Start": garbled}, timeout=10)
        assert response.status_code == 200 and "X-Shed" not in response.headers, garbled
    # The admin endpoints are never shed: the operator can always switch shedding off.
    admin = requests.get(stack["direct_urls"][0] + "/api/v1/admin/topology", timeout=10,
                         headers={"X-Request-Start": OLD_STAMP})
    assert admin.status_code != 503


@pytest.mark.parametrize("meta, expected", [
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REQUEST_START": "t=1000000000000"}, 1000.0),
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REQUEST_START": "t=1000000000000000"}, 1000.0),  # microseconds
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REQUEST_START": "t=1000000002000"}, 0.0),  # in the future: 0
    ({"REMOTE_ADDR": "127.0.0.5", "HTTP_X_REQUEST_START": "t=1000000000000"}, None),  # not a trusted proxy
    ({"REMOTE_ADDR": "127.0.0.1", "HTTP_X_REQUEST_START": "t=abc"}, None),
    ({"REMOTE_ADDR": "127.0.0.1"}, None),
])
def test_queue_time_from_the_stamp(meta, expected):
    assert shedding.queue_ms(meta, now_s=1_000_000_001.0) == expected


@pytest.mark.parametrize("group, field", [
    ({"queue_budget_ms": 0}, "shedding.queue_budget_ms"),
    ({"queue_budget_ms": 1.5}, "shedding.queue_budget_ms"),
    ({"retry_after_s": 0}, "shedding.retry_after_s"),
    ({"enabled": "yes"}, "shedding.enabled"),
    ({"budget": 10}, "shedding.budget"),
])
def test_invalid_shedding_settings_name_the_field(group, field):
    with pytest.raises(topology.TopologyError) as refused:
        topology.parse({"shedding": group})
    assert {name for name, _ in refused.value.errors} == {field}


def test_invalid_shedding_through_the_admin_api_is_problem_json(topology_admin):
    before = topology_admin.data()["version"]
    response = topology_admin.patch({"shedding": {"queue_budget_ms": -1}})
    assert_problem(response, 400, "shedding.queue_budget_ms")
    assert topology_admin.data()["version"] == before
    assert topology.Topology().shedding.enabled is False  # off by default
