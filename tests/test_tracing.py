"""Tracing (issue 11, part 2) and the observability switches, on the real stack: a traced request's
spans per layer (api/tracing.py), trace context from Caddy or the client, head sampling, the bounded
store, the admin API; `observability.metrics` off; per-node DB latency in /metrics."""
from __future__ import annotations

import secrets

import pytest
import redis
import requests

from api import tracing
from conftest import assert_problem
from test_metrics import samples, settle, value

FORCE = {"X-Workbench-Trace": "1"}
DB_COUNT = "workbench_db_query_duration_seconds_count"
LATENCY = "workbench_http_request_duration_seconds_count"


@pytest.fixture(scope="module")
def saved_topology(stack, topology_admin):
    """Every test here changes the topology; the module puts back what it found."""
    before = topology_admin.data()["topology"]
    yield before
    assert topology_admin.patch({"cache": before["cache"], "observability": before["observability"]}).status_code == 200
    settle(stack)


@pytest.fixture(scope="module")
def state(stack, stack_config):
    return redis.Redis.from_url(stack_config.state_url, socket_timeout=5)


def scrape(stack_config, server: str) -> dict:
    port = stack_config.app_port(int(server.removeprefix("app-")))
    response = requests.get(f"http://127.0.0.1:{port}/metrics", headers=stack_config.operator_headers(), timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


def stored(api_url, trace_id: str) -> dict:
    response = requests.get(f"{api_url}/admin/traces/{trace_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def observe(stack, topology_admin, **values):
    assert topology_admin.patch({"observability": values}).status_code == 200
    settle(stack)


def test_a_forced_request_has_a_span_per_layer_nested_in_time(stack, api_url, new_user, topology_admin,
                                                               saved_topology):
    assert topology_admin.patch({"cache": {"mode": "cache-aside", "l1": False}}).status_code == 200
    observe(stack, topology_admin, trace_sample_rate=0.0)
    user = new_user()["id"]  # never read yet: a cache miss, then the database
    response = requests.get(f"{api_url}/users/{user}", headers=FORCE, timeout=10)
    assert response.status_code == 200 and response.headers["X-Cache"] == "miss"
    trace_id = response.headers["X-Trace-Id"]
    # No client traceparent: Caddy made one from its request uuid, the same one it gave X-Request-Id.
    assert trace_id == response.headers["X-Request-Id"].replace("-", "")
    doc = stored(api_url, trace_id)
    assert doc["sampled_by"] == "forced" and doc["status"] == 200 and doc["route"] == "api/v1/users/<id64:user_id>"
    spans = {s["span_id"]: s for s in doc["spans"]}
    by_name = {}
    for s in doc["spans"]:
        by_name.setdefault(s["name"], []).append(s)
    assert {"gateway", "view", "cache.lookup", "router.choose", "db.query", "render", "cache.fill"} <= set(by_name)
    (root,) = by_name["gateway"]
    assert root["start_ms"] == 0 and root["parent_id"] == doc["remote_parent"]  # Caddy's, not recorded here
    assert root["duration_ms"] == doc["duration_ms"] > 0

    def ancestors(span):
        names = []
        while span["parent_id"] in spans:
            span = spans[span["parent_id"]]
            names.append(span["name"])
        return names

    for s in doc["spans"]:
        if s is root:
            continue
        parent = spans[s["parent_id"]]  # every other span's parent is in the trace
        assert s["duration_ms"] >= 0
        assert parent["start_ms"] - 0.01 <= s["start_ms"]
        assert s["start_ms"] + s["duration_ms"] <= parent["start_ms"] + parent["duration_ms"] + 0.01, (s, parent)
    for name in ("cache.lookup", "router.choose", "db.query", "render"):
        assert ancestors(by_name[name][0])[-2:] == ["view", "gateway"], name
    node = response.headers["X-DB-Node"]
    assert any(s["attributes"]["db.node"] == node and "api_user" in s["attributes"]["db.statement"]
               for s in by_name["db.query"])
    assert by_name["router.choose"][0]["attributes"]["db.node"] == node
    assert by_name["cache.lookup"][0]["attributes"]["cache.hit"] is False
    # The summary row says the same.
    rows = requests.get(f"{api_url}/admin/traces", params={"limit": 50}, timeout=10).json()["data"]["traces"]
    row = next(r for r in rows if r["trace_id"] == trace_id)
    assert row["db_queries"] == len(by_name["db.query"]) and row["spans"] == len(doc["spans"])


def test_a_sampled_traceparent_keeps_its_trace_id_and_sampling_zero_stores_nothing(
        stack, api_url, topology_admin, saved_topology, state):
    observe(stack, topology_admin, trace_sample_rate=0.0)
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    response = requests.get(f"{api_url}/users?limit=1", headers={"traceparent": f"00-{trace_id}-{parent}-01"},
                            timeout=10)
    assert response.status_code == 200 and response.headers["X-Trace-Id"] == trace_id
    doc = stored(api_url, trace_id)
    assert doc["sampled_by"] == "parent" and doc["remote_parent"] == parent
    # At rate 0, neither a plain request nor one whose traceparent is not sampled is traced.
    newest = state.lindex(tracing.KEY, 0)
    with requests.Session() as http:
        answers = [http.get(f"{api_url}/users?limit=1", timeout=10) for _ in range(10)]
        answers.append(http.get(f"{api_url}/users?limit=1", timeout=10,
                                headers={"traceparent": f"00-{secrets.token_hex(16)}-{parent}-00"}))
    assert all(r.status_code == 200 and "X-Trace-Id" not in r.headers for r in answers)
    assert state.lindex(tracing.KEY, 0) == newest
    # At rate 1, every request is.
    observe(stack, topology_admin, trace_sample_rate=1.0)
    response = requests.get(f"{api_url}/users?limit=1", timeout=10)
    assert stored(api_url, response.headers["X-Trace-Id"])["sampled_by"] == "rate"


def test_the_store_stays_bounded_and_the_api_checks_its_input(stack, api_url, topology_admin, saved_topology, state):
    observe(stack, topology_admin, trace_sample_rate=0.0, trace_store=3)
    with requests.Session() as http:
        ids = [http.get(f"{api_url}/users?limit=1", headers=FORCE, timeout=10).headers["X-Trace-Id"]
               for _ in range(5)]
    assert state.llen(tracing.KEY) == 3
    listed = requests.get(f"{api_url}/admin/traces", params={"limit": 3}, timeout=10).json()["data"]
    assert [r["trace_id"] for r in listed["traces"]] == ids[:-4:-1]  # newest first
    assert listed["trace_store"] == 3
    assert_problem(requests.get(f"{api_url}/admin/traces", params={"limit": 4}, timeout=10), 400, "limit")
    assert_problem(requests.get(f"{api_url}/admin/traces/not-a-trace", timeout=10), 400, "trace_id")
    assert_problem(requests.get(f"{api_url}/admin/traces/{ids[0]}", timeout=10), 404, "trace_id")  # pushed out
    assert requests.get(f"{api_url}/admin/traces", headers={"Authorization": None}, timeout=10).status_code == 401
    assert_problem(topology_admin.patch({"observability": {"trace_sample_rate": 1.5}}), 400,
                   "observability.trace_sample_rate")
    observe(stack, topology_admin, trace_store=saved_topology["observability"]["trace_store"])


def test_metrics_off_records_nothing_and_db_latency_is_per_node(stack, stack_config, api_url, topology_admin,
                                                                saved_topology):
    labels = {"route": "api/v1/users", "method": "GET", "status": "200"}
    servers = [f"app-{k}" for k in range(1, len(stack["direct_urls"]) + 1)]
    observe(stack, topology_admin, metrics=True)
    before = {name: scrape(stack_config, name) for name in servers}
    response = requests.get(f"{api_url}/users?limit=1", timeout=10)
    node, server = response.headers["X-DB-Node"], response.headers["X-App-Server"]
    after = scrape(stack_config, server)
    assert value(after, DB_COUNT, node=node) > value(before[server], DB_COUNT, node=node)
    assert value(after, "workbench_db_query_duration_seconds_bucket", node=node, le="+Inf") >= 1

    observe(stack, topology_admin, metrics=False)
    before = {name: scrape(stack_config, name) for name in servers}
    with requests.Session() as http:
        for _ in range(6):
            assert http.get(f"{api_url}/users?limit=1", timeout=10).status_code == 200
    for name in servers:
        after = scrape(stack_config, name)
        assert value(after, LATENCY, **labels) == value(before[name], LATENCY, **labels), name
        assert value(after, DB_COUNT, node=node) == value(before[name], DB_COUNT, node=node), name
    observe(stack, topology_admin, metrics=True)


def test_the_status_page_shows_the_latest_trace_as_a_waterfall(stack, api_url):
    from test_dashboard_apptest import run_page

    trace_id = requests.get(f"{api_url}/users?limit=1", headers=FORCE, timeout=10).headers["X-Trace-Id"]
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert "Tracing" in [h.value for h in at.subheader]
    (choice,) = [s for s in at.selectbox if s.label == "Trace to show as a waterfall"]
    assert choice.value.endswith(f"({trace_id[:8]})")  # the newest is shown by default
    assert at.get("vega_lite_chart")  # the waterfall
