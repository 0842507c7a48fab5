"""The database query cache (api/caching/querycache.py) on the real stack: hits that read no
database, invalidation by writes (per user, across app servers), the toggle, a lagging replica that
must not refill stale rows, the cache Valkey SIGKILLed under load, and two shards with a user moved
between them and back. The application cache is off throughout unless a test says otherwise, so
every read reaches the selectors."""
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import requests

from conftest import Background, wait_for
from api.caching import metrics, querycache
from tests.settings import ROOT
from workbench import topology


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


def use(topology_admin, on=True, mode="off", **extra):
    """The query cache on (or off), the application cache in `mode`, no replicas, max_lag_ms 0; once
    every app worker has the new version (each checks at most once a second)."""
    body = {"max_lag_ms": 0, **extra}
    body["cache"] = {"mode": mode, "query_cache": on, **extra.get("cache", {})}
    data = topology_admin.apply(body, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)
    return data


def get(url, status=200):
    response = requests.get(url, timeout=30)
    assert response.status_code == status, response.text
    return response


def seen(response) -> tuple[str, str]:
    return response.headers["X-Query-Cache"], response.headers["X-DB-Node"]


def post(url, title):
    response = requests.post(f"{url}/posts", json={"title": title, "body": "b"}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def patch(url, **body):
    response = requests.patch(url, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_off_says_off_and_reads_the_database(topology_admin, api_url, new_user):
    use(topology_admin, on=False)
    user = new_user()
    for _ in range(2):
        response = get(f"{api_url}/users/{user['id']}")
        assert seen(response) == ("off", "primary")
        assert "qcache;dur=" not in response.headers["Server-Timing"]
    assert get(f"{api_url}/users?limit=2").headers["X-Query-Cache"] == "off"
    # Independent of the application cache's mode: that one on, this one off.
    use(topology_admin, on=False, mode="cache-aside")
    assert get(f"{api_url}/users/{user['id']}").headers["X-Query-Cache"] == "off"


def test_a_second_identical_read_is_a_hit_that_reads_no_database(topology_admin, api_url, new_user, stack_config):
    use(topology_admin)
    state = redis.Redis.from_url(stack_config.state_url)
    before = metrics.QUERY.totals(state)
    user = new_user(bio="first")
    base = f"{api_url}/users/{user['id']}"
    made = post(base, "one")
    for url in (base, f"{base}/posts?limit=5", f"{base}/posts/{made['id']}",
                f"{base}/posts?since=2000-01-01T00:00:00Z&until=2999-01-01T00:00:00Z"):
        first, second = get(url), get(url)
        assert seen(first) == ("miss", "primary"), url
        assert seen(second) == ("hit", "none"), url  # answered without a database query
        assert second.json()["data"] == first.json()["data"], url
        assert second.headers["ETag"] == first.headers["ETag"], url
        assert "qcache;dur=" in second.headers["Server-Timing"], second.headers["Server-Timing"]
        assert second.headers["X-Cache"] == "off"
    assert get(base).json()["data"]["bio"] == "first"
    # Not cacheable here: writes and the cross-shard user list.
    assert patch(base, name="n").headers["X-Query-Cache"] == "bypass"
    assert get(f"{api_url}/users?limit=2").headers["X-Query-Cache"] == "bypass"
    # A 404 is cached too (the user's existence), and a sign-up of that id would invalidate it.
    assert seen(get(f"{api_url}/users/1", 404))[0] in ("miss", "hit")
    assert seen(get(f"{api_url}/users/1", 404)) == ("hit", "none")
    time.sleep(0.6)
    get(base)  # each worker flushes its counters at most every half second, after a request
    totals = wait_for(lambda: (t := metrics.QUERY.totals(state)) and t.get("hits", 0) > before.get("hits", 0) and t,
                      timeout=30, what="the query cache's counters")
    for name in ("misses", "fills", "invalidations"):
        assert totals.get(name, 0) > before.get(name, 0), (name, totals, before)


def test_writes_invalidate_only_what_they_touched(topology_admin, api_url, new_user):
    use(topology_admin)
    user, other = new_user(bio="before"), new_user(bio="other")
    base, other_url = f"{api_url}/users/{user['id']}", f"{api_url}/users/{other['id']}"
    first = post(base, "first")
    pages = [f"{base}/posts", f"{base}/posts?limit=1", f"{base}/posts/{first['id']}"]
    for url in (base, other_url, *pages):
        get(url)
        assert seen(get(url))[0] == "hit", url

    # A profile update: that user's row, read fresh at once (no replicas: the primary fills at once).
    patch(base, bio="after")
    after = get(base)
    assert seen(after) == ("miss", "primary") and after.json()["data"]["bio"] == "after"
    again = get(base)
    assert seen(again) == ("hit", "none") and again.json()["data"]["bio"] == "after"
    for url in (other_url, pages[2]):  # another user's row, and this user's posts, did not change
        assert seen(get(url)) == ("hit", "none"), url
    # A page reads the user's row too (does the user exist?): that query runs again, once; it is the
    # same query for every page, so the next page finds it filled (entries are queries, not pages).
    assert seen(get(pages[0])) == ("miss", "primary")
    assert seen(get(pages[1])) == ("hit", "none")

    # A new post: the user's post_count and every posts page.
    post(base, "second")
    assert get(base).json()["data"]["post_count"] == 2
    page = get(f"{base}/posts")
    assert page.headers["X-Query-Cache"] == "miss"
    assert [p["title"] for p in page.json()["data"]["results"]] == ["second", "first"]
    assert seen(get(other_url)) == ("hit", "none")

    # An edit: the posts, not the user's row.
    get(base)
    patched = requests.patch(f"{base}/posts/{first['id']}", json={"title": "edited"}, timeout=30)
    assert patched.status_code == 200
    assert get(f"{base}/posts/{first['id']}").json()["data"]["title"] == "edited"
    assert [p["title"] for p in get(f"{base}/posts").json()["data"]["results"]] == ["second", "edited"]
    assert seen(get(base)) == ("hit", "none")

    # A delete of the post, then of the user: nothing cached survives.
    assert requests.delete(f"{base}/posts/{first['id']}", timeout=30).status_code == 204
    get(f"{base}/posts/{first['id']}", 404)
    assert get(base).json()["data"]["post_count"] == 1
    get(f"{base}/posts")
    assert requests.delete(base, timeout=30).status_code == 204
    get(base, 404)
    get(f"{base}/posts", 404)


def test_a_write_on_one_app_server_invalidates_the_other(topology_admin, stack, new_user):
    use(topology_admin)
    app_1, app_2 = (url + "/api/v1" for url in stack["direct_urls"])
    user = new_user(bio="before")
    on_2 = f"{app_2}/users/{user['id']}"
    wait_for(lambda: seen(get(on_2)) == ("hit", "none"), timeout=30, what="a hit on app-2")
    wait_for(lambda: seen(get(f"{on_2}/posts")) == ("hit", "none"), timeout=30, what="a posts hit on app-2")
    assert patch(f"{app_1}/users/{user['id']}", bio="after").headers["X-App-Server"] == "app-1"
    fresh = get(on_2)
    assert fresh.headers["X-App-Server"] == "app-2"
    assert fresh.json()["data"]["bio"] == "after" and fresh.headers["X-Query-Cache"] == "miss"
    post(f"{app_1}/users/{user['id']}", "from app-1")
    assert [p["title"] for p in get(f"{on_2}/posts").json()["data"]["results"]] == ["from app-1"]


def test_the_ttl_expires_an_entry(topology_admin, api_url, new_user):
    use(topology_admin, cache={"query_ttl_s": 1})
    user = new_user()
    url = f"{api_url}/users/{user['id']}"
    get(url)
    assert seen(get(url))[0] == "hit"
    time.sleep(1.3)
    assert seen(get(url)) == ("miss", "primary")


def test_the_fill_rules_in_the_cache_itself(stack_config):
    """The scripts on the stack's cache Valkey, without a request: a read that began before a bump
    cannot fill after it; inside the tombstone only rows read on the primary fill; a generation lost
    (evicted) and recreated never matches an older entry; a purging bump (a deleted user) removes every
entry its index names; shards and owners never share a key."""
    cache = redis.Redis.from_url(stack_config.cache_url)
    lookup, fill, bump = (cache.register_script(s) for s in (querycache._LOOKUP, querycache._FILL, querycache._BUMP))
    shard, owner = 1, time.time_ns()
    entry = querycache.entry_key(shard, owner, "select 1")
    gens = [querycache.generation_key(shard, owner, t) for t in ("api_post", "api_user")]
    tomb = querycache.tombstone_key(shard, owner)
    index = querycache.index_key(shard, owner)

    def look():
        return lookup(keys=[entry, *gens], args=[60_000])

    def put(stamp, replica, payload=b"rows"):
        return fill(keys=[entry, *gens, tomb], args=[stamp, payload, 60_000, "1" if replica else "0", index])

    stamp = look()[0]
    assert put(stamp, replica=True) == 1 and look() == [stamp, b"rows"]
    # A read begins (it sees `began`), a write commits and bumps, the read fills: refused.
    began = look()[0]
    bump(keys=[*gens, tomb], args=[60_000, 3000, index, "0"])
    assert len(look()) == 1  # the old entry is unreachable at once
    assert put(began, replica=False) == 0
    # A read after the bump: from a replica inside the tombstone it may be stale, so no fill; from
    # the primary it fills.
    now = look()[0]
    assert now != began
    assert put(now, replica=True) == 2 and len(look()) == 1
    assert put(now, replica=False) == 1 and look() == [now, b"rows"]
    # After the tombstone, replica fills again.
    cache.delete(tomb)
    assert put(now, replica=True) == 1
    # An evicted generation comes back from the server's clock: never the old stamp.
    cache.delete(gens[1])
    assert look()[0] != now and len(look()) == 1
    # Keys name the shard and the owner.
    assert querycache.entry_key(2, owner, "select 1") != entry
    assert querycache.entry_key(1, owner + 1, "select 1") != entry
    assert querycache.generation_key(2, owner, "api_user") != gens[1]
    # Every filled key is indexed; a plain bump leaves the unreachable entry (its TTL ends it), a
    # purging bump deletes it and the index.
    assert cache.smembers(index) == {entry.encode()} and cache.pttl(index) > 0
    bump(keys=[*gens, tomb], args=[60_000, 3000, index, "0"])
    assert cache.exists(entry)
    bump(keys=[*gens, tomb], args=[60_000, 3000, index, "1"])
    assert not cache.exists(entry) and not cache.exists(index)
    cache.delete(entry, *gens, tomb)


def test_the_cache_killed_under_load_fails_no_request(topology_admin, api_url, new_user, controller):
    use(topology_admin)
    users = [new_user() for _ in range(3)]
    urls = [f"{api_url}/users/{u['id']}" for u in users] + [f"{api_url}/users/{u['id']}/posts" for u in users]
    counter = iter(range(10**9))
    load = Background(lambda http: http.get(urls[next(counter) % len(urls)], timeout=30))

    def answered(since, value):
        return any(s > since and not isinstance(r, str) and r.headers.get("X-Query-Cache") == value
                   for s, r in load.results)

    with load:
        wait_for(lambda: answered(0, "hit"), timeout=30, what="hits")
        before = controller.process("valkey-cache")
        os.kill(before["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: answered(killed_at, "down"), timeout=30, what="X-Query-Cache: down")
        written = requests.patch(f"{api_url}/users/{users[0]['id']}", json={"bio": "while down"}, timeout=30)
        assert written.status_code == 200, written.text
        wait_for(lambda: (p := controller.process("valkey-cache"))["healthy"] and p["pid"] != before["pid"],
                 timeout=60, what="valkey-cache restarted")
        back_at = time.monotonic()
        wait_for(lambda: answered(back_at + 0.5, "hit"), timeout=30, what="hits again")
    outcomes = [r if isinstance(r, str) else r.status_code for _, r in load.results]
    failures = [o for o in outcomes if o != 200]
    down = sum(1 for _, r in load.results if not isinstance(r, str) and r.headers.get("X-Query-Cache") == "down")
    print(f"\n{len(outcomes)} requests, {len(failures)} failed, {down} X-Query-Cache: down")
    assert failures == [], failures[:5]
    assert get(f"{api_url}/users/{users[0]['id']}").json()["data"]["bio"] == "while down"


# --- last: replicas and shards make the slowest fixtures --------------------------------------------
def test_a_lagging_replica_does_not_refill_stale_rows(topology_admin, api_url, new_user):
    """The only replica replays 3 s late, so every read goes to it. After a write, misses read the
    old row there (the replica's own staleness) but must not store it: once the replica has caught
    up, no read is stale, hit or miss. Without the tombstone the first miss after the bump would fill
    the old row under the new generation, and it would be served for the whole TTL."""
    use(topology_admin, replicas=1, max_lag_ms=10_000, read_policy="round_robin",
        emulation={"stale_replica": 1, "apply_delay_ms": 3000}, cache={"query_ttl_s": 600})
    user = new_user(bio="old")
    url = f"{api_url}/users/{user['id']}"
    wait_for(lambda: all(requests.get(url, timeout=30).status_code == 200 for _ in range(6)), timeout=60,
             what="the new user on the replica")
    # The sign-up's tombstone (max_lag_ms + 1 s) ends, then the replica's read fills.
    wait_for(lambda: seen(get(url)) == ("hit", "none"), timeout=60, what="a hit")
    patch(url, bio="new")
    written_at = time.monotonic()
    reads = []
    while time.monotonic() - written_at < 6:
        r = get(url)
        reads.append((round(time.monotonic() - written_at, 2), *seen(r), r.json()["data"]["bio"]))
        time.sleep(0.05)
    stale = [r for r in reads if r[3] == "old"]
    assert stale and {node for _, _, node, _ in stale} == {"replica-1"}, reads  # the replica was stale...
    assert not [r for r in reads if r[1] == "hit" and r[3] == "old"], reads  # ...and the query cache never
    assert all(r[3] == "new" for r in reads if r[0] > 4), reads
    wait_for(lambda: seen(get(url)) == ("hit", "none"), timeout=60, what="fills to resume")
    assert get(url).json()["data"]["bio"] == "new"


def reshard(to: int) -> None:
    subprocess.run([sys.executable, "manage.py", "reshard", "--to", str(to), "--strategy", "hash"],
                   cwd=ROOT, check=True, timeout=900)


def list_nodes(api_url) -> str:
    """The nodes a page of the user list read (never cached: it asks every shard)."""
    return get(f"{api_url}/users?limit=1").headers["X-DB-Node"]


def test_two_shards_and_a_user_moved_there_and_back(topology_admin, api_url, new_user):
    """Entries are per shard and per topology version. Users on two shards are cached and
    invalidated independently; a user cached on shard 1, moved to shard 2, changed there and moved
    back must not meet its shard-1 entry again (its shard-1 generation never saw the change)."""
    use(topology_admin, cache={"query_ttl_s": 3600})
    users = [new_user(bio="v1") for _ in range(8)]
    for u in users:  # cached on the one shard
        get(f"{api_url}/users/{u['id']}")
        assert seen(get(f"{api_url}/users/{u['id']}"))[0] == "hit"
    reshard(2)
    try:
        wait_for(lambda: all(list_nodes(api_url) == "shard-1/primary, shard-2/primary" for _ in range(8)),
                 timeout=60, what="the app servers on two shards")
        use(topology_admin, cache={"query_ttl_s": 3600})  # the reshard's topology kept; settle every worker
        where = {}
        for u in users:
            url = f"{api_url}/users/{u['id']}"
            wait_for(lambda: seen(get(url)) == ("hit", "none"), timeout=30, what=f"a hit for {u['id']}")
            # Which shard: a write goes to the user's primary, and says so.
            where[u["id"]] = patch(url, bio="v2").headers["X-DB-Node"]
        shards_used = set(where.values())
        assert shards_used == {"shard-1/primary", "shard-2/primary"}, where  # 8 users over 2 shards
        a = next(u for u in users if where[u["id"]] == "shard-1/primary")
        b = next(u for u in users if where[u["id"]] == "shard-2/primary")
        url_a, url_b = f"{api_url}/users/{a['id']}", f"{api_url}/users/{b['id']}"
        for url in (url_a, url_b):
            assert get(url).json()["data"]["bio"] == "v2"
            assert seen(get(url)) == ("hit", "none")
        patch(url_a, bio="v3")
        assert seen(get(url_a)) == ("miss", "shard-1/primary") and get(url_a).json()["data"]["bio"] == "v3"
        assert seen(get(url_b)) == ("hit", "none")  # another shard's user: untouched
        patch(url_b, bio="v3")
        assert seen(get(url_b)) == ("miss", "shard-2/primary") and get(url_b).json()["data"]["bio"] == "v3"
        assert seen(get(url_a)) == ("hit", "none")
    finally:
        reshard(1)
    wait_for(lambda: all(list_nodes(api_url) == "primary" for _ in range(8)), timeout=60,
             what="the app servers on one shard")
    use(topology_admin, cache={"query_ttl_s": 3600})
    # Back on shard 1. Were entries not keyed by the topology's version, the v1 entries of the users
    # that spent the meantime on shard 2 would match again: their shard-1 generations never moved.
    for u in users:
        expected = "v3" if u["id"] in (a["id"], b["id"]) else "v2"
        assert get(f"{api_url}/users/{u['id']}").json()["data"]["bio"] == expected, (u["id"], where[u["id"]])
