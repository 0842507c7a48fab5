"""Deletion everywhere (the seed's compliance question) on the real stack: with every layer on
(the Valkey cache, the per-process L1, the query cache, the read model, an avatar), one
DELETE /users/{id} leaves none of the user's data in any of them. Each place is checked on its own
engine: the shards' and meta's tables, the cache Valkey's keys, both app servers' L1s, the state
Valkey's document, the blob on disk and at the edge.

The cache check is stricter than "unreachable": posts pages of an older namespace version (made
unreachable by a later post) and query-cache rows must be gone, not left to their TTL."""
import json
import time

import psycopg
import pytest
import redis

from conftest import sign_up, wait_for
from test_avatars import blob_path, image_bytes, put_avatar
from api import readmodel
from api.caching import keys, querycache, writes
from workbench import topology

TOMBSTONE_S = writes.TOMBSTONE_MARGIN_MS / 1000  # max_lag_ms is 0 here


@pytest.fixture(scope="module")
def state(stack_config, stack):
    return redis.Redis.from_url(stack_config.state_url, socket_timeout=5)


@pytest.fixture(scope="module")
def cache(stack_config, stack):
    return redis.Redis.from_url(stack_config.cache_url, socket_timeout=5)


@pytest.fixture(scope="module")
def every_layer_on(topology_admin, state):
    """L1 entries live a minute, so only the deletion can explain their going."""
    topology_admin.apply({"max_lag_ms": 0, "read_model": True,
                          "cache": {"mode": "cache-aside", "l1": True, "l1_ttl_ms": 60_000, "query_cache": True}},
                         replace=True)
    wait_for(lambda: state.exists(readmodel.BUILT), timeout=90, what="the relay's rebuild after the switch-on")
    time.sleep(topology.REFRESH_S + 0.2)  # every app worker uses the new topology
    yield
    topology_admin.apply({}, replace=True)


def rows(url: str, sql: str, *params) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def on_every_shard(stack_config, sql: str, user_id: str) -> int:
    shards = topology.current().topology.shards
    return sum(rows(stack_config.shard_url(k), sql, int(user_id)) for k in range(1, shards + 1))


def in_meta(stack_config, user_id: str) -> int:
    return sum(rows(stack_config.meta_db_url, f"SELECT count(*) FROM {table} WHERE user_id = %s", int(user_id))
               for table in ("meta_account", "meta_shard_directory"))


def cache_keys(cache, user_id: str) -> dict:
    """The user's keys in the cache Valkey, by layer: the application cache's hash tag, and the
    query cache's on any shard."""
    app = {k.decode() for k in cache.scan_iter(match=f"{keys.PREFIX}:{{u:{user_id}}}:*", count=1000)}
    query = {k.decode() for k in cache.scan_iter(match=f"{querycache.PREFIX}:{{q:*:{user_id}}}:*", count=1000)}
    return {"app": app, "query": query}


def kinds(found: set) -> set:
    """Each key's last part: user, ns, tomb, keys, posts:V:digest -> posts, r:digest -> r, ..."""
    return {k.split("}:", 1)[1].split(":", 1)[0] for k in found}


def read_until(http, url: str, x_cache: str, what: str):
    return wait_for(lambda: (r := http.get(url, timeout=10)).headers.get("X-Cache") == x_cache and r,
                    timeout=30, what=what)


def test_deleting_a_user_removes_them_from_every_place(every_layer_on, http, api_url, stack, stack_config,
                                                        state, cache, new_user):
    user = new_user(bio="a bio that must not outlive its author")
    uid = user["id"]
    direct = [url + "/api/v1" for url in stack["direct_urls"][:2]]
    for title in ("first", "second"):
        assert http.post(f"{api_url}/users/{uid}/posts", json={"title": title, "body": "x"}, timeout=10).status_code == 201
    avatar = put_avatar(http, api_url, uid, image_bytes("PNG"))
    assert avatar.status_code == 200, avatar.text
    blob_url = avatar.json()["data"]["url"]
    time.sleep(TOMBSTONE_S + 0.1)

    # Pages of one namespace version, then a post that makes them unreachable, then pages of the next.
    for server in direct:
        read_until(http, f"{server}/users/{uid}/posts?limit=1", "hit-l1", "an L1 hit of an old posts page")
    assert http.post(f"{api_url}/users/{uid}/posts", json={"title": "third", "body": "x"}, timeout=10).status_code == 201
    time.sleep(TOMBSTONE_S + 0.1)
    for server in direct:
        for path in ("", "/posts", "/posts?limit=2"):
            read_until(http, f"{server}/users/{uid}{path}", "hit-l1", f"an L1 hit of {path or 'the user'}")
    wait_for(lambda: http.get(f"{api_url}/users/{uid}?view=profile", timeout=10).headers.get("X-Read-Model") == "hit",
             timeout=30, what="the profile document served")

    before = cache_keys(cache, uid)
    assert {"user", "posts", "keys"} <= kinds(before["app"]), before
    pages = [k for k in before["app"] if kinds({k}) == {"posts"}]
    assert len({k.split(":posts:")[1].split(":")[0] for k in pages}) == 2, pages  # two namespace versions
    assert "r" in kinds(before["query"]), before
    assert b"data" in state.hgetall(readmodel.key(int(uid)))
    assert blob_path(stack_config, blob_url).exists()
    assert on_every_shard(stack_config, "SELECT count(*) FROM api_post WHERE user_id = %s", uid) == 3
    assert in_meta(stack_config, uid) >= 1  # the account (and a directory entry under `directory`)

    assert http.delete(f"{api_url}/users/{uid}", timeout=10).status_code == 204

    # The cache, before any read can recreate a key: only the tombstones (which hold no data) and
    # the query cache's generation counters (numbers) may remain.
    after = cache_keys(cache, uid)
    assert kinds(after["app"]) <= {"tomb"}, after["app"]
    assert kinds(after["query"]) <= {"gen", "quiet"}, after["query"]
    # The rows, on every shard and in meta.
    assert on_every_shard(stack_config, "SELECT count(*) FROM api_user WHERE id = %s", uid) == 0
    assert on_every_shard(stack_config, "SELECT count(*) FROM api_post WHERE user_id = %s", uid) == 0
    assert in_meta(stack_config, uid) == 0
    # Both app servers' L1s: the entries would have lived a minute.
    for server in direct:
        for path in ("", "/posts", "/posts?limit=2"):
            for _ in range(6):  # both workers of the server
                response = http.get(f"{server}/users/{uid}{path}", timeout=10)
                assert response.status_code == 404, (server, path, response.headers.get("X-Cache"))
    # The read model: the relay turns the document into a tombstone with no data.
    wait_for(lambda: b"data" not in state.hgetall(readmodel.key(int(uid))), timeout=30,
             what="the read model's document gone")
    assert not state.sismember(readmodel.DOCS, uid)
    assert http.get(f"{api_url}/users/{uid}?view=profile", timeout=10).status_code == 404
    # The avatar: the blob, the edge's copy, the API.
    assert not blob_path(stack_config, blob_url).exists()
    assert http.get(blob_url, timeout=10).status_code == 404
    assert http.get(f"{api_url}/users/{uid}/avatar", timeout=10).status_code == 404
    # meta's uniqueness index let go of the name and the address.
    again = sign_up(http, api_url, user["username"])
    assert again["id"] != uid and again["email"] == user["email"]


def test_the_purge_is_not_skipped_with_ttl_only_invalidation(topology_admin, http, api_url, cache, new_user):
    """`invalidation=ttl` lets a write leave stale entries on purpose; a deleted user's are still purged."""
    topology_admin.apply({"max_lag_ms": 0, "cache": {"mode": "cache-aside", "invalidation": "ttl"}}, replace=True)
    try:
        time.sleep(topology.REFRESH_S + 0.2)
        uid = new_user()["id"]
        for path in ("", "/posts"):
            read_until(http, f"{api_url}/users/{uid}{path}", "hit", f"a hit of {path or 'the user'}")
        assert {"user", "posts"} <= kinds(cache_keys(cache, uid)["app"])
        assert http.delete(f"{api_url}/users/{uid}", timeout=10).status_code == 204
        assert kinds(cache_keys(cache, uid)["app"]) <= {"tomb"}
        assert json.loads(http.get(f"{api_url}/users/{uid}", timeout=10).content)["status"] == 404
    finally:
        topology_admin.apply({}, replace=True)
