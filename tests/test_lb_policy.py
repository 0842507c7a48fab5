"""Caddy's load-balancing policy (topology `lb_policy`, workbench/stack/caddy.py), on the real stack:
each response names its app server (X-App-Server), so the tests read the distribution directly.
Tolerances: round-robin reaches every app server within 2 x N requests; least_conn sends no request
to a server that has one in flight while another has none (exact: Caddy counts in flight per
server); a hash policy keeps one key on one server for all 20 of its requests (no tolerance:
rendezvous hashing is deterministic while the upstreams stay the same), and 16 different keys
reach at least two servers.

A switch writes a marker file that Caddy's `file` matcher reads on each request: no reload, so no
connection is closed, and a switch under load (reads and writes, sent once each, never resent)
fails no request at all. Only a new header name for the header policy reloads Caddy's config, and
the config file it is rendered to is what a Caddy restarted after a crash runs again."""
import collections
import itertools
import os
import signal
import threading
import time

import pytest
import requests

from conftest import Background, assert_problem, wait_for
from workbench.stack import caddy


@pytest.fixture(scope="module")
def lb(topology_admin, stack_config):
    """`lb(policy, header=None)` switches the policy and waits until Caddy runs it; the module's end
    puts back what ran before."""
    if stack_config.app_servers < 2:
        pytest.skip("needs at least two app servers")
    before = topology_admin.data()["topology"]

    def switch(policy: str, header: str | None = None) -> None:
        topology_admin.apply({"lb_policy": policy, **({"lb_header": header} if header else {})})
        wanted = f"header:{header or before['lb_header']}" if policy == "header" else policy
        assert caddy.running_policy(stack_config) == wanted
    yield switch
    topology_admin.apply({"lb_policy": before["lb_policy"], "lb_header": before["lb_header"]})


def servers(http, url: str, count: int, headers: dict | None = None) -> collections.Counter:
    seen = collections.Counter()
    for _ in range(count):
        response = http.get(url, headers=headers or {}, timeout=10)
        assert response.status_code == 200, response.text
        seen[response.headers["X-App-Server"]] += 1
    return seen


def test_round_robin_spreads_requests_over_every_app_server(lb, http, stack, stack_config):
    lb("round_robin")
    seen = servers(http, stack["api_url"] + "/healthz", 2 * stack_config.app_servers)
    assert set(seen) == {f"app-{i}" for i in range(1, stack_config.app_servers + 1)}, seen


def test_each_app_server_counts_the_requests_it_answered(lb, http, stack, stack_config, controller):
    """The controller's `served` counts (api/served.py, for the dashboard) grow by what each server
    answered, as X-App-Server said; health probes are not counted. Workers flush their counts at
    most every 0.5 s, on their next request (Caddy's probes bring one each second)."""
    lb("round_robin")

    def at_rest():  # what earlier tests sent may still be on its way into the counts
        first = controller.status()["served"]
        time.sleep(1.5)  # past a flush (0.5 s) brought by a health probe (1 s)
        return first if controller.status()["served"] == first else None
    before = wait_for(at_rest, timeout=30, what="the served counts at rest")
    seen = servers(http, stack["api_url"] + "/api/v1/users?limit=1", 40)

    def grown():
        now = controller.status()["served"]
        return all(now.get(name, 0) - before.get(name, 0) >= count for name, count in seen.items())
    wait_for(grown, timeout=30, what="the served counts to include the 40 requests")
    now = controller.status()["served"]
    # Other requests may land meanwhile (the dashboard's, none in the test stack), never fewer.
    assert sum(now.values()) - sum(before.values()) < 40 + 10, (before, now, seen)


def test_least_conn_avoids_the_server_with_a_request_in_flight(lb, http, stack, stack_config):
    lb("least_conn")
    url = stack["api_url"] + "/healthz"
    slow = {}

    def hold():  # a request that stays in flight for 4 s (api/faults.py, on in the test stack)
        with requests.Session() as session:
            slow["response"] = session.get(url, headers={"X-Workbench-Pause": "handler:4"}, timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    wait_for(lambda: sum(row["in_flight"] for row in caddy.upstreams(stack_config) or []) >= 1, timeout=30,
             interval=0.05, what="the slow request in flight at an app server")
    seen = servers(http, url, 10)
    holder.join()
    busy = slow["response"].headers["X-App-Server"]
    assert busy not in seen, f"least_conn sent {seen[busy]} requests to {busy}, which had one in flight"


def test_header_hash_keeps_one_value_on_one_server(lb, http, stack):
    lb("header", "X-User-Id")
    url = stack["api_url"] + "/healthz"
    reached = set()
    for user in range(16):
        seen = servers(http, url, 20 if user < 2 else 3, {"X-User-Id": str(user)})
        assert len(seen) == 1, f"X-User-Id {user} reached {seen}"
        reached |= set(seen)
    assert len(reached) >= 2, f"16 header values all went to {reached}"


def test_uri_hash_keeps_one_uri_on_one_server(lb, http, stack):
    lb("uri")
    reached = set()
    for key in range(16):
        seen = servers(http, f"{stack['api_url']}/healthz?k={key}", 20 if key < 2 else 3)
        assert len(seen) == 1, f"URI ?k={key} reached {seen}"
        reached |= set(seen)
    assert len(reached) >= 2, f"16 URIs all went to {reached}"


def test_switching_policies_under_load_fails_no_request(lb, stack, stack_config, controller, new_user, api_url):
    """Reads and writes (a post created by its owner's operator), each sent once: a closed
    connection would surface as an exception's name among the outcomes."""
    user = new_user()
    turn = itertools.count()

    def send(http):
        if next(turn) % 2:
            return http.post(f"{api_url}/users/{user['id']}/posts", json={"title": "during a switch"},
                             timeout=30).status_code
        return http.get(stack["api_url"] + "/healthz", headers={"X-User-Id": "7"}, timeout=30).status_code

    with Background(send, threads=4, limit=2000) as load:
        for policy in ("least_conn", "header", "uri", "round_robin", "least_conn", "round_robin"):
            lb(policy)
    outcomes = collections.Counter(outcome for _, outcome in load.results)
    print(f"requests during six switches: {sum(outcomes.values())}, outcomes {dict(outcomes)}")
    assert outcomes[200] >= 20 and outcomes[201] >= 20, outcomes
    assert set(outcomes) == {200, 201}, outcomes
    # The dashboard's per-server view: Caddy's upstream stats, one row per app server.
    rows = controller.status()["upstreams"]
    assert {f"app-{i}" for i in range(1, stack_config.app_servers + 1)} <= {row["app_server"] for row in rows}
    assert all(row["in_flight"] >= 0 and row["fails"] >= 0 for row in rows), rows


def test_an_unknown_policy_or_header_name_is_a_problem_naming_the_field(lb, topology_admin):
    assert_problem(topology_admin.patch({"lb_policy": "random"}), 400, "lb_policy")
    assert_problem(topology_admin.patch({"lb_header": "X User"}), 400, "lb_header")


def test_a_caddy_killed_and_restarted_runs_the_same_policy_and_header(lb, http, stack, stack_config, controller):
    lb("header", "X-Tenant")  # a new header name: the one switch that reloads Caddy
    before = controller.process("caddy")
    os.kill(before["pid"], signal.SIGKILL)
    wait_for(lambda: (row := controller.process("caddy"))["pid"] not in (None, before["pid"]) and row["healthy"],
             timeout=60, what="the controller restarting Caddy")
    assert caddy.running_policy(stack_config) == "header:X-Tenant"
    seen = servers(http, stack["api_url"] + "/healthz", 10, {"X-Tenant": "acme"})
    assert len(seen) == 1, seen
