"""The per-process L1 (api/caching/local.py) on the real stack: hit-l1 only when `cache.l1` is on,
invalidation across app servers by pub/sub (not by the TTL), the TTL, the LRU bound, and the cache
Valkey SIGKILLed under load (no 5xx; the subscribers come back). Each app server runs 2 worker
processes, each with its own L1: reads go over a new connection each (plain `requests.get`), so
both workers of a server get some of them."""
import collections
import time

import pytest
import redis
import requests

from conftest import wait_for
from api.caching import metrics
from test_caching import TOMBSTONE_S, get, kill_the_cache_under_load, use

WARM_READS = 24  # reads after the first hit-l1: enough that both workers of a server have the entry


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


@pytest.fixture(scope="module")
def direct(stack):
    """The API of app-1 and app-2, addressed directly (not through Caddy)."""
    return tuple(url + "/api/v1" for url in stack["direct_urls"][:2])


@pytest.fixture
def l1_counts(stack_config):
    state = redis.Redis.from_url(stack_config.state_url)

    def totals():
        return metrics.L1.totals(state)
    return totals


def l1(topology_admin, **cache):
    return use(topology_admin, "cache-aside", cache={"l1": True, **cache})


def warm(url: str) -> list:
    """Read until the L1 answers, then WARM_READS more; returns the responses."""
    wait_for(lambda: get(url).headers["X-Cache"] == "hit-l1", timeout=30, what=f"hit-l1 on {url}")
    return [get(url) for _ in range(WARM_READS)]


def cache_ms(response) -> float:
    return float(response.headers["Server-Timing"].split("cache;dur=")[1].split(",")[0])


def counted(l1_counts, before: dict, name: str, url: str) -> dict:
    """Wait until the workers' counters (flushed after a request, at most every 0.5 s) show `name`
    above `before`; reads of `url` make them flush."""
    def check():
        get(url)
        totals = l1_counts()
        return totals.get(name, 0) > before.get(name, 0) and totals
    return wait_for(check, timeout=30, interval=0.3, what=f"the L1 counter {name}")


def test_l1_off_never_answers_hit_l1(topology_admin, direct, new_user):
    use(topology_admin, "cache-aside")  # cache.l1 defaults to off
    user = new_user()
    time.sleep(TOMBSTONE_S + 0.1)
    seen = {get(f"{direct[1]}/users/{user['id']}{path}").headers["X-Cache"]
            for path in ("", "/posts") for _ in range(20)}
    assert seen == {"miss", "hit"}, seen


def test_repeated_reads_become_hit_l1_with_no_round_trip(topology_admin, direct, new_user, l1_counts):
    l1(topology_admin, l1_ttl_ms=60_000)
    before = l1_counts()
    user = new_user(bio="l1")
    base = f"{direct[1]}/users/{user['id']}"
    assert requests.post(f"{base}/posts", json={"title": "p", "body": "b"}, timeout=10).status_code == 201
    time.sleep(TOMBSTONE_S + 0.1)
    for url in (base, f"{base}/posts", f"{base}/posts?limit=1"):
        hits = [r for r in warm(url) if r.headers["X-Cache"] == "hit-l1"]
        assert hits, url
        assert {r.headers["X-DB-Node"] for r in hits} == {"none"}
        assert {r.content.split(b'"meta"')[0] for r in hits} == {get(url).content.split(b'"meta"')[0]}
        # No Valkey call at all (a posts page takes its namespace version from the L1 too): the cache
        # part is the L1's lookup, microseconds (the least of many, so a thread switch does not count).
        assert min(cache_ms(r) for r in hits) < 0.5, [r.headers["Server-Timing"] for r in hits]
    counted(l1_counts, before, "hits", base)
    totals = counted(l1_counts, before, "fills", base)
    assert totals.get("misses", 0) > before.get("misses", 0)


def test_a_write_on_app_1_drops_the_l1_entries_on_app_2(topology_admin, direct, new_user, l1_counts):
    """l1_ttl_ms is a minute, so only the pub/sub message can explain the fresh reads."""
    l1(topology_admin, l1_ttl_ms=60_000)
    app_1, app_2 = direct
    user = new_user(bio="before")
    on_2 = f"{app_2}/users/{user['id']}"
    assert requests.post(f"{app_1}/users/{user['id']}/posts", json={"title": "first", "body": ""},
                         timeout=10).status_code == 201
    time.sleep(TOMBSTONE_S + 0.1)
    warm(on_2)
    warm(f"{on_2}/posts")
    before = l1_counts()

    patched = requests.patch(f"{app_1}/users/{user['id']}", json={"bio": "after"}, timeout=10)
    assert patched.status_code == 200 and patched.headers["X-App-Server"] == "app-1"
    reads = [get(on_2) for _ in range(WARM_READS)]
    assert [r.json()["data"]["bio"] for r in reads] == ["after"] * len(reads), \
        [(r.headers["X-Cache"], r.json()["data"]["bio"]) for r in reads]
    assert reads[0].headers["X-Cache"] != "hit-l1"
    assert reads[0].headers["X-App-Server"] == "app-2"

    # A new post moves the user's posts namespace on: the L1's copy of the version goes too.
    created = requests.post(f"{app_1}/users/{user['id']}/posts", json={"title": "second", "body": ""}, timeout=10)
    assert created.status_code == 201
    pages = [get(f"{on_2}/posts") for _ in range(WARM_READS)]
    assert all([p["title"] for p in r.json()["data"]["results"]] == ["second", "first"] for r in pages), \
        [(r.headers["X-Cache"], r.json()["data"]["results"]) for r in pages]
    assert all(r.json()["data"]["post_count"] == 2 for r in (get(on_2) for _ in range(6)))
    # Once the tombstone is gone, app-2's L1 fills again, with the new data.
    time.sleep(TOMBSTONE_S + 0.1)
    assert all(r.json()["data"]["bio"] == "after" for r in warm(on_2))
    counted(l1_counts, before, "invalidations", on_2)


def test_the_l1_ttl_expires_entries(topology_admin, direct, new_user, l1_counts):
    l1(topology_admin, l1_ttl_ms=300)
    user = new_user()
    url = f"{direct[1]}/users/{user['id']}"
    time.sleep(TOMBSTONE_S + 0.1)
    before = l1_counts()
    for _ in range(3):
        wait_for(lambda: get(url).headers["X-Cache"] == "hit-l1", timeout=30, what="hit-l1")
        for _ in range(WARM_READS // 2):
            get(url)
        time.sleep(0.6)  # every worker's copy is now past its 300 ms
        assert get(url).headers["X-Cache"] == "hit"  # from Valkey; put in the L1 again
    counted(l1_counts, before, "expirations", url)


def test_the_l1_keeps_at_most_l1_entries(topology_admin, direct, new_user, l1_counts):
    l1(topology_admin, l1_ttl_ms=60_000, l1_entries=3)
    users = [new_user() for _ in range(8)]
    time.sleep(TOMBSTONE_S + 0.1)
    before = l1_counts()
    urls = [f"{direct[1]}/users/{u['id']}" for u in users]
    for _ in range(3):
        for url in urls:
            get(url)
    totals = counted(l1_counts, before, "evictions", urls[0])
    # 8 users through an L1 of 3 per process: most reads make room by dropping the oldest.
    assert totals["evictions"] - before.get("evictions", 0) >= 8, (totals, before)
    # The last user read is still there, in whichever process read it.
    wait_for(lambda: get(urls[-1]).headers["X-Cache"] == "hit-l1", timeout=30, what="hit-l1 after evictions")


def test_the_cache_valkey_killed_fails_no_request_and_the_subscribers_come_back(
        topology_admin, api_url, direct, new_user, controller):
    l1(topology_admin, l1_ttl_ms=60_000)
    users = [new_user() for _ in range(3)]
    time.sleep(TOMBSTONE_S + 0.1)
    results, back_at = kill_the_cache_under_load(controller, api_url, users, hit="hit-l1")
    outcomes = [r if isinstance(r, str) else r.status_code for _, r in results]
    failures = [o for o in outcomes if o != 200]
    kinds = collections.Counter(r.headers.get("X-Cache") for _, r in results if not isinstance(r, str))
    print(f"\n{len(outcomes)} requests, {len(failures)} failed, X-Cache: {dict(kinds)}")
    assert failures == [], failures[:5]
    # An L1 never served a copy from before the outage: the write made while Valkey was down is seen.
    stale = [s for s, r in results if s > back_at and not isinstance(r, str)
             and r.url.endswith(f"/users/{users[0]['id']}") and r.json()["data"]["bio"] != "while down"]
    assert not stale, len(stale)

    # Every subscriber reconnected: warm both servers' L1s (each process then serves hit-l1 only while
    # subscribed), write on app-1, and no process of either server serves the old value.
    target = users[1]
    for app in direct:
        warm(f"{app}/users/{target['id']}")
    assert requests.patch(f"{direct[0]}/users/{target['id']}", json={"bio": "after restart"},
                          timeout=10).status_code == 200
    for app in direct:
        reads = [get(f"{app}/users/{target['id']}") for _ in range(WARM_READS)]
        assert all(r.json()["data"]["bio"] == "after restart" for r in reads), \
            [(r.headers["X-Cache"], r.json()["data"]["bio"]) for r in reads]


# --- in-process: the LRU and the tickets, without the stack ---------------------------------------
@pytest.fixture
def fresh_l1(monkeypatch):
    """This process's L1, on and 'subscribed' (no subscriber thread), with 3 entries at most."""
    import dataclasses
    import threading

    from api.caching import local
    from workbench import topology
    doc = topology.Document(dataclasses.replace(
        topology.Topology(), cache=topology.Cache(mode="cache-aside", l1=True, l1_ttl_ms=60_000, l1_entries=3)))
    monkeypatch.setattr(topology, "current", lambda: doc)
    monkeypatch.setattr(local, "_state", local._State())
    s = local._here()
    s.thread = threading.Thread(target=lambda: None)  # never started: the test plays the subscriber
    local._connected(s, True)
    yield local, s
    monkeypatch.setattr(local, "_state", local._State())


def test_the_lru_drops_the_least_recently_used_and_a_users_keys_together(fresh_l1):
    local, s = fresh_l1
    t = local.ticket()
    for key, user in (("a", 1), ("b", 1), ("c", 2)):
        assert local.put(key, user, key.encode(), t)
    assert local.get("a") == b"a"  # now the most recently used
    assert local.put("d", 3, b"d", t)  # full: "b" goes
    assert [local.get(k) for k in "abcd"] == [b"a", None, b"c", b"d"]
    assert local.stats()["size"] == 3 and local.stats()["capacity"] == 3
    assert local.drop_user(1) == 1 and local.get("a") is None and local.get("c") == b"c"


def test_a_put_whose_user_was_invalidated_since_its_ticket_is_dropped(fresh_l1):
    local, s = fresh_l1
    t = local.ticket()  # taken before the read...
    local.drop_user(7)  # ...a write's message arrives before the put
    assert not local.put("k7", 7, b"old", t)
    assert local.put("k8", 8, b"other user", t)  # other users are not held back
    assert local.put("k7", 7, b"new", local.ticket())
    # A lost subscription: nothing is served, nothing put, and the L1 starts empty again.
    t = local.ticket()
    local._connected(s, False)
    assert local.ticket() is None and local.get("k7") is None
    local._connected(s, True)
    assert not local.put("k7", 7, b"from before", t)  # its ticket spans the reconnection
    assert local.stats()["size"] == 0
