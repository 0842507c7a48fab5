"""The application cache (api/caching) on the real stack: each mode's reads and writes, invalidation
across the two app-server processes, the fast path's bytes, fills from a lagging replica, and the
cache Valkey SIGKILLed under load."""
import os
import re
import signal
import time
import uuid

import pytest
import redis
import requests

from conftest import Background, wait_for
from api.caching import metrics
from workbench import topology

TOMBSTONE_S = 1.0  # max_lag_ms 0 (set below) + writes.TOMBSTONE_MARGIN_MS: fills wait this after a write


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


def use(topology_admin, mode, **extra):
    """This cache mode (replicas off, max_lag_ms 0 so a write's tombstone lasts only its margin),
    once every app worker has picked it up (each checks the version at most once a second)."""
    body = {"max_lag_ms": 0, **extra}
    body["cache"] = {"mode": mode, **extra.get("cache", {})}
    data = topology_admin.apply(body, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    return data


def get(url, **headers):
    response = requests.get(url, headers=headers, timeout=10)
    assert response.status_code in (200, 304), response.text
    return response


def cached_get(url, **headers):
    """GET once the entry is in the cache: a read after a write's tombstone fills it."""
    wait_for(lambda: get(url).headers["X-Cache"] == "hit", timeout=10, what=f"a hit on {url}")
    return get(url, **headers)


def without_timestamp(body: bytes) -> bytes:
    return re.sub(rb'"timestamp":"[^"]*"', b'"timestamp":"-"', body)


def test_mode_off_answers_off_and_spends_nothing_on_the_cache(topology_admin, api_url, new_user):
    use(topology_admin, "off")
    user = new_user()
    for response in (get(f"{api_url}/users/{user['id']}"), get(f"{api_url}/users/{user['id']}/posts"),
                     requests.get(f"{api_url}/users/0", timeout=10)):
        assert response.headers["X-Cache"] == "off"
        assert "cache;dur=" not in response.headers["Server-Timing"]  # reads never look
    # Writes still invalidate, so nothing filled before caching was switched off comes back stale.
    written = requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "x"}, timeout=10)
    assert written.headers["X-Cache"] == "off" and "cache;dur=" in written.headers["Server-Timing"]
    # Not an API view at all: still the header.
    assert requests.get(api_url.removesuffix("/api/v1") + "/healthz", timeout=10).headers["X-Cache"] == "off"


def test_cache_aside_user(topology_admin, api_url, new_user, stack_config):
    use(topology_admin, "cache-aside")
    state = redis.Redis.from_url(stack_config.state_url)
    before = metrics.COUNTERS.totals(state)
    user = new_user(bio="first")
    url = f"{api_url}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)  # the sign-up's tombstone
    first, second = get(url), get(url)
    assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("miss", "hit")
    assert second.json()["data"] == first.json()["data"] and second.json()["data"]["bio"] == "first"
    assert second.headers["ETag"] == first.headers["ETag"]
    assert re.search(r"cache;dur=\d+\.\d+", second.headers["Server-Timing"]), second.headers["Server-Timing"]
    assert second.headers["X-DB-Node"] == "none"  # a hit reads no database

    written = requests.patch(url, json={"bio": "second"}, timeout=10)
    assert written.status_code == 200 and written.headers["X-Cache"] == "bypass"
    after = get(url)
    assert after.headers["X-Cache"] == "miss" and after.json()["data"]["bio"] == "second"
    assert cached_get(url).json()["data"]["bio"] == "second"
    # Not cached: lists of users, and 404s.
    assert get(f"{api_url}/users?limit=2").headers["X-Cache"] == "bypass"
    missing = requests.get(f"{api_url}/users/1", timeout=10)
    assert missing.status_code == 404 and missing.headers["X-Cache"] == "miss"
    assert requests.get(f"{api_url}/users/1", timeout=10).headers["X-Cache"] == "miss"
    # The counters reach the state Valkey (each worker flushes at most every half second).
    time.sleep(0.6)
    for _ in range(6):
        get(url)
    totals = wait_for(lambda: (t := metrics.COUNTERS.totals(state)) and t.get("hits", 0) > before.get("hits", 0)
                      and t, timeout=10, what="the cache counters")
    for name in ("misses", "fills", "invalidations"):
        assert totals.get(name, 0) > before.get(name, 0), (name, totals, before)


def test_the_ttl_expires_an_entry(topology_admin, api_url, new_user):
    use(topology_admin, "cache-aside", cache={"user_ttl_s": 1})
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)
    assert get(url).headers["X-Cache"] == "miss"
    assert get(url).headers["X-Cache"] == "hit"
    time.sleep(1.2)
    assert get(url).headers["X-Cache"] == "miss"


def test_every_posts_page_and_time_range_is_cached_and_invalidated_together(topology_admin, api_url, new_user):
    use(topology_admin, "cache-aside")
    user = new_user()
    base = f"{api_url}/users/{user['id']}"
    for i in range(5):
        assert requests.post(f"{base}/posts", json={"title": f"p{i}", "body": "b"}, timeout=10).status_code == 201
    time.sleep(TOMBSTONE_S + 0.1)
    first = get(f"{base}/posts?limit=2")
    urls = [f"{base}/posts?limit=2", first.json()["data"]["next"],
            f"{base}/posts?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z", f"{base}/posts", base]
    for url in urls:
        get(url)
        assert get(url).headers["X-Cache"] == "hit", url
    # One post created through the API: every page, the time range and the user's post_count move on.
    assert requests.post(f"{base}/posts", json={"title": "new", "body": "b"}, timeout=10).status_code == 201
    for url in urls:
        response = get(url)
        assert response.headers["X-Cache"] == "miss", url
    assert get(base).json()["data"]["post_count"] == 6
    assert get(f"{base}/posts?limit=2").json()["data"]["results"][0]["title"] == "new"
    assert len(get(f"{base}/posts").json()["data"]["results"]) == 6
    # An edit moves the pages on but leaves the user's entry (its representation did not change).
    cached_get(base)
    cached_get(f"{base}/posts?limit=2")
    post = get(f"{base}/posts?limit=1").json()["data"]["results"][0]
    assert requests.patch(f"{base}/posts/{post['id']}", json={"title": "edited"}, timeout=10).status_code == 200
    page = get(f"{base}/posts?limit=2")
    assert page.headers["X-Cache"] == "miss" and page.json()["data"]["results"][0]["title"] == "edited"
    assert get(base).headers["X-Cache"] == "hit"
    # A delete: the count and the pages.
    assert requests.delete(f"{base}/posts/{post['id']}", timeout=10).status_code == 204
    assert get(base).json()["data"]["post_count"] == 5
    assert [p["id"] for p in get(f"{base}/posts").json()["data"]["results"]].count(post["id"]) == 0


def test_a_deleted_user_is_not_served_from_the_cache(topology_admin, api_url, new_user):
    use(topology_admin, "cache-aside")
    user = new_user()
    base = f"{api_url}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)
    cached_get(base)
    cached_get(f"{base}/posts")
    assert requests.delete(base, timeout=10).status_code == 204
    assert requests.get(base, timeout=10).status_code == 404
    assert requests.get(f"{base}/posts", timeout=10).status_code == 404


def test_write_through_puts_the_new_representation(topology_admin, api_url, new_user):
    use(topology_admin, "write-through")
    user = new_user(bio="first")
    url = f"{api_url}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)
    cached_get(url)
    written = requests.patch(url, json={"bio": "through"}, timeout=10)
    assert written.status_code == 200
    after = get(url)
    # Straight from the cache, already new; the same bytes and tag as the write's own answer.
    assert after.headers["X-Cache"] == "hit" and after.json()["data"] == written.json()["data"]
    # A second write inside the first one's tombstone may reach the cache out of commit order, so
    # it deletes the entry instead; the next read is a miss that reads the new value.
    assert requests.patch(url, json={"bio": "again"}, timeout=10).status_code == 200
    again = get(url)
    assert again.headers["X-Cache"] == "miss" and again.json()["data"]["bio"] == "again"
    # Posts pages are invalidated, not written through.
    time.sleep(TOMBSTONE_S + 0.1)
    cached_get(f"{url}/posts")
    assert requests.post(f"{url}/posts", json={"title": "t", "body": "b"}, timeout=10).status_code == 201
    page = get(f"{url}/posts")
    assert page.headers["X-Cache"] == "miss" and len(page.json()["data"]["results"]) == 1


@pytest.mark.parametrize("mode", ["cache-aside", "write-through"])
def test_a_write_on_one_app_server_invalidates_the_other(topology_admin, stack, new_user, mode):
    use(topology_admin, mode)
    app_1, app_2 = (url + "/api/v1" for url in stack["direct_urls"])
    user = new_user(bio="before")
    time.sleep(TOMBSTONE_S + 0.1)
    on_2 = f"{app_2}/users/{user['id']}"
    assert cached_get(on_2).headers["X-App-Server"] == "app-2"
    cached_get(f"{on_2}/posts")
    patched = requests.patch(f"{app_1}/users/{user['id']}", json={"bio": "after"}, timeout=10)
    assert patched.headers["X-App-Server"] == "app-1"
    seen = get(on_2)
    assert seen.headers["X-App-Server"] == "app-2" and seen.json()["data"]["bio"] == "after"
    assert seen.headers["X-Cache"] == ("hit" if mode == "write-through" else "miss")
    created = requests.post(f"{app_1}/users/{user['id']}/posts", json={"title": "from app-1", "body": ""}, timeout=10)
    assert created.status_code == 201
    page = get(f"{on_2}/posts")
    assert page.headers["X-Cache"] == "miss"
    assert [p["title"] for p in page.json()["data"]["results"]] == ["from app-1"]
    assert get(on_2).json()["data"]["post_count"] == 1


@pytest.mark.parametrize("path", ["/users/{user}", "/users/{user}/posts?limit=2",
                                  "/users/{user}/posts?limit=2&since=2000-01-01T00:00:00Z"])
def test_the_fast_path_sends_the_slow_paths_bytes(topology_admin, api_url, new_user, path):
    use(topology_admin, "off")
    user = new_user(bio="caf\u00e9 \u2028 \U0001f600 \"quoted\" <b>")
    for i in range(3):
        assert requests.post(f"{api_url}/users/{user['id']}/posts", json={"title": f"t{i} \u00e9", "body": "\n"},
                             timeout=10).status_code == 201
    url = api_url + path.format(user=user["id"])
    same_id = {"X-Request-Id": f"fast-path-{uuid.uuid4().hex[:8]}"}
    uncached = get(url, **same_id)  # mode off: no cache at all
    use(topology_admin, "cache-aside")
    miss = get(url, **same_id)
    hit = cached_get(url, **same_id)
    assert (uncached.headers["X-Cache"], miss.headers["X-Cache"], hit.headers["X-Cache"]) == ("off", "miss", "hit")
    # Byte for byte, apart from meta.timestamp (the request id was sent, so it is the same too).
    assert without_timestamp(hit.content) == without_timestamp(miss.content) == without_timestamp(uncached.content)
    assert hit.json()["meta"]["request_id"] == same_id["X-Request-Id"]
    assert hit.headers["ETag"] == miss.headers["ETag"] == uncached.headers["ETag"]
    assert hit.headers["Content-Type"] == uncached.headers["Content-Type"]
    # Conditional GETs on a hit.
    not_modified = get(url, **{"If-None-Match": hit.headers["ETag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""
    assert not_modified.headers["X-Cache"] == "hit" and not_modified.headers["ETag"] == hit.headers["ETag"]
    changed = get(url, **{"If-None-Match": '"other"'})
    assert changed.status_code == 200 and changed.headers["X-Cache"] == "hit"
    # The per-process L1 (api/caching/local.py) sends the same bytes again.
    use(topology_admin, "cache-aside", cache={"l1": True})
    l1_hit = wait_for(lambda: (r := get(url, **same_id)).headers["X-Cache"] == "hit-l1" and r, timeout=30,
                      what=f"hit-l1 on {url}")
    assert without_timestamp(l1_hit.content) == without_timestamp(uncached.content)
    assert l1_hit.headers["ETag"] == uncached.headers["ETag"]
    assert l1_hit.headers["Content-Type"] == uncached.headers["Content-Type"]
    not_modified = get(url, **{"If-None-Match": l1_hit.headers["ETag"]})
    assert not_modified.status_code == 304 and not_modified.content == b""


def kill_the_cache_under_load(controller, api_url: str, users: list, hit: str = "hit"):
    """Reads of the users' entries and posts pages from 4 threads; once one answers X-Cache `hit`,
    the cache Valkey is SIGKILLed; once one says `down`, users[0] is written (bio "while down"); the
    controller restarts the cache, and the load goes on until a read after that says `hit` again.
    Returns the load's results (conftest.Background) and the monotonic time the cache was back."""
    urls = [f"{api_url}/users/{u['id']}" for u in users] + [f"{api_url}/users/{u['id']}/posts" for u in users]
    counter = iter(range(10**9))
    load = Background(lambda http: http.get(urls[next(counter) % len(urls)], timeout=30))
    with load:
        wait_for(lambda: any(not isinstance(r, str) and r.headers.get("X-Cache") == hit for _, r in load.results),
                 timeout=30, what=f"X-Cache: {hit}")
        before = controller.process("valkey-cache")
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: any(s > killed_at and not isinstance(r, str) and r.headers.get("X-Cache") == "down"
                             for s, r in load.results), timeout=30, what="X-Cache: down")
        # A write while the cache is down still succeeds.
        written = requests.patch(f"{api_url}/users/{users[0]['id']}", json={"bio": "while down"}, timeout=10)
        assert written.status_code == 200, written.text
        wait_for(lambda: (p := controller.process("valkey-cache"))["healthy"] and p["pid"] != before["pid"],
                 timeout=60, what="valkey-cache restarted")
        back_at = time.monotonic()
        wait_for(lambda: any(s > back_at + 0.5 and not isinstance(r, str) and r.headers.get("X-Cache") == hit
                             for s, r in load.results), timeout=60, what=f"X-Cache: {hit} again")
    return load.results, back_at


def test_the_cache_killed_under_load_fails_no_request(topology_admin, api_url, new_user, controller):
    use(topology_admin, "cache-aside")
    users = [new_user() for _ in range(3)]
    results, _ = kill_the_cache_under_load(controller, api_url, users)
    outcomes = [r if isinstance(r, str) else r.status_code for _, r in results]
    failures = [o for o in outcomes if o != 200]
    down = [r for _, r in results if not isinstance(r, str) and r.headers.get("X-Cache") == "down"]
    slowest_down = max(float(r.headers["Server-Timing"].split("app;dur=")[1].split(",")[0]) for r in down)
    print(f"\n{len(outcomes)} requests, {len(failures)} failed, {len(down)} X-Cache: down "
          f"(slowest {slowest_down:.1f} ms in the app)")
    assert failures == [], failures[:5]
    assert get(f"{api_url}/users/{users[0]['id']}").json()["data"]["bio"] == "while down"


# --- last: replicas make the slowest fixture ---------------------------------------------------------
def test_a_lagging_replica_does_not_refill_stale_data(topology_admin, api_url, new_user, stack_config):
    """The only replica replays 3 s late, so every read goes to it. After a write, misses get the
    old row (the replica's own staleness) but must not put it in the cache: once the replica has
    caught up, no read is stale, hit or miss. Without the tombstone the first miss would fill the
    old row and it would be served for the whole TTL (checked: this test then fails)."""
    topology_admin.apply({"replicas": 1, "max_lag_ms": 10_000, "read_policy": "round_robin",
                          "emulation": {"stale_replica": 1, "apply_delay_ms": 3000},
                          "cache": {"mode": "cache-aside", "user_ttl_s": 600}}, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    user = new_user(bio="old")
    url = f"{api_url}/users/{user['id']}"
    wait_for(lambda: all(requests.get(url, timeout=10).status_code == 200 for _ in range(6)), timeout=30,
             what="the new user on every replica")
    cached_get(url)
    assert requests.patch(url, json={"bio": "new"}, timeout=10).status_code == 200
    written_at = time.monotonic()
    reads = []
    while time.monotonic() - written_at < 6:
        r = get(url)
        reads.append((time.monotonic() - written_at, r.headers["X-Cache"], r.headers["X-DB-Node"],
                      r.json()["data"]["bio"]))
        time.sleep(0.05)
    stale = [r for r in reads if r[3] == "old"]
    assert stale and {node for _, _, node, _ in stale} == {"replica-1"}, reads  # the replica was stale...
    assert not [r for r in reads if r[1] == "hit" and r[3] == "old"], reads  # ...and the cache never was
    assert all(r[3] == "new" for r in reads if r[0] > 4), reads  # caught up: nothing stale any more
    # After the tombstone (max_lag_ms + margin) fills resume, with the new data.
    wait_for(lambda: get(url).headers["X-Cache"] == "hit", timeout=30, what="fills to resume")
    assert get(url).json()["data"]["bio"] == "new"
