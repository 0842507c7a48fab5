"""Caddy's load-balancing policy (topology `lb_policy`, workbench/stack/caddy.py), on the real stack:
each response names its app server (X-App-Server), so the tests read the distribution directly.
Tolerances: round-robin reaches every app server within 2 x N requests; a hash policy keeps one key
on one server for all 20 of its requests (no tolerance: rendezvous hashing is deterministic while
the upstreams stay the same), and 16 different keys reach at least two servers; a live switch
under load fails no request at all.

A switch is a graceful reload of Caddy's config: requests in flight finish, but a connection the old
config's server closes while a client's request is still on the wire is closed unanswered (measured:
a few in a thousand requests during six switches, with keep-alive or without). That request reached
no app server, so a client may send it again when it is idempotent (RFC 9110, section 9.2.2), as
browsers do; the load below does so for its GETs, once or twice, and then every request must be 200."""
import collections

import pytest
import requests
from urllib3.util.retry import Retry

from conftest import Background, assert_problem
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


def test_switching_policies_under_load_drops_no_request(lb, stack, stack_config, controller):
    url = stack["api_url"] + "/healthz"

    def send(http):
        if not getattr(http, "retries_idempotent", False):  # an answer is never retried, only a closed connection
            http.mount("http://", requests.adapters.HTTPAdapter(max_retries=Retry(
                total=2, connect=2, read=2, status=0, allowed_methods={"GET"}, raise_on_status=False)))
            http.retries_idempotent = True
        return http.get(url, headers={"X-User-Id": "7"}, timeout=30).status_code

    with Background(send, threads=4, limit=2000) as load:
        for policy in ("least_conn", "header", "uri", "round_robin"):
            lb(policy)
    outcomes = collections.Counter(outcome for _, outcome in load.results)
    assert outcomes and set(outcomes) == {200}, outcomes
    # The dashboard's per-server view: Caddy's upstream stats, one row per app server.
    rows = controller.status()["upstreams"]
    assert {row["app_server"] for row in rows} == {f"app-{i}" for i in range(1, stack_config.app_servers + 1)}
    assert all(row["in_flight"] >= 0 and row["fails"] >= 0 for row in rows), rows


def test_an_unknown_policy_or_header_name_is_a_problem_naming_the_field(lb, topology_admin):
    assert_problem(topology_admin.patch({"lb_policy": "random"}), 400, "lb_policy")
    assert_problem(topology_admin.patch({"lb_header": "X User"}), 400, "lb_header")
