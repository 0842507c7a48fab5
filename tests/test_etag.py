"""Conditional GETs over HTTP through Caddy: ETag, If-None-Match and 304."""
import pytest


def etag_of(response):
    assert response.status_code == 200, response.text
    tag = response.headers.get("ETag")
    assert tag and tag.startswith('"') and tag.endswith('"') and len(tag) > 2, tag
    return tag


def assert_not_modified(response, tag):
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers.get("ETag") == tag
    assert response.headers.get("X-Request-Id")


@pytest.fixture
def user_with_post(http, api_url, new_user):
    user = new_user(bio="first")
    post = http.post(f"{api_url}/users/{user['id']}/posts", json={"title": "t", "body": "b"}, timeout=10)
    assert post.status_code == 201
    return user, post.json()["data"]


def test_get_carries_a_stable_etag_on_every_app_server(http, api_url, user_with_post):
    user, _ = user_with_post
    url = f"{api_url}/users/{user['id']}"
    responses = [http.get(url, timeout=10) for _ in range(6)]
    assert {etag_of(r) for r in responses} == {etag_of(responses[0])}
    # Round-robin: both app servers answered, and they agree on the tag.
    assert {r.headers["X-App-Server"] for r in responses} == {"app-1", "app-2"}
    # The tag covers the data only: the meta (timestamp, request id) differs, the tag does not.
    assert len({r.json()["meta"]["request_id"] for r in responses}) == 6


@pytest.mark.parametrize("path", ["/users/{user}", "/users/{user}/posts", "/users/{user}/posts/{post}",
                                  "/users?limit=5"])
def test_if_none_match_gives_304_with_an_empty_body(http, api_url, user_with_post, path):
    user, post = user_with_post
    url = api_url + path.format(user=user["id"], post=post["id"])
    tag = etag_of(http.get(url, timeout=10))
    for header in (tag, f"W/{tag}", f'"nope", {tag}', "*"):
        for _ in range(2):  # both app servers
            assert_not_modified(http.get(url, headers={"If-None-Match": header}, timeout=10), tag)
    other = http.get(url, headers={"If-None-Match": '"not-the-tag"'}, timeout=10)
    assert other.status_code == 200 and etag_of(other) == tag
    assert other.json()["data"]


def test_a_change_gives_a_new_etag_and_the_old_one_gets_200(http, api_url, user_with_post):
    user, _ = user_with_post
    url = f"{api_url}/users/{user['id']}"
    old = etag_of(http.get(url, timeout=10))
    patched = http.patch(url, json={"bio": "second"}, timeout=10)
    assert patched.status_code == 200

    fresh = http.get(url, headers={"If-None-Match": old}, timeout=10)
    new = etag_of(fresh)
    assert new != old
    assert fresh.json()["data"]["bio"] == "second"
    assert_not_modified(http.get(url, headers={"If-None-Match": new}, timeout=10), new)

    # Another change, another tag; the bio is back but updated_at moved on, so neither old tag matches.
    http.patch(url, json={"bio": "first"}, timeout=10)
    again = http.get(url, headers={"If-None-Match": f"{old}, {new}"}, timeout=10)
    assert again.json()["data"]["bio"] == "first"
    assert etag_of(again) not in (old, new)


def test_a_new_post_changes_the_list_etag_and_the_users(http, api_url, user_with_post):
    user, post = user_with_post
    posts_url = f"{api_url}/users/{user['id']}/posts"
    user_url = f"{api_url}/users/{user['id']}"
    list_tag = etag_of(http.get(posts_url, timeout=10))
    user_tag = etag_of(http.get(user_url, timeout=10))
    post_url = f"{posts_url}/{post['id']}"
    post_tag = etag_of(http.get(post_url, timeout=10))

    assert http.post(posts_url, json={"title": "another"}, timeout=10).status_code == 201
    listing = http.get(posts_url, headers={"If-None-Match": list_tag}, timeout=10)
    assert etag_of(listing) != list_tag and len(listing.json()["data"]["results"]) == 2
    counted = http.get(user_url, headers={"If-None-Match": user_tag}, timeout=10)
    assert etag_of(counted) != user_tag and counted.json()["data"]["post_count"] == 2
    # The untouched post keeps its tag.
    assert_not_modified(http.get(post_url, headers={"If-None-Match": post_tag}, timeout=10), post_tag)

    assert http.patch(post_url, json={"title": "edited"}, timeout=10).status_code == 200
    edited = http.get(post_url, headers={"If-None-Match": post_tag}, timeout=10)
    assert etag_of(edited) != post_tag and edited.json()["data"]["title"] == "edited"


def test_errors_and_writes_carry_no_etag(http, api_url, user_with_post):
    user, _ = user_with_post
    missing = http.get(f"{api_url}/users/{user['id']}/posts/1", timeout=10)
    assert missing.status_code == 404 and "ETag" not in missing.headers
    # If-None-Match does not turn an error into a 304.
    assert http.get(f"{api_url}/users/{user['id']}/posts/1", headers={"If-None-Match": "*"},
                    timeout=10).status_code == 404
    patched = http.patch(f"{api_url}/users/{user['id']}", json={"name": "x"}, timeout=10)
    assert patched.status_code == 200 and "ETag" not in patched.headers
