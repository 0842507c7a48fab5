"""Query optimization (Phase 3) on the real stack: the admin EXPLAIN of the hot queries, and the
supporting index dropped and recreated live by the controller through the topology toggle."""
from datetime import datetime, timedelta

import pytest
import requests
import yaml

from conftest import ANONYMOUS, assert_problem

INDEX = "api_post_user_time"
POSTS = ("posts_page", "posts_time_range")


@pytest.fixture(scope="module")
def explain(stack, stack_config, topology_admin):
    url = stack["api_url"] + "/api/v1/admin/explain"
    headers = {"Authorization": f"Bearer {stack_config.controller_token()}"}

    def get(params, headers=headers):
        return requests.get(url, params=params, headers=headers, timeout=60)

    yield get
    # Other modules share the stack: leave the index in place, built, whatever happened here.
    topology_admin.apply({"indexes": {"post_user_time": True}})


@pytest.fixture(scope="module")
def user_id(api_url):
    """A seeded user, who has posts."""
    response = requests.get(f"{api_url}/users", params={"limit": 1}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]["results"][0]["id"]


def plans(explain, user_id, **params) -> dict:
    response = explain({"user_id": user_id, **params})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [q["query"] for q in data["queries"]] == ["user_by_id", "posts_page", "posts_time_range"]
    for q in data["queries"]:
        assert q["node"] in response.headers["X-DB-Node"]  # the node that ran it, as the header says
        assert q["execution_ms"] > 0 and q["planning_ms"] > 0
        assert "Execution Time:" in q["plan"] and "Buffers:" in q["plan"]  # ANALYZE, BUFFERS
    return data


def test_explain_needs_the_controller_token(explain, user_id):
    for headers in (ANONYMOUS, {"Authorization": "Bearer not-the-token"}, {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        response = explain({"user_id": user_id}, headers=headers)
        assert_problem(response, 401, "Authorization")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("params, field", [
    ({}, "user_id"),
    ({"user_id": "abc"}, "user_id"),
    ({"user_id": "-1"}, "user_id"),
    ({"user_id": "9" * 25}, "user_id"),
    ({"user_id": "1", "since": "yesterday"}, "since"),
    ({"user_id": "1", "until": "2026-01-31T12:00:00"}, "until"),  # no offset
    ({"user_id": "1", "since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "since"),
    ({"user_id": "1", "limit": "0"}, "limit"),
    ({"user_id": "1", "limit": "101"}, "limit"),
    ({"user_id": "1", "cursor": "x"}, "cursor"),
    ({"user_id": "1", "verbose": "1"}, "verbose"),
])
def test_bad_parameters_are_problems_naming_the_field(explain, params, field):
    assert_problem(explain(params), 400, field)


def test_with_the_index_the_posts_queries_use_it(explain, user_id):
    data = plans(explain, user_id, limit=5)
    assert data["user_exists"] and data["limit"] == 5
    toggle = data["supporting_index"]["toggle"]
    assert (toggle["wanted"], toggle["running"], toggle["pending"]) == (True, True, False)
    by_name = {q["query"]: q for q in data["queries"]}
    assert by_name["user_by_id"]["rows"] == 1 and not by_name["user_by_id"]["uses_supporting_index"]
    for name in POSTS:
        q = by_name[name]
        assert q["supporting_index"] == "valid"
        assert q["uses_supporting_index"], q["plan"]
        assert f"using {INDEX}" in q["plan"]
    assert 1 <= by_name["posts_page"]["rows"] <= 6  # limit + 1 rows at most
    assert "LIMIT 6" in by_name["posts_page"]["sql"]

    # No range given: the last 30 days up to now, and the answer says so.
    span = data["time_range"]
    assert span["defaulted"] == ["since", "until"] and "30 days" in span["note"]
    since, until = datetime.fromisoformat(span["since"]), datetime.fromisoformat(span["until"])
    assert until - since == timedelta(days=30)


def test_a_given_range_is_used_as_given(explain, user_id):
    data = plans(explain, user_id, since="2020-01-01T00:00:00Z", until="2030-01-01T00:00:00+01:00")
    span = data["time_range"]
    assert span["defaulted"] == [] and span["note"] is None
    assert datetime.fromisoformat(span["since"]) == datetime.fromisoformat("2020-01-01T00:00:00+00:00")
    ranged = data["queries"][2]
    assert "2020-01-01" in ranged["sql"] and ranged["rows"] >= 1  # every seeded post is in range


def test_a_half_given_range_is_completed_and_says_how(explain, user_id):
    data = plans(explain, user_id, until="2026-01-31T00:00:00Z")
    span = data["time_range"]
    assert span["defaulted"] == ["since"] and "30 days up to `until`" in span["note"]
    assert datetime.fromisoformat(span["since"]) == datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    span = plans(explain, user_id, since="2020-01-01T00:00:00Z")["time_range"]
    assert span["defaulted"] == ["until"] and "up to now" in span["note"]
    assert datetime.fromisoformat(span["until"]) > datetime.fromisoformat("2026-01-01T00:00:00+00:00")


def test_unknown_user_is_explained_with_no_rows(explain):
    data = plans(explain, 1)
    assert not data["user_exists"]
    assert [q["rows"] for q in data["queries"]] == [0, 0, 0]


def test_the_index_toggle_changes_the_plan_live(explain, user_id, topology_admin):
    # Off: the controller drops the index (DROP INDEX CONCURRENTLY); pending until it has.
    response = topology_admin.patch({"indexes": {"post_user_time": False}})
    assert response.status_code == 200, response.text
    assert {"field": "indexes.post_user_time", "wanted": False, "running": True} in response.json()["data"]["pending"]
    topology_admin.settled()
    data = plans(explain, user_id)
    assert data["supporting_index"]["toggle"] == {"field": "indexes.post_user_time", "wanted": False,
                                                  "running": False, "pending": False}
    for q in data["queries"][1:]:
        assert q["supporting_index"] == "absent"
        assert not q["uses_supporting_index"] and INDEX not in q["plan"], q["plan"]
        assert any("Seq Scan" in node or "Index" in node for node in q["plan_nodes"])

    # On again: rebuilt (CREATE INDEX CONCURRENTLY) and analysed, and the plans use it again.
    topology_admin.apply({"indexes": {"post_user_time": True}})
    data = plans(explain, user_id)
    assert data["supporting_index"]["toggle"]["running"] is True
    for q in data["queries"][1:]:
        assert q["supporting_index"] == "valid" and q["uses_supporting_index"], q["plan"]


def test_the_schema_documents_the_endpoint(stack):
    response = requests.get(stack["api_url"] + "/api/schema", timeout=30)
    assert response.status_code == 200
    schema = yaml.safe_load(response.text)
    operation = schema["paths"]["/api/v1/admin/explain"]["get"]
    assert operation["operationId"] == "admin_explain"
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"user_id", "since", "until", "limit"} and params["user_id"]["required"]
