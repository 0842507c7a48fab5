"""The posts endpoints over HTTP, through Caddy, against the real stack."""
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from conftest import assert_problem

POST_FIELDS = {"id", "user_id", "title", "body", "created_at", "updated_at"}


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.fixture(scope="module")
def data_db(stack, stack_config):
    """A read-only look at the stack's data primary, to check what was (not) written."""
    with psycopg.connect(stack_config.data_database_url, autocommit=True) as conn:
        def scalar(sql, *params):
            return conn.execute(sql, params).fetchone()[0]
        yield scalar


def create(http, api_url, user_id, title="t", body=None):
    payload = {"title": title} if body is None else {"title": title, "body": body}
    response = http.post(f"{api_url}/users/{user_id}/posts", json=payload, timeout=10)
    assert response.status_code == 201, response.text
    return response


def create_many(http, api_url, user_id, n):
    posts = []
    for i in range(n):
        posts.append(create(http, api_url, user_id, title=f"post {i}", body=f"body {i}").json()["data"])
        time.sleep(0.003)  # distinct milliseconds, so created_at orders them strictly
    assert [ts(p["created_at"]) for p in posts] == sorted({ts(p["created_at"]) for p in posts})
    return posts


def listing(http, url, **params):
    response = http.get(url, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def walk(http, url, **params):
    rows, pages = [], 0
    data = listing(http, url, **params)
    while True:
        rows += data["results"]
        pages += 1
        assert pages < 500
        if data["next"] is None:
            return rows, pages
        data = listing(http, data["next"])


def post_count(http, api_url, user_id):
    response = http.get(f"{api_url}/users/{user_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]["post_count"]


def test_create_and_get(http, api_url, new_user):
    user = new_user()
    response = create(http, api_url, user["id"], title="Hello", body="First post.\n  With spaces  ")
    assert response.headers["Content-Type"].startswith("application/json")
    post = response.json()["data"]
    assert set(post) == POST_FIELDS
    assert isinstance(post["id"], str) and post["id"].isdigit()
    assert post["user_id"] == user["id"]
    assert (post["title"], post["body"]) == ("Hello", "First post.\n  With spaces  ")
    assert post["created_at"] == post["updated_at"]
    assert response.headers["Location"].endswith(f"/api/v1/users/{user['id']}/posts/{post['id']}")

    fetched = http.get(f"{api_url}/users/{user['id']}/posts/{post['id']}", timeout=10)
    assert fetched.status_code == 200
    assert fetched.json()["data"] == post


def test_body_is_optional_and_limits_are_inclusive(http, api_url, new_user):
    user = new_user()
    bare = create(http, api_url, user["id"], title="x").json()["data"]
    assert bare["body"] == ""
    longest = create(http, api_url, user["id"], title="t" * 200, body="b" * 10_000).json()["data"]
    assert (len(longest["title"]), len(longest["body"])) == (200, 10_000)
    unicode = create(http, api_url, user["id"], title="héllo ✓ 🎉", body="日本語").json()["data"]
    assert (unicode["title"], unicode["body"]) == ("héllo ✓ 🎉", "日本語")


def test_list_is_newest_first(http, api_url, new_user):
    user = new_user()
    posts = create_many(http, api_url, user["id"], 5)
    data = listing(http, f"{api_url}/users/{user['id']}/posts")
    assert data["next"] is None
    assert [p["id"] for p in data["results"]] == [p["id"] for p in reversed(posts)]
    assert data["results"] == list(reversed(posts))
    assert all(set(p) == POST_FIELDS and p["user_id"] == user["id"] for p in data["results"])


def test_empty_list_for_a_user_without_posts(http, api_url, new_user):
    user = new_user()
    assert listing(http, f"{api_url}/users/{user['id']}/posts") == {"results": [], "next": None}


def test_time_range_is_inclusive(http, api_url, new_user):
    user = new_user()
    posts = create_many(http, api_url, user["id"], 5)
    url = f"{api_url}/users/{user['id']}/posts"
    at = [p["created_at"] for p in posts]
    ids = [p["id"] for p in posts]

    def ids_in(**params):
        return [p["id"] for p in listing(http, url, **params)["results"]]

    assert ids_in(since=at[1], until=at[3]) == [ids[3], ids[2], ids[1]]
    assert ids_in(since=at[1]) == [ids[4], ids[3], ids[2], ids[1]]
    assert ids_in(until=at[3]) == [ids[3], ids[2], ids[1], ids[0]]
    assert ids_in(since=at[2], until=at[2]) == [ids[2]]
    assert ids_in(since=at[0], until=at[4]) == list(reversed(ids))

    # One millisecond inside the bounds drops the posts on them.
    inner_since = (ts(at[1]) + timedelta(milliseconds=1)).isoformat()
    inner_until = (ts(at[3]) - timedelta(milliseconds=1)).isoformat()
    assert ids_in(since=inner_since, until=inner_until) == [ids[2]]

    # The same instants written with another offset select the same posts.
    plus_two = timezone(timedelta(hours=2))
    assert ids_in(since=ts(at[1]).astimezone(plus_two).isoformat(),
                  until=ts(at[3]).astimezone(plus_two).isoformat()) == [ids[3], ids[2], ids[1]]

    # A range after the newest post, or before the oldest, is empty.
    later = (ts(at[4]) + timedelta(seconds=1)).isoformat()
    earlier = (ts(at[0]) - timedelta(seconds=1)).isoformat()
    assert ids_in(since=later) == []
    assert ids_in(until=earlier) == []
    assert ids_in(since="2002-01-01T00:00:00Z", until="2003-01-01T00:00:00Z") == []


def test_time_range_paginates(http, api_url, new_user):
    user = new_user()
    posts = create_many(http, api_url, user["id"], 6)
    rows, pages = walk(http, f"{api_url}/users/{user['id']}/posts",
                       since=posts[1]["created_at"], until=posts[4]["created_at"], limit=1)
    assert [p["id"] for p in rows] == [posts[i]["id"] for i in (4, 3, 2, 1)]
    assert pages == 4


def test_pagination_walks_all_posts_once_newest_first(http, api_url, new_user):
    user = new_user()
    posts = create_many(http, api_url, user["id"], 7)
    first = listing(http, f"{api_url}/users/{user['id']}/posts", limit=3)
    assert len(first["results"]) == 3 and "limit=3" in first["next"]
    rows, pages = walk(http, f"{api_url}/users/{user['id']}/posts", limit=3)
    assert pages == 3
    assert [p["id"] for p in rows] == [p["id"] for p in reversed(posts)]
    assert len({p["id"] for p in rows}) == 7
    # An exact multiple of the page size ends with next = null, not an empty page.
    rows, pages = walk(http, f"{api_url}/users/{user['id']}/posts", limit=7)
    assert (len(rows), pages) == (7, 1)


def test_pagination_of_a_seeded_user(http, api_url):
    seeded = listing(http, f"{api_url}/users", limit=1)["results"][0]
    assert seeded["post_count"] >= 2
    rows, pages = walk(http, f"{api_url}/users/{seeded['id']}/posts", limit=1)
    assert len(rows) == seeded["post_count"] == pages
    keys = [(ts(p["created_at"]), int(p["id"])) for p in rows]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == len(keys)


def test_put_replaces_title_and_body(http, api_url, new_user):
    user = new_user()
    post = create(http, api_url, user["id"], title="before", body="old body").json()["data"]
    url = f"{api_url}/users/{user['id']}/posts/{post['id']}"
    response = http.put(url, json={"title": "after", "body": "new body"}, timeout=10)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["title"], data["body"]) == ("after", "new body")
    assert (data["id"], data["user_id"], data["created_at"]) == (post["id"], user["id"], post["created_at"])
    assert ts(data["updated_at"]) > ts(post["updated_at"])
    assert http.get(url, timeout=10).json()["data"] == data

    # PUT is a full replacement: a body left out goes back to its default, "".
    response = http.put(url, json={"title": "only a title"}, timeout=10)
    assert response.status_code == 200, response.text
    assert (response.json()["data"]["title"], response.json()["data"]["body"]) == ("only a title", "")
    # ...and the title is required.
    assert_problem(http.put(url, json={"body": "no title"}, timeout=10), 400, "title")
    assert http.get(url, timeout=10).json()["data"]["title"] == "only a title"


def test_patch_changes_only_what_it_is_given(http, api_url, new_user):
    user = new_user()
    post = create(http, api_url, user["id"], title="title", body="body").json()["data"]
    url = f"{api_url}/users/{user['id']}/posts/{post['id']}"
    response = http.patch(url, json={"body": "patched body"}, timeout=10)
    assert response.status_code == 200, response.text
    assert (response.json()["data"]["title"], response.json()["data"]["body"]) == ("title", "patched body")
    response = http.patch(url, json={"title": "patched title"}, timeout=10)
    assert (response.json()["data"]["title"], response.json()["data"]["body"]) == ("patched title", "patched body")
    assert http.get(url, timeout=10).json()["data"] == response.json()["data"]
    # PATCHing a post does not touch the user's post_count.
    assert post_count(http, api_url, user["id"]) == 1


def test_delete_post(http, api_url, new_user):
    user = new_user()
    keep, doomed = (create(http, api_url, user["id"], title=t).json()["data"] for t in ("keep", "doomed"))
    url = f"{api_url}/users/{user['id']}/posts/{doomed['id']}"
    response = http.delete(url, timeout=10)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(http.get(url, timeout=10), 404, "post_id")
    assert_problem(http.delete(url, timeout=10), 404, "post_id")
    assert_problem(http.patch(url, json={"title": "x"}, timeout=10), 404, "post_id")
    assert_problem(http.put(url, json={"title": "x"}, timeout=10), 404, "post_id")
    remaining = listing(http, f"{api_url}/users/{user['id']}/posts")["results"]
    assert [p["id"] for p in remaining] == [keep["id"]]


def test_post_count_tracks_creates_and_deletes(http, api_url, new_user):
    user = new_user()
    assert post_count(http, api_url, user["id"]) == 0
    posts = [create(http, api_url, user["id"], title=f"p{i}").json()["data"] for i in range(4)]
    assert post_count(http, api_url, user["id"]) == 4
    for post in posts[:3]:
        assert http.delete(f"{api_url}/users/{user['id']}/posts/{post['id']}", timeout=10).status_code == 204
    assert post_count(http, api_url, user["id"]) == 1
    # A failed create, a failed delete and a repeated delete change nothing.
    assert http.post(f"{api_url}/users/{user['id']}/posts", json={"title": ""}, timeout=10).status_code == 400
    assert http.delete(f"{api_url}/users/{user['id']}/posts/{posts[0]['id']}", timeout=10).status_code == 404
    assert post_count(http, api_url, user["id"]) == 1
    create(http, api_url, user["id"])
    assert post_count(http, api_url, user["id"]) == 2
    rows, _ = walk(http, f"{api_url}/users/{user['id']}/posts", limit=100)
    assert len(rows) == 2


def test_another_users_post_is_404_and_untouched(http, api_url, new_user, data_db):
    owner, other = new_user(), new_user()
    post = create(http, api_url, owner["id"], title="mine", body="hands off").json()["data"]
    wrong = f"{api_url}/users/{other['id']}/posts/{post['id']}"
    assert_problem(http.get(wrong, timeout=10), 404, "post_id")
    assert_problem(http.put(wrong, json={"title": "stolen", "body": ""}, timeout=10), 404, "post_id")
    assert_problem(http.patch(wrong, json={"title": "stolen"}, timeout=10), 404, "post_id")
    assert_problem(http.delete(wrong, timeout=10), 404, "post_id")
    assert listing(http, f"{api_url}/users/{other['id']}/posts")["results"] == []

    right = http.get(f"{api_url}/users/{owner['id']}/posts/{post['id']}", timeout=10)
    assert right.status_code == 200 and right.json()["data"] == post
    assert post_count(http, api_url, owner["id"]) == 1
    assert post_count(http, api_url, other["id"]) == 0
    assert data_db("SELECT count(*) FROM api_post WHERE user_id = %s", int(other["id"])) == 0


@pytest.mark.parametrize("how", ["deleted", "never-existed", "max-id"])
def test_posting_for_an_unknown_user_is_404_and_writes_nothing(http, api_url, new_user, data_db, how):
    if how == "deleted":
        user = new_user()
        create(http, api_url, user["id"])
        assert http.delete(f"{api_url}/users/{user['id']}", timeout=30).status_code == 204
        user_id = int(user["id"])
    elif how == "never-existed":
        user_id = int(new_user()["id"]) + 1  # a valid snowflake nobody holds
    else:
        user_id = 2**63 - 1
    assert data_db("SELECT count(*) FROM api_user WHERE id = %s", user_id) == 0
    total_before = data_db("SELECT count(*) FROM api_post")

    response = http.post(f"{api_url}/users/{user_id}/posts", json={"title": "orphan?", "body": "x"}, timeout=10)
    assert_problem(response, 404, "user_id")
    assert_problem(http.get(f"{api_url}/users/{user_id}/posts", timeout=10), 404, "user_id")

    assert data_db("SELECT count(*) FROM api_post WHERE user_id = %s", user_id) == 0
    assert data_db("SELECT count(*) FROM api_post WHERE title = 'orphan?'") == 0
    assert data_db("SELECT count(*) FROM api_post") == total_before
    assert data_db("SELECT count(*) FROM api_user WHERE id = %s", user_id) == 0
