"""Write-behind (api/caching/behind.py) on the real stack: writes acknowledged once queued in the
state Valkey and flushed by the controller's `flusher`; bad input still refused at once; the
state Valkey down (synchronous fallback); a SIGKILLed flusher (nothing lost); and the loss window
of a SIGKILLed state Valkey with persistence `always` and `off` (manage.py write_behind_loss)."""
import json
import os
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
import requests

from conftest import ROOT, assert_problem, wait_for
from api.caching import behind, metrics
from workbench import topology


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


@pytest.fixture(scope="module")
def state(stack_config, stack):
    return redis.Redis.from_url(stack_config.state_url, socket_timeout=5)


@pytest.fixture
def write_behind(topology_admin, state):
    """The mode on (once every app worker has seen it), the flusher running at the end."""
    topology_admin.apply({"cache": {"mode": "write-behind"}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    yield
    state.delete(behind.PAUSED)


def pause(state):
    state.set(behind.PAUSED, "test", ex=300)
    wait_for(lambda: state.hget(behind.FLUSHER, "state") == b"paused", timeout=30, what="the flusher paused")


def resume(state):
    state.delete(behind.PAUSED)


def in_db(stack_config, sql, params):
    with psycopg.connect(stack_config.shard_url(1), connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def post_ids_in_db(stack_config, ids):
    return {r[0] for r in in_db(stack_config, "SELECT id FROM api_post WHERE id = ANY(%s)", ([int(i) for i in ids],))}


def drained(state):
    return state.xlen(behind.STREAM) == 0


def test_queued_writes_are_acknowledged_then_flushed(write_behind, state, api_url, new_user, stack_config):
    user = new_user(bio="before")
    url = f"{api_url}/users/{user['id']}"
    synchronous = requests.post(f"{url}/posts", json={"title": "first", "body": ""}, timeout=10)
    pause(state)
    depth = state.xlen(behind.STREAM)

    written = requests.patch(url, json={"bio": "queued"}, timeout=10)
    assert written.status_code == 200 and written.headers["X-Write-Behind"] == "queued"
    assert written.json()["data"]["bio"] == "queued" and set(written.json()["data"]) == set(user)
    # Read after write: fresh, from the cache, while the database still has the old row.
    read = requests.get(url, timeout=10)
    assert read.headers["X-Cache"] == "hit" and read.json()["data"]["bio"] == "queued"
    assert in_db(stack_config, "SELECT bio FROM api_user WHERE id = %s", (int(user["id"]),)) == [("before",)]

    created = requests.post(f"{url}/posts", json={"title": "queued post", "body": "b"}, timeout=10)
    assert created.status_code == 201 and created.headers["X-Write-Behind"] == "queued"
    post = created.json()["data"]
    assert set(post) == set(synchronous.json()["data"]) and post["created_at"] and int(post["id"]) > 0
    assert created.headers["Location"].endswith(f"/posts/{post['id']}")
    # An update of a post still in the queue answers with the queued post and this change.
    edited = requests.patch(f"{url}/posts/{post['id']}", json={"body": "edited"}, timeout=10)
    assert edited.status_code == 200 and edited.headers["X-Write-Behind"] == "queued"
    assert (edited.json()["data"]["title"], edited.json()["data"]["body"]) == ("queued post", "edited")
    assert edited.json()["data"]["created_at"] == post["created_at"]
    # Deleting it must wait for the flush: the database cannot say yet that it exists.
    assert_problem(requests.delete(f"{url}/posts/{post['id']}", timeout=10), 409, "post_id")
    assert not post_ids_in_db(stack_config, [post["id"]])
    assert state.xlen(behind.STREAM) == depth + 3
    status = behind.status(state)
    assert status["paused"] and status["depth"] >= 3 and status["lag_s"] >= 0

    resume(state)
    wait_for(lambda: drained(state), timeout=60, what="the queue drained")
    assert in_db(stack_config, "SELECT title, body, created_at = %s::timestamptz FROM api_post WHERE id = %s",
                 (post["created_at"], int(post["id"]))) == [("queued post", "edited", True)]
    assert in_db(stack_config, "SELECT bio, post_count FROM api_user WHERE id = %s",
                 (int(user["id"]),)) == [("queued", 2)]
    # The posts pages were invalidated again after the flush, so they show it now; so does the count.
    page = requests.get(f"{url}/posts", timeout=10).json()["data"]["results"]
    assert [p["title"] for p in page] == ["queued post", "first"]
    assert wait_for(lambda: requests.get(url, timeout=10).json()["data"]["post_count"] == 2, timeout=10,
                    what="the post count")
    deleted = requests.delete(f"{url}/posts/{post['id']}", timeout=10)
    assert deleted.status_code == 204 and deleted.headers["X-Write-Behind"] == "sync"
    # Each worker adds its counts to the state Valkey at most every half second, with its next
    # request: keep asking (each GET may land on the worker still holding a count).
    wait_for(lambda: requests.get(url, timeout=10) and (c := behind.status(state))["queued"] >= 3
             and c["flushed"] >= 3, timeout=20, what=f"the write-behind counters ({behind.status(state)})")


def test_a_flushed_write_moves_the_query_caches_generations(topology_admin, state, api_url, new_user):
    """The flusher writes rows outside the request path: it must invalidate the query cache too, or
    the page read after the flush would be rebuilt from rows cached before it."""
    topology_admin.apply({"cache": {"mode": "write-behind", "query_cache": True}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    user = new_user()
    url = f"{api_url}/users/{user['id']}/posts"
    # Every query of the page cached (the application cache's tombstone of the sign-up may make the
    # first reads miss there; the query cache's own answer is what counts).
    wait_for(lambda: requests.get(url, timeout=10).headers["X-Query-Cache"] == "hit", timeout=15,
             what="the page's queries cached")
    pause(state)
    created = requests.post(url, json={"title": "behind", "body": ""}, timeout=10)
    assert created.status_code == 201 and created.headers["X-Write-Behind"] == "queued"
    time.sleep(0.6)  # the app workers' counts of earlier writes reach the state Valkey with their next request
    for _ in range(4):
        requests.get(url, timeout=10)
    before = int(state.hget(metrics.QUERY_KEY, "invalidations") or 0)
    resume(state)
    wait_for(lambda: drained(state), timeout=60, what="the queue drained")
    # Only the flusher wrote since `before`: its own counts reach the state Valkey too.
    wait_for(lambda: int(state.hget(metrics.QUERY_KEY, "invalidations") or 0) > before, timeout=10,
             what="the flusher's query-cache invalidations counted")
    page = requests.get(url, timeout=10)
    assert [p["title"] for p in page.json()["data"]["results"]] == ["behind"], page.headers
    assert page.headers["X-Query-Cache"] != "hit"
    state.delete(behind.PAUSED)


def test_bad_input_is_refused_at_once_and_queues_nothing(write_behind, state, api_url, new_user):
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    post = requests.post(f"{url}/posts", json={"title": "t", "body": ""}, timeout=10).json()["data"]
    pause(state)
    depth = state.xlen(behind.STREAM)
    assert_problem(requests.patch(url, json={"bio": "x" * 2001, "nope": 1}, timeout=10), 400, "bio", "nope")
    assert_problem(requests.put(url, json={"name": "x"}, timeout=10), 400, "email", "bio")
    assert_problem(requests.post(f"{url}/posts", json={"title": ""}, timeout=10), 400, "title")
    assert_problem(requests.patch(f"{url}/posts/{post['id']}", json={"title": "x" * 201}, timeout=10), 400, "title")
    assert_problem(requests.patch(f"{api_url}/users/1", json={"bio": "x"}, timeout=10), 404, "user_id")
    assert_problem(requests.post(f"{api_url}/users/1/posts", json={"title": "x"}, timeout=10), 404, "user_id")
    assert_problem(requests.patch(f"{url}/posts/1", json={"title": "x"}, timeout=10), 404, "post_id")
    assert state.xlen(behind.STREAM) == depth
    # Never queued: an email change (meta must say the email is free), sign-up and deletes.
    other = new_user()
    assert_problem(requests.patch(url, json={"email": other["email"]}, timeout=10), 409, "email")
    changed = requests.patch(url, json={"email": f"new-{user['email']}"}, timeout=10)
    assert changed.status_code == 200 and changed.headers["X-Write-Behind"] == "sync"
    signed_up = requests.post(f"{api_url}/users", json={"username": f"x{other['username']}"[:30],
                                                        "email": f"x{other['email']}", "password": "correct-horse"},
                              timeout=10)
    assert signed_up.status_code == 201 and signed_up.headers["X-Write-Behind"] == "sync"
    assert state.xlen(behind.STREAM) == depth


def test_writes_of_a_deleted_user_are_rejected_and_recorded(write_behind, state, api_url, new_user):
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    before = behind.status(state)["rejected"]
    pause(state)
    assert requests.patch(url, json={"bio": "orphan"}, timeout=10).headers["X-Write-Behind"] == "queued"
    assert requests.post(f"{url}/posts", json={"title": "orphan"}, timeout=10).status_code == 201
    assert state.exists(behind.user_record(int(user["id"])))
    assert requests.delete(url, timeout=10).status_code == 204
    assert not state.exists(behind.user_record(int(user["id"])))  # what was queued for the user: gone at once
    resume(state)
    wait_for(lambda: drained(state), timeout=60, what="the queue drained")
    status = wait_for(lambda: (s := behind.status(state))["rejected"] >= before + 2 and s, timeout=10,
                      what="the rejections counted")
    mine = [r for r in status["recent_rejections"] if str(r["write"].get("user_id")) == user["id"]]
    assert {r["write"]["kind"] for r in mine} == {"user", "post_create"}, status["recent_rejections"]
    # Recorded without the values the deleted user wrote: which fields, not what they said.
    assert "orphan" not in json.dumps(mine) and {tuple(r["write"]["fields"]) for r in mine} == {("bio",), ("body", "title")}
    assert requests.get(url, timeout=10).status_code == 404  # not brought back by the cache either


def test_the_state_valkey_down_falls_back_to_synchronous_writes(write_behind, state, stack, api_url, new_user,
                                                               controller, stack_config):
    user = new_user()
    # Every app worker takes its id generator's lease (in the state Valkey) before it goes away.
    for base in stack["direct_urls"]:
        for _ in range(12):
            assert requests.post(f"{base}/api/v1/users/{user['id']}/posts", json={"title": "warm"},
                                 timeout=10).status_code == 201
    wait_for(lambda: drained(state), timeout=60, what="the queue drained")
    before = controller.process("valkey-state")
    os.kill(before["pid"], signal.SIGKILL)
    outcomes, created = [], []
    url = f"{api_url}/users/{user['id']}"

    def write_once():
        patched = requests.patch(url, json={"bio": f"b{len(outcomes)}"}, timeout=30)
        posted = requests.post(f"{url}/posts", json={"title": f"down {len(outcomes)}"}, timeout=30)
        outcomes.extend([(patched.status_code, patched.headers.get("X-Write-Behind")),
                         (posted.status_code, posted.headers.get("X-Write-Behind"))])
        if posted.status_code == 201:
            created.append(posted.json()["data"]["id"])
        return any(h == "sync-fallback" for _, h in outcomes[-2:])

    wait_for(write_once, timeout=30, interval=0.05, what="a sync-fallback write")
    assert all(code in (200, 201) for code, _ in outcomes), outcomes
    wait_for(lambda: (p := controller.process("valkey-state"))["healthy"] and p["pid"] != before["pid"],
             timeout=60, what="valkey-state restarted")
    wait_for(lambda: write_once() is False and outcomes[-1][1] == "queued", timeout=30, what="queued writes again")
    wait_for(lambda: drained(state), timeout=60, what="the queue drained")
    assert post_ids_in_db(stack_config, created) == {int(i) for i in created}
    last_bio = f"b{len(outcomes) - 2}"
    assert in_db(stack_config, "SELECT bio FROM api_user WHERE id = %s", (int(user["id"]),)) == [(last_bio,)]
    assert wait_for(lambda: behind.status(state)["fallback"] >= 1, timeout=10, what="the fallback counted")


def test_a_killed_flusher_loses_nothing(write_behind, state, api_url, new_user, controller, stack_config):
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    pause(state)
    ids = []
    with requests.Session() as http:
        for i in range(200):
            response = http.post(f"{url}/posts", json={"title": f"p{i}"}, timeout=10)
            assert response.status_code == 201 and response.headers["X-Write-Behind"] == "queued"
            ids.append(response.json()["data"]["id"])
    depth = state.xlen(behind.STREAM)
    flusher = controller.process("flusher")
    resume(state)
    wait_for(lambda: state.xlen(behind.STREAM) < depth, timeout=60, interval=0.01, what="the flush begun")
    os.kill(flusher["pid"], signal.SIGKILL)
    left = state.xlen(behind.STREAM)
    print(f"\nSIGKILLed the flusher with {left} of {depth} writes still queued")
    wait_for(lambda: controller.process("flusher")["pid"] not in (None, flusher["pid"]), timeout=60,
             what="the flusher restarted")
    wait_for(lambda: drained(state), timeout=120, what="the queue drained")
    assert post_ids_in_db(stack_config, ids) == {int(i) for i in ids}
    # Exactly once: a replayed entry (committed, not yet acknowledged) counts no post twice.
    assert in_db(stack_config, "SELECT post_count FROM api_user WHERE id = %s", (int(user["id"]),)) == [(200,)]


def run_loss(stack_config, fsync: str, writes: int) -> dict:
    env = {**os.environ, "WORKBENCH_DATA_DIR": str(stack_config.data_dir),
           "WORKBENCH_PORT_BASE": str(stack_config.port_base),
           "WORKBENCH_SERVICE_PORT_BASE": str(stack_config.service_port_base)}
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "write_behind_loss", "--writes", str(writes),
                           "--fsync", fsync, "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fsync", ["always", "off"])
def test_the_loss_window_of_a_killed_state_valkey(topology_admin, stack_config, api_url, fsync):
    result = run_loss(stack_config, fsync, 40)
    print(f"\nstate_fsync={fsync}: {result['acknowledged']} acknowledged, {result['in_db']} in PostgreSQL, "
          f"{result['lost']} lost")
    assert result["failed"] == 0 and result["acknowledged"] == 40
    found = post_ids_in_db(stack_config, result["acknowledged_ids"])
    assert result["lost"] == result["acknowledged"] - len(found)  # the command's count, checked here
    if fsync == "always":
        assert result["lost"] == 0
    # Whatever the state Valkey lost (the topology written since persistence went off too), the
    # stack answers: no 5xx afterwards.
    user = requests.get(f"{api_url}/users/{result['user_id']}", timeout=10)
    assert user.status_code == 200
    assert requests.post(f"{api_url}/users/{result['user_id']}/posts", json={"title": "after"},
                         timeout=10).status_code == 201
    assert topology_admin.settled()["topology"]["cache"]["state_fsync"] == \
        topology_admin.data()["topology"]["cache"]["state_fsync"]
