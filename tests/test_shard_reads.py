"""Reads that span every shard, over HTTP through Caddy against the real stack: the global
full-text search `GET /search/posts` (PostgreSQL FTS with a GIN index on each shard, merged by
rank, with a cursor that stays exact across shards) and the cross-shard `GET /users` list.

The module reshards the test stack to SHARDS shards (hash) with `manage.py reshard`, and back to
one at its end. Until that command exists the module runs on one shard, and the tests that need
several are skipped."""
import base64
import re
import secrets
import string
import subprocess
import sys
import time

import psycopg
import pytest
import requests

from conftest import assert_problem, sign_up, wait_for
from test_api_users import walk
from tests.settings import ROOT

SHARDS = 3
STRATEGY = "hash"
RESHARD_COMMAND = ROOT / "workbench" / "management" / "commands" / "reshard.py"
RESULT_FIELDS = {"id", "user_id", "title", "body", "created_at", "updated_at", "rank"}
NODE = re.compile(r"^shard-(\d)/(primary|replica-\d)$")


def reshard(to: int) -> None:
    subprocess.run([sys.executable, "manage.py", "reshard", "--to", str(to), "--strategy", STRATEGY],
                   cwd=ROOT, check=True, timeout=900)


def shards_seen(api_url, wanted: int) -> bool:
    """Every app server's workers ask `wanted` shards (they refresh the topology once a second)."""
    seen = [requests.get(f"{api_url}/search/posts", params={"q": "x"}, timeout=30).headers.get("X-Shards-Queried")
            for _ in range(12)]
    return seen == [str(wanted)] * len(seen)


@pytest.fixture(scope="module")
def shard_count(stack, api_url):
    """SHARDS shards for the module when `reshard` exists (one otherwise); back to one at its end."""
    if not RESHARD_COMMAND.exists():
        yield 1
        return
    reshard(SHARDS)
    wait_for(lambda: shards_seen(api_url, SHARDS), timeout=30, what=f"the app servers to ask {SHARDS} shards")
    yield SHARDS
    reshard(1)
    wait_for(lambda: shards_seen(api_url, 1), timeout=30, what="the app servers to ask one shard")


@pytest.fixture(scope="module")
def sharded(shard_count):
    if shard_count < 2:
        pytest.skip("needs two or more shards: `manage.py reshard` is not there yet")
    return shard_count


def sql(url: str, query: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        return conn.execute(query, params).fetchall()


def unique_word() -> str:
    """A word no other post has: letters only, so the parser keeps it one token (the english
    stemmer may shorten it, the same way for the posts and for the query)."""
    return "wbq" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(14))


def unique_name(tag: str) -> str:
    return f"{tag}_{time.monotonic_ns() % 10**12}_{secrets.token_hex(2)}"[:30]


def post(http, api_url, user_id, title, body=""):
    response = http.post(f"{api_url}/users/{user_id}/posts", json={"title": title, "body": body}, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["data"]


def search(http, api_url, **params):
    response = http.get(f"{api_url}/search/posts", params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response


def walk_keeping_responses(http, url):
    """test_api_users.walk (follow `next` to the end), also returning each page's response."""
    responses = []
    http.hooks["response"].append(lambda response, *args, **kwargs: responses.append(response))
    rows, pages = walk(http, url)
    return rows, [page["results"] for page in pages], responses


def node_shards(header: str) -> list[int]:
    """The shard of each node X-DB-Node names (with several shards: shard-k/primary, shard-k/replica-i)."""
    names = [n.strip() for n in header.split(",")]
    assert all(NODE.match(n) for n in names), header
    return [int(NODE.match(n)[1]) for n in names]


def shard_holding_post(stack_config, shards: int, post_id: str) -> int:
    return next(k for k in range(1, shards + 1)
                if sql(stack_config.shard_url(k), "SELECT 1 FROM api_post WHERE id = %s", (int(post_id),)))


# --- search ---------------------------------------------------------------------------------------

def test_search_finds_a_post_by_a_unique_word(http, api_url, shard_count, new_user):
    word = unique_word()
    user = new_user()
    made = post(http, api_url, user["id"], "A post to find", f"Somewhere in here is {word}, once.")
    post(http, api_url, user["id"], "Another post", "Without the word.")
    response = search(http, api_url, q=word)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["X-Shards-Queried"] == str(shard_count)
    data = response.json()["data"]
    assert data["next"] is None and len(data["results"]) == 1
    hit = data["results"][0]
    assert set(hit) == RESULT_FIELDS
    assert {k: hit[k] for k in made} == made and hit["user_id"] == user["id"]
    assert isinstance(hit["rank"], float) and hit["rank"] > 0
    # Normalised like the posts: an upper-case spelling finds it too.
    assert [h["id"] for h in search(http, api_url, q=word.upper()).json()["data"]["results"]] == [made["id"]]
    # Web search syntax: a word that must not be there excludes it; a phrase in the wrong order misses.
    assert search(http, api_url, q=f"{word} -somewhere").json()["data"]["results"] == []
    assert search(http, api_url, q=f'"{word} somewhere"').json()["data"]["results"] == []
    assert len(search(http, api_url, q=f'"somewhere in here is {word}"').json()["data"]["results"]) == 1


def test_results_are_ranked_best_first_with_postgresqls_rank(http, api_url, stack_config, shard_count, new_user):
    word = unique_word()
    users = [new_user() for _ in range(3)]
    once = post(http, api_url, users[0]["id"], "one", f"{word} and many other words to dilute it a bit")
    thrice = post(http, api_url, users[1]["id"], f"{word} {word}", f"{word} here")
    twice = post(http, api_url, users[2]["id"], "two", f"{word} and {word}")
    results = search(http, api_url, q=word).json()["data"]["results"]
    assert [r["id"] for r in results] == [thrice["id"], twice["id"], once["id"]]
    ranks = [r["rank"] for r in results]
    assert ranks == sorted(ranks, reverse=True) and len(set(ranks)) == 3
    # The rank is ts_rank of the indexed expression, as PostgreSQL writes the float4, on the shard
    # that holds the post.
    for result in results:
        shard = shard_holding_post(stack_config, shard_count, result["id"])
        [(rank,)] = sql(stack_config.shard_url(shard),
                        "SELECT ts_rank(to_tsvector('english', title || ' ' || body), "
                        "websearch_to_tsquery('english', %s))::text FROM api_post WHERE id = %s",
                        (word, int(result["id"])))
        assert result["rank"] == float(rank)


def test_pagination_walks_every_match_once_across_shards(http, api_url, stack_config, shard_count):
    """25 posts of 5 users, in three rank groups with ties (equal texts rank equally), paged by 7:
    every match exactly once, in (rank, id) descending order, whichever shard holds it."""
    word = unique_word()
    users = [sign_up(http, api_url, unique_name("srch")) for _ in range(5)]
    made = {}
    for i in range(25):
        body = " ".join([word] * (1 + i % 3)) + " filler text"
        created = post(http, api_url, users[i % 5]["id"], f"post {i}", body)
        made[created["id"]] = created
    first = search(http, api_url, q=word, limit=7)
    rows, pages, responses = walk_keeping_responses(http, first.url)
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 25 and set(ids) == set(made)
    keys = [(r["rank"], int(r["id"])) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert len({r["rank"] for r in rows}) == 3
    assert all(r["title"] == made[r["id"]]["title"] for r in rows)
    for response in responses:
        assert response.headers["X-Shards-Queried"] == str(shard_count)
    if shard_count > 1:  # the matches really came from several shards
        holders = {shard_holding_post(stack_config, shard_count, i) for i in made}
        assert len(holders) >= 2, holders
    # A cursor is stable: page 3 asked again is the same page.
    third = http.get(responses[1].json()["data"]["next"], timeout=30).json()["data"]["results"]
    assert [r["id"] for r in third] == ids[14:21]


def test_a_query_matching_nothing_or_only_stop_words_is_an_empty_page(http, api_url, shard_count):
    for q in (unique_word(), "the", "-", '"', "or", "!!", "a & b | c", "é中文"):
        data = search(http, api_url, q=q).json()["data"]
        assert data["next"] is None and isinstance(data["results"], list), q
    assert search(http, api_url, q="x" * 200).json()["data"]["results"] == []  # the longest allowed


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize("params,field", [
    ({}, "q"),
    ({"q": ""}, "q"),
    ({"q": "   "}, "q"),
    ({"q": "x" * 201}, "q"),
    ({"q": "a\x00b"}, "q"),
    ({"q": "a", "limit": "0"}, "limit"),
    ({"q": "a", "limit": "101"}, "limit"),
    ({"q": "a", "limit": "ten"}, "limit"),
    ({"q": "a", "limit": "-1"}, "limit"),
    ({"q": "a", "cursor": "not-a-cursor!"}, "cursor"),
    ({"q": "a", "cursor": b64("[1]")}, "cursor"),
    ({"q": "a", "cursor": b64("[1, 2, 3]")}, "cursor"),
    ({"q": "a", "cursor": b64('["0.5", 2]')}, "cursor"),
    ({"q": "a", "cursor": b64("[0.5, 2]")}, "cursor"),
    ({"q": "a", "cursor": b64("[-1, 2]")}, "cursor"),
    ({"q": "a", "cursor": b64("[2139095040, 2]")}, "cursor"),   # +infinity's bits
    ({"q": "a", "cursor": b64("[2143289344, 2]")}, "cursor"),   # NaN's bits
    ({"q": "a", "cursor": b64("[1, 9223372036854775808]")}, "cursor"),
    ({"q": "a", "cursor": "x" * 300}, "cursor"),
    ({"q": "a", "page": "2"}, "page"),
], ids=lambda v: repr(v)[:40] if isinstance(v, dict) else v)
def test_bad_input_is_a_400_naming_the_field(http, api_url, params, field):
    response = http.get(f"{api_url}/search/posts", params=params, timeout=30)
    assert_problem(response, 400, field)


def test_a_cursor_at_the_largest_rank_is_accepted(http, api_url, shard_count, new_user):
    """[largest finite float4's bits, id]: every match ranks below it, so the page starts at the top."""
    word = unique_word()
    made = post(http, api_url, new_user()["id"], word)
    results = search(http, api_url, q=word, cursor=b64("[2139095039, 1]")).json()["data"]["results"]
    assert [r["id"] for r in results] == [made["id"]]


def test_each_shard_serves_search_from_the_gin_index(stack_config, shard_count):
    """EXPLAIN of the very query the selector sends, on every shard, with and without a cursor:
    a scan of api_post_search (with sequential scans off, so the tiny test tables do not tempt
    the planner to read everything)."""
    from api.selectors import post_search_sql

    for shard in range(1, shard_count + 1):
        with psycopg.connect(stack_config.shard_url(shard), autocommit=True) as conn:
            conn.execute("SET enable_seqscan = off")
            for after, params in ((None, {"q": "quick fox"}),
                                  ((0.05, 12345), {"q": "quick fox", "rank": 0.05, "id": 12345})):
                plan = "\n".join(row[0] for row in conn.execute(
                    "EXPLAIN " + post_search_sql(after=after, limit=8), params))
                assert "api_post_search" in plan, plan
                assert "Seq Scan" not in plan, plan


# --- fan-out over several shards -----------------------------------------------------------------

def test_search_fans_out_to_every_shard(http, api_url, sharded):
    response = search(http, api_url, q=unique_word())
    assert response.headers["X-Shards-Queried"] == str(sharded)
    assert sorted(node_shards(response.headers["X-DB-Node"])) == list(range(1, sharded + 1))


def test_search_fans_out_to_a_replica_of_every_shard(http, api_url, topology_admin, sharded):
    topology_admin.apply({"replicas": 1})
    try:
        def on_replicas():
            response = search(http, api_url, q=unique_word())
            names = [n.strip() for n in response.headers["X-DB-Node"].split(",")]
            return names if all(n.endswith("/replica-1") for n in names) else None
        names = wait_for(on_replicas, timeout=60, what="searches to read from the shards' replicas")
        assert sorted(node_shards(", ".join(names))) == list(range(1, sharded + 1))
    finally:
        topology_admin.apply({"replicas": 0})


# --- the cross-shard user list --------------------------------------------------------------------

def test_users_pagination_walks_every_user_of_every_shard_once_in_id_order(http, api_url, stack_config,
                                                                          shard_count):
    stored = {k: {str(i) for (i,) in sql(stack_config.shard_url(k), "SELECT id FROM api_user")}
              for k in range(1, shard_count + 1)}
    everyone = set().union(*stored.values())
    if shard_count > 1:
        assert all(stored.values()), {k: len(v) for k, v in stored.items()}  # users on every shard
        assert sum(len(v) for v in stored.values()) == len(everyone)        # none on two shards at rest
    rows, pages, responses = walk_keeping_responses(http, f"{api_url}/users?limit=37")
    ids = [int(r["id"]) for r in rows]
    assert ids == sorted(set(ids)), "not strictly increasing: a user repeated or out of order"
    assert {str(i) for i in ids} == everyone
    assert all(len(p) == 37 for p in pages[:-1]) and 1 <= len(pages[-1]) <= 37
    if shard_count > 1:
        for response in responses:
            assert sorted(node_shards(response.headers["X-DB-Node"])) == list(range(1, shard_count + 1))
