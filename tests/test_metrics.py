"""Prometheus metrics (issue 11) on the real stack: each app server's /metrics (api/metrics.py), and the
controller's one view of the stack (workbench/stack/metrics.py)."""
from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ANONYMOUS, assert_problem, wait_for
from workbench import topology

LATENCY = "workbench_http_request_duration_seconds_count"


def samples(text: str) -> dict:
    """{(sample name, sorted label items): value}"""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def scrape(stack, stack_config):
    """scrape(app_server) -> samples of that app server's /metrics, asked directly with the token."""
    headers = stack_config.operator_headers()

    def get(name: str) -> dict:
        port = stack_config.app_port(int(name.removeprefix("app-")))
        response = requests.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.text)
    return get


def settle(stack) -> None:
    """Every app worker runs the topology just written (each checks at most once a second)."""
    time.sleep(topology.REFRESH_S + 0.25)
    for base in stack["direct_urls"]:
        for _ in range(4):
            requests.get(base + "/healthz", headers={"Connection": "close"}, timeout=10)


def test_a_request_through_caddy_counts_on_the_server_that_answered(stack, scrape):
    names = [f"app-{k}" for k in range(1, len(stack["direct_urls"]) + 1)]
    before = {name: scrape(name) for name in names}
    response = requests.get(stack["api_url"] + "/api/v1/users?limit=1", timeout=10)
    assert response.status_code == 200
    server = response.headers["X-App-Server"]
    labels = {"route": "api/v1/users", "method": "GET", "status": "200"}  # the URL pattern, not the path
    after = scrape(server)
    assert value(after, LATENCY, **labels) == value(before[server], LATENCY, **labels) + 1
    assert value(after, "workbench_http_request_duration_seconds_bucket", le="+Inf", **labels) >= 1
    assert value(after, "workbench_topology_version") == int(response.headers["X-Topology-Version"])
    assert sum(v for (name, _), v in after.items() if name == "workbench_db_queries_total") > 0
    # A route with a parameter is labelled by its pattern; an unknown path by one fixed value.
    requests.get(stack["api_url"] + "/api/v1/no/such/thing", timeout=10)
    pattern = [k for k in samples_of_all(names, scrape) if k[0] == LATENCY]
    assert all("/no/such" not in dict(labels_)["route"] for _, labels_ in pattern)


def samples_of_all(names, scrape) -> dict:
    merged = {}
    for name in names:
        merged.update(scrape(name))
    return merged


def test_metrics_need_the_token_and_caddy_does_not_route_them(stack, stack_config):
    direct = stack["direct_urls"][0] + "/metrics"
    assert_problem(requests.get(direct, headers=ANONYMOUS, timeout=10), 401)  # conftest adds the token otherwise
    assert requests.get(direct, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    through_caddy = requests.get(stack["api_url"] + "/metrics", headers=stack_config.operator_headers(), timeout=10)
    assert through_caddy.status_code == 404


def test_the_controller_adds_up_every_app_server_and_the_engines(stack, stack_config):
    url = stack_config.controller_url + "/metrics"
    assert requests.get(url, headers=ANONYMOUS, timeout=10).status_code == 401
    requests.get(stack["api_url"] + "/api/v1/users?limit=1", timeout=10)
    started = time.monotonic()
    response = requests.get(url, headers=stack_config.operator_headers(), timeout=20)
    assert response.status_code == 200 and time.monotonic() - started < 10
    scraped = samples(response.text)
    servers = [f"app-{k}" for k in range(1, len(stack["direct_urls"]) + 1)]
    for name in servers:
        assert value(scraped, "up", job="app", instance=name) == 1
        assert any(dict(labels).get("app_server") == name for (metric, labels) in scraped
                   if metric == "workbench_topology_version"), name
    for role in ("state", "cache"):
        assert value(scraped, "up", job="valkey", instance=role) == 1
        assert value(scraped, "workbench_valkey_used_memory_bytes", role=role, node=role) > 0
    assert value(scraped, "up", job="postgres", instance="primary") == 1
    assert value(scraped, "workbench_pg_xact_commit_total", node="primary") > 0
    assert value(scraped, "workbench_pg_xact_commit_total", node="meta") > 0
    assert value(scraped, "up", job="caddy", instance="caddy") == 1
    assert any(metric.startswith("caddy_") for metric, _ in scraped)  # Caddy's own
    assert ("workbench_caddy_upstream_in_flight", (("app_server", "app-1"),)) in scraped


def test_a_cache_hit_and_a_limited_request_show_in_their_series(stack, topology_admin, api_url, scrape):
    before_topology = topology_admin.data()["topology"]
    user = requests.get(f"{api_url}/users?limit=1", timeout=10).json()["data"]["results"][0]["id"]
    try:
        assert topology_admin.patch({"cache": {**before_topology["cache"], "mode": "cache-aside"}}).status_code == 200
        settle(stack)
        names = [f"app-{k}" for k in range(1, len(stack["direct_urls"]) + 1)]
        before = {name: scrape(name) for name in names}
        hit = wait_for(lambda: (r := requests.get(f"{api_url}/users/{user}", timeout=10)).headers["X-Cache"]
                       in ("hit", "hit-l1") and r, timeout=10, what="a cache hit")
        layer = "l1" if hit.headers["X-Cache"] == "hit-l1" else "valkey"
        server = hit.headers["X-App-Server"]
        assert value(scrape(server), "workbench_cache_hits_total", layer=layer) > \
            value(before[server], "workbench_cache_hits_total", layer=layer)
        assert sum(value(scrape(n), "workbench_cache_misses_total", layer="valkey") for n in names) > \
            sum(value(before[n], "workbench_cache_misses_total", layer="valkey") for n in names)

        rule = {"name": "metrics-test", "per": [], "endpoints": ["GET /api/v1/users/{user_id}"],
                "capacity": 1, "refill_per_s": 0}
        assert topology_admin.patch({"rate_limit": {"enabled": True, "on_error": "open",
                                                    "rules": [rule]}}).status_code == 200
        settle(stack)
        before = {name: scrape(name) for name in names}
        refused = [r for r in (requests.get(f"{api_url}/users/{user}", timeout=10) for _ in range(4))
                   if r.status_code == 429]
        assert refused
        server = refused[0].headers["X-App-Server"]
        after = scrape(server)
        assert value(after, "workbench_ratelimit_decisions_total", decision="limited") > \
            value(before[server], "workbench_ratelimit_decisions_total", decision="limited")
        labels = {"route": "api/v1/users/<id64:user_id>", "method": "GET", "status": "429"}
        assert value(after, LATENCY, **labels) > value(before[server], LATENCY, **labels)
    finally:
        assert topology_admin.patch({"cache": before_topology["cache"],
                                     "rate_limit": before_topology["rate_limit"]}).status_code == 200
        settle(stack)
