"""The NoSQL read model (api/readmodel.py) on the real stack: profile documents kept in the state
Valkey from a transactional outbox by the controller's `relay`; GET /users/{id}?view=profile with
the toggle off and on; a relay SIGKILLed between the commit and the document update (nothing
lost); the rebuild command; a deleted user's document; a bad `view`."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from conftest import ANONYMOUS, ROOT, assert_problem, wait_for
from api import readmodel
from workbench import topology


@pytest.fixture(scope="module")
def state(stack_config, stack):
    return redis.Redis.from_url(stack_config.state_url, socket_timeout=5)


@pytest.fixture(scope="module")
def read_model_on(topology_admin, state):
    """The toggle on, and the relay's first full rebuild done, for the whole module."""
    topology_admin.apply({"read_model": True}, replace=True)
    wait_for(lambda: state.exists(readmodel.BUILT), timeout=90, what="the relay's rebuild after the switch-on")
    time.sleep(topology.REFRESH_S + 0.2)  # every app worker writes the outbox
    yield
    state.delete(readmodel.PAUSE_AT)
    topology_admin.apply({}, replace=True)


def document(state, user_id) -> dict | None:
    raw = state.hgetall(readmodel.key(int(user_id)))
    if not raw or raw.get(b"deleted"):
        return None
    return json.loads(raw[b"data"])


def profile(http, api_url, user_id):
    return http.get(f"{api_url}/users/{user_id}", params={"view": "profile"}, timeout=30)


def drained(http, api_url, admin_headers):
    body = http.get(f"{api_url}/admin/readmodel", headers=admin_headers, timeout=30).json()["data"]
    return body["outbox"]["pending"] == 0


@pytest.fixture(scope="module")
def admin_headers(stack_config):
    return {"Authorization": f"Bearer {stack_config.controller_token()}"}


def test_a_bad_view_is_a_400_naming_it(http, api_url, new_user):
    user = new_user()
    assert_problem(http.get(f"{api_url}/users/{user['id']}", params={"view": "full"}, timeout=30), 400, "view")


def test_with_the_toggle_off_the_profile_comes_from_sql(topology_admin, http, api_url, new_user):
    topology_admin.apply({}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    user = new_user(name="Off")
    http.post(f"{api_url}/users/{user['id']}/posts", json={"title": "first"}, timeout=30)
    response = profile(http, api_url, user["id"])
    assert response.status_code == 200, response.text
    assert response.headers["X-Read-Model"] == "off"
    data = response.json()["data"]
    assert data["user"]["name"] == "Off" and [p["title"] for p in data["latest_posts"]] == ["first"]
    assert_problem(profile(http, api_url, 1), 404, "user_id")


def test_documents_follow_sign_up_update_and_posts(read_model_on, state, http, api_url, new_user, admin_headers):
    user = new_user(name="Ada")
    uid = user["id"]
    wait_for(lambda: (d := document(state, uid)) and d["user"]["name"] == "Ada", timeout=60,
             what="the document after the sign-up")
    assert http.patch(f"{api_url}/users/{uid}", json={"bio": "mathematician"}, timeout=30).status_code == 200
    for i in range(12):
        assert http.post(f"{api_url}/users/{uid}/posts", json={"title": f"p{i}"}, timeout=30).status_code == 201
    wait_for(lambda: (d := document(state, uid)) and d["user"]["bio"] == "mathematician"
             and d["user"]["post_count"] == 12 and d["latest_posts"][0]["title"] == "p11", timeout=60,
             what="the document after the update and the posts")
    doc = document(state, uid)
    assert len(doc["latest_posts"]) == readmodel.LATEST_POSTS
    response = profile(http, api_url, uid)
    assert response.status_code == 200, response.text
    assert response.headers["X-Read-Model"] == "hit"
    assert int(response.headers["X-Read-Model-Age-Ms"]) >= 0
    assert response.json()["data"] == doc
    # The same representation as the SQL path's (and so the same ETag).
    state.delete(readmodel.key(int(uid)))
    miss = profile(http, api_url, uid)
    assert miss.headers["X-Read-Model"] == "miss" and miss.json()["data"] == doc
    assert miss.headers["ETag"] == response.headers["ETag"]
    assert document(state, uid) == doc  # the miss put it back
    assert_problem(profile(http, api_url, 1), 404, "user_id")
    wait_for(lambda: drained(http, api_url, admin_headers), timeout=60, what="the outbox drained")
    body = http.get(f"{api_url}/admin/readmodel", headers=admin_headers, timeout=30).json()["data"]
    assert body["read_model"] is True and body["documents"] >= 1
    assert body["staleness_ms"]["samples"] > 0 and body["staleness_ms"]["p95"] is not None
    assert http.get(f"{api_url}/admin/readmodel", headers=ANONYMOUS, timeout=30).status_code == 401


@pytest.mark.parametrize("point", ["before-document", "after-document"])
def test_a_relay_killed_between_commit_and_document_loses_nothing(point, read_model_on, state, http, api_url,
                                                                 new_user, controller, admin_headers):
    user = new_user(name="Grace")
    uid = user["id"]
    wait_for(lambda: document(state, uid), timeout=60, what="the first document")
    state.set(readmodel.PAUSE_AT, point, ex=300)
    assert http.patch(f"{api_url}/users/{uid}", json={"name": "Grace H"}, timeout=30).status_code == 200
    # The write committed (its outbox row with it); the relay holds at the point.
    wait_for(lambda: state.hget(readmodel.RELAY, "state") == f"paused at {point}".encode(), timeout=60,
             what=f"the relay paused at {point}")
    relay = controller.process("relay")
    os.kill(relay["pid"], signal.SIGKILL)
    state.delete(readmodel.PAUSE_AT)
    wait_for(lambda: controller.process("relay")["pid"] not in (None, relay["pid"]), timeout=60,
             what="the relay restarted")
    wait_for(lambda: (d := document(state, uid)) and d["user"]["name"] == "Grace H", timeout=60,
             what="the document showing the write")
    wait_for(lambda: drained(http, api_url, admin_headers), timeout=60, what="the outbox drained")


def test_rebuild_recreates_deleted_documents(read_model_on, state, new_user, stack_config):
    users = [new_user(name=f"R{i}") for i in range(3)]
    for u in users:
        wait_for(lambda: document(state, u["id"]), timeout=60, what="the document")
        state.delete(readmodel.key(int(u["id"])))
    env = {**os.environ, "WORKBENCH_DATA_DIR": str(stack_config.data_dir),
           "WORKBENCH_PORT_BASE": str(stack_config.port_base)}
    out = subprocess.run([sys.executable, str(ROOT / "manage.py"), "rebuild_read_model", "--batch", "100"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rebuilt" in out.stdout and "shard 1:" in out.stdout
    for u in users:
        assert document(state, u["id"])["user"]["name"] == u["name"]


def test_deleting_a_user_removes_the_document(read_model_on, state, http, api_url, new_user):
    user = new_user()
    wait_for(lambda: document(state, user["id"]), timeout=60, what="the document")
    assert http.delete(f"{api_url}/users/{user['id']}", timeout=30).status_code == 204
    wait_for(lambda: document(state, user["id"]) is None, timeout=60, what="the document removed")
    assert not state.sismember(readmodel.DOCS, int(user["id"]))
    assert_problem(profile(http, api_url, user["id"]), 404, "user_id")
    assert document(state, user["id"]) is None  # the 404 did not bring it back
