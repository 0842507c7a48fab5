"""App servers on the real stack (workbench/stack/apps.py): a client's session survives the crash of
the server that served it (nothing lives in an app server: the JWT and the cursor carry it all),
and scaling 4 -> 1 -> 4 under load, with draining, fails no request."""
import itertools
import os
import signal
import time

import psutil
import pytest
import requests

from conftest import ANONYMOUS, Background, wait_for

PASSWORD = "correct-horse"


@pytest.fixture(scope="module", autouse=True)
def defaults_after(topology_admin):
    """Other modules expect the defaults (2 app servers): put them back, as a new version."""
    yield
    topology_admin.apply({}, replace=True)


def served_by(response) -> str:
    return response.headers["X-App-Server"]


def test_a_session_survives_the_crash_of_its_app_server(new_user, api_url, controller):
    user = new_user(password=PASSWORD)
    tokens = requests.post(f"{api_url}/auth/token", json={"username": user["username"], "password": PASSWORD},
                           headers=ANONYMOUS, timeout=30)
    assert tokens.status_code == 200, tokens.text
    auth = {"Authorization": f"Bearer {tokens.json()['data']['access']}"}
    first = requests.get(f"{api_url}/users?limit=20", headers=auth, timeout=30)
    assert first.status_code == 200, first.text
    victim = served_by(first)
    pid = controller.process(victim)["pid"]
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    os.kill(pid, signal.SIGKILL)
    # Its workers hold the listening socket until the supervisor kills what is left of the group.
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in family),
             timeout=30, what=f"{victim}'s processes to be gone")

    # Every request from here on started after the kill, so none may fail: Caddy sends it to
    # another server (a dial to the dead one fails before anything is sent, and is tried elsewhere).
    ids = [u["id"] for u in first.json()["data"]["results"]]
    page, servers = first.json()["data"], []
    for _ in range(3):
        response = requests.get(page["next"], headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        servers.append(served_by(response))
        page = response.json()["data"]
        ids += [u["id"] for u in page["results"]]
    written = requests.post(f"{api_url}/users/{user['id']}/posts", json={"title": "after the crash", "body": "x"},
                            headers=auth, timeout=30)
    assert written.status_code == 201, written.text
    servers.append(served_by(written))
    assert servers[0] != victim, servers  # the supervisor restarts it after a backoff, so it may come back later
    assert len(ids) == len(set(ids)) == 80 and [int(i) for i in ids] == sorted(int(i) for i in ids)
    wait_for(lambda: controller.process(victim)["healthy"], timeout=120, what=f"{victim} restarted")


def test_scaling_4_to_1_to_4_under_load_fails_no_request(topology_admin, controller, api_url, new_user,
                                                         stack_config):
    user = new_user()
    counter = itertools.count()

    def send(http):
        n = next(counter)
        if n % 5 == 4:  # a write now and then (as the operator): a drained server must finish it too
            return http.post(f"{api_url}/users/{user['id']}/posts", json={"title": f"load {n}", "body": "x"},
                             timeout=30)
        return http.get(f"{api_url}/users?limit=10" if n % 2 else f"{api_url}/users/{user['id']}", timeout=30)

    def servers_since(results, since):
        return {r.headers.get("X-App-Server") for started, r in list(results)
                if started >= since and not isinstance(r, str)} - {None}  # None: Caddy's own error

    everyone = {f"app-{k}" for k in range(1, 5)}
    topology_admin.apply({"app_servers": 4})
    with Background(send, threads=4, limit=10_000) as load:
        wait_for(lambda: servers_since(load.results, 0) == everyone, timeout=60, what="all four serving")

        scale_in = time.monotonic()
        topology_admin.apply({"app_servers": 1})  # returns once app-2..4 are drained and stopped
        settled = time.monotonic()
        # A figure, not a check: when the last request a draining server took was sent, after the
        # scale-in began (the markers go down at once; Caddy's health check runs each second).
        last = max((started for started, r in list(load.results) if started >= scale_in and not isinstance(r, str)
                    and r.headers.get("X-App-Server") != "app-1"), default=scale_in)
        print(f"\nscale-in 4 -> 1: the drained servers took requests for {last - scale_in:.2f} s after it began; "
              f"the change took {settled - scale_in:.2f} s")
        wait_for(lambda: sum(started >= settled for started, _ in list(load.results)) >= 40, timeout=60,
                 what="40 requests after the scale-in")
        assert servers_since(load.results, settled) == {"app-1"}
        assert controller.status()["direct_urls"] == [stack_config.direct_url(1)]

        topology_admin.apply({"app_servers": 4})  # returns once app-2..4 answer their /healthz
        settled = time.monotonic()
        # Caddy's health check lets each in within a second: wait for it, never time it.
        wait_for(lambda: servers_since(load.results, settled) == everyone, timeout=60,
                 what="all four serving again")
    results = list(load.results)
    failed = [(started, r if isinstance(r, str) else f"{r.status_code} {r.text[:200]}") for started, r in results
              if isinstance(r, str) or r.status_code >= 400]
    print(f"\nscaling 4 -> 1 -> 4: {len(results)} requests, {len(failed)} failed")
    assert not failed, failed[:10]
    events = [e for e in controller.events() if e["event"] in ("draining", "drained")]
    assert {e["name"] for e in events if e["event"] == "drained"} >= {"app-2", "app-3", "app-4"}
