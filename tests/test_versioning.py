"""API versions on the real stack (api/versioning.py, api/views/v2.py): v1 and v2 side by side on
the same data, v2's author never staler than GET /users/{id} with the cache on, v1's Deprecation,
Sunset and Link headers only when the topology says so, problem+json on v2, and the OpenAPI
schema documenting both versions without a warning."""
import calendar
import os
import secrets
import string
import subprocess
import sys
import time
from datetime import datetime

import pytest
import requests
import yaml

from conftest import ROOT, assert_problem, sign_up, wait_for
from workbench import topology

V2_POST_KEYS = ["id", "author", "title", "body", "created_at", "updated_at"]


@pytest.fixture(scope="module", autouse=True)
def defaults_at_the_end(topology_admin):
    yield
    topology_admin.apply({}, replace=True)


@pytest.fixture(scope="module")
def v2_url(stack):
    return stack["api_url"] + "/api/v2"


@pytest.fixture(scope="module")
def member(api_url):
    with requests.Session() as http:
        return sign_up(http, api_url, f"ver_{secrets.token_hex(4)}")


def use(topology_admin, body: dict) -> None:
    """This topology (from the defaults), once every app worker has it (each checks every REFRESH_S)."""
    topology_admin.apply(body, replace=True)
    time.sleep(topology.REFRESH_S + 0.2)


def ms(text: str) -> int:
    """A v1 timestamp in epoch milliseconds, worked out apart from the code under test."""
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return calendar.timegm(moment.timetuple()) * 1000 + moment.microsecond // 1000


def word() -> str:
    return "wbv" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(14))


def ok(response, status: int = 200) -> dict:
    assert response.status_code == status, response.text[:500]
    return response.json()


def v1_as_v2_user(user: dict) -> dict:
    return {**user, "created_at": ms(user["created_at"]), "updated_at": ms(user["updated_at"])}


def v1_as_v2_post(post: dict, author: dict) -> dict:
    out = {k: v for k, v in post.items() if k != "user_id"}
    return {**out, "author": author, "created_at": ms(post["created_at"]), "updated_at": ms(post["updated_at"])}


def test_v1_and_v2_show_the_same_data_each_in_its_shape(http, api_url, v2_url, new_user):
    user = new_user(name="Ada Lovelace", bio="engines")
    uid = user["id"]
    author = {"id": uid, "username": user["username"], "name": "Ada Lovelace"}
    term = word()
    # Writes answer in the version they were sent to.
    made = http.post(f"{v2_url}/users/{uid}/posts", json={"title": f"first {term}", "body": "b1"}, timeout=10)
    first = ok(made, 201)["data"]
    assert made.headers["Location"] == f"/api/v2/users/{uid}/posts/{first['id']}"
    assert list(first) == V2_POST_KEYS and first["author"] == author
    second = ok(http.post(f"{api_url}/users/{uid}/posts", json={"title": f"second {term}"}, timeout=10), 201)["data"]
    assert second["user_id"] == uid and "author" not in second

    # The user, a post, a page (with its next link), the search, the profile, the user list.
    one = ok(http.get(f"{api_url}/users/{uid}", timeout=10))
    two = ok(http.get(f"{v2_url}/users/{uid}", timeout=10))
    assert two["data"] == v1_as_v2_user(one["data"]) and isinstance(two["data"]["created_at"], int)
    assert (one["meta"]["version"], two["meta"]["version"]) == ("v1", "v2")
    assert isinstance(two["meta"]["timestamp"], int) and abs(two["meta"]["timestamp"] - time.time() * 1000) < 60_000
    one_post = ok(http.get(f"{api_url}/users/{uid}/posts/{second['id']}", timeout=10))["data"]
    two_post = ok(http.get(f"{v2_url}/users/{uid}/posts/{second['id']}", timeout=10))["data"]
    assert two_post == v1_as_v2_post(one_post, author) and list(two_post) == V2_POST_KEYS

    one_page = ok(http.get(f"{api_url}/users/{uid}/posts?limit=1", timeout=10))["data"]
    two_page = ok(http.get(f"{v2_url}/users/{uid}/posts?limit=1", timeout=10))["data"]
    assert two_page["results"] == [v1_as_v2_post(p, author) for p in one_page["results"]]
    assert one_page["next"].startswith(f"{api_url}/users/{uid}/posts?") and two_page["next"].startswith(
        f"{v2_url}/users/{uid}/posts?")
    rest = ok(http.get(two_page["next"], timeout=10))["data"]
    assert [p["id"] for p in two_page["results"] + rest["results"]] == [second["id"], first["id"]]

    # A search page's authors are many users (read at once, one query per shard).
    other = new_user(name="Grace Hopper")
    ok(http.post(f"{api_url}/users/{other['id']}/posts", json={"title": f"third {term}"}, timeout=10), 201)
    authors = {uid: author, other["id"]: {"id": other["id"], "username": other["username"], "name": "Grace Hopper"}}
    one_found = ok(http.get(f"{api_url}/search/posts", params={"q": term}, timeout=30))["data"]["results"]
    two_found = ok(http.get(f"{v2_url}/search/posts", params={"q": term}, timeout=30))["data"]["results"]
    assert len(one_found) == 3 and two_found == [v1_as_v2_post(p, authors[p["user_id"]]) for p in one_found]
    assert list(two_found[0]) == V2_POST_KEYS + ["rank"]

    profile = ok(http.get(f"{v2_url}/users/{uid}?view=profile", timeout=10))["data"]
    assert profile["user"]["created_at"] == ms(one["data"]["created_at"])
    assert [p["author"] for p in profile["latest_posts"]] == [{**author}] * 2
    assert all(isinstance(p["created_at"], int) and "user_id" not in p for p in profile["latest_posts"])

    users = ok(http.get(f"{v2_url}/users?limit=3", timeout=10))["data"]
    assert users["results"] and all(isinstance(u["updated_at"], int) for u in users["results"])
    assert users["next"].startswith(f"{v2_url}/users?")


def test_the_schema_serializers_describe_what_v2_sends(http, v2_url, new_user):
    from api.views.v2 import PostV2Serializer, UserV2Serializer
    user = new_user()
    post = ok(http.post(f"{v2_url}/users/{user['id']}/posts", json={"title": "t"}, timeout=10), 201)["data"]
    got = ok(http.get(f"{v2_url}/users/{user['id']}", timeout=10))["data"]
    assert list(got) == [name for name, f in UserV2Serializer().fields.items() if not f.write_only]
    assert list(post) == list(PostV2Serializer().fields) == V2_POST_KEYS


def test_etags_differ_between_versions_and_each_answers_its_own_if_none_match(http, api_url, v2_url, new_user):
    uid = new_user()["id"]
    for path in (f"/users/{uid}", f"/users/{uid}/posts", "/users?limit=2"):
        one, two = http.get(api_url + path, timeout=10), http.get(v2_url + path, timeout=10)
        tag1, tag2 = one.headers["ETag"], two.headers["ETag"]
        assert tag1 != tag2 and tag2.startswith('"v2-'), (path, tag1, tag2)
        again = http.get(v2_url + path, headers={"If-None-Match": tag2}, timeout=10)
        assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == tag2
        # A v1 tag names another representation: v2 answers in full, and so does v1 for a v2 tag.
        assert http.get(v2_url + path, headers={"If-None-Match": tag1}, timeout=10).status_code == 200
        assert http.get(api_url + path, headers={"If-None-Match": tag2}, timeout=10).status_code == 200
        head = http.head(v2_url + path, timeout=10)
        assert head.status_code == 200 and head.headers["ETag"] == tag2
    # The case where only the mark keeps them apart: an empty page is the same `data` in both.
    assert ok(http.get(f"{v2_url}/users/{uid}/posts", timeout=10))["data"] == {"results": [], "next": None}


def test_v2_takes_since_and_until_in_milliseconds(http, api_url, v2_url, new_user):
    uid = new_user()["id"]
    older = ok(http.post(f"{v2_url}/users/{uid}/posts", json={"title": "older"}, timeout=10), 201)["data"]
    time.sleep(0.005)
    newer = ok(http.post(f"{v2_url}/users/{uid}/posts", json={"title": "newer"}, timeout=10), 201)["data"]
    assert newer["created_at"] > older["created_at"]

    def ids(**params):
        return [p["id"] for p in ok(http.get(f"{v2_url}/users/{uid}/posts", params=params, timeout=10))["data"]["results"]]

    # `until` takes in its whole millisecond: a post's own created_at finds that post.
    assert ids(until=older["created_at"]) == [older["id"]]
    assert ids(since=newer["created_at"]) == [newer["id"]]
    assert ids(since=newer["created_at"] + 1) == []
    assert ids(since=older["created_at"], until=newer["created_at"]) == [newer["id"], older["id"]]
    assert ids(until="2000-01-01T00:00:00Z") == []  # RFC 3339 still works
    assert ids(since=0, limit=1) == [newer["id"]]
    for bad in ("99999999999999999", "253402300800000", "-5", "1e3", "٣"):
        assert_problem(http.get(f"{v2_url}/users/{uid}/posts", params={"since": bad}, timeout=10), 400, "since")
    assert_problem(http.get(f"{v2_url}/users/{uid}/posts", params={"until": "1", "since": "2"}, timeout=10),
                   400, "since")
    # v1 is unchanged: a number is not a date-time there.
    assert_problem(http.get(f"{api_url}/users/{uid}/posts", params={"since": older["created_at"]}, timeout=10),
                   400, "since")


def test_v2_never_embeds_a_stale_author_with_the_cache_on(topology_admin, http, api_url, v2_url, new_user):
    """Only v1's form is cached; v2 reads each author through the user's own entry, which a rename
    invalidates on every app server (and the L1's, by pub/sub)."""
    use(topology_admin, {"max_lag_ms": 0, "cache": {"mode": "cache-aside", "l1": True}})
    user, bystander = new_user(name="Before"), new_user(name="Bystander")
    uid, term = user["id"], word()
    post = ok(http.post(f"{api_url}/users/{uid}/posts", json={"title": term}, timeout=10), 201)["data"]
    ok(http.post(f"{api_url}/users/{bystander['id']}/posts", json={"title": f"{term} too"}, timeout=10), 201)
    urls = [f"{v2_url}/users/{uid}/posts", f"{v2_url}/users/{uid}/posts/{post['id']}",
            f"{v2_url}/search/posts?q={term}", f"{v2_url}/users/{uid}?view=profile"]
    page = urls[0]

    def author_names():
        names = set()
        for url in urls:
            data = ok(http.get(url, timeout=10))["data"]
            posts = data.get("results", data.get("latest_posts", [data]))
            names |= {p["author"]["name"] for p in posts}
        return names - {"Bystander"}

    # Warm: the page from the cache, and the user's entry filled by v2's author lookup, in v1's form.
    wait_for(lambda: http.get(page, timeout=10).headers["X-Cache"] in ("hit", "hit-l1"), timeout=10,
             what="the v2 page served from the cache")
    v1_user = http.get(f"{api_url}/users/{uid}", timeout=10)
    assert v1_user.headers["X-Cache"] in ("hit", "hit-l1") and ok(v1_user)["data"]["created_at"].endswith("Z")
    assert author_names() == {"Before"}

    renamed = ok(http.patch(f"{api_url}/users/{uid}", json={"name": "After"}, timeout=10))["data"]
    assert renamed["name"] == "After"
    for _ in range(4):  # right away, on both app servers: never the old name
        assert author_names() == {"After"}
    # Once the write's tombstone has gone, the page and the author come from the cache again.
    wait_for(lambda: http.get(page, timeout=10).headers["X-Cache"] in ("hit", "hit-l1"), timeout=10,
             what="the v2 page served from the cache after the rename")
    for _ in range(4):
        response = http.get(page, timeout=10)
        assert response.headers["X-Cache"] in ("hit", "hit-l1")
        assert {p["author"]["name"] for p in ok(response)["data"]["results"]} == {"After"}
    # A deleted author's posts are gone with it: v2 answers 404 like v1.
    assert http.delete(f"{api_url}/users/{uid}", timeout=10).status_code == 204
    assert_problem(http.get(urls[1], timeout=10), 404, "post_id")


def test_v1_deprecation_headers_only_when_the_topology_says_so(topology_admin, http, api_url, v2_url, new_user,
                                                               stack):
    uid = new_user()["id"]
    base = stack["api_url"]
    v1_answers = lambda: [  # noqa: E731 - a 200, a 201, a 404 and a 400, on both app servers
        http.get(f"{api_url}/users/{uid}", timeout=10), http.get(f"{api_url}/users/{uid}/posts", timeout=10),
        http.post(f"{api_url}/users/{uid}/posts", json={"title": "t"}, timeout=10),
        http.get(f"{api_url}/users/0", timeout=10), http.get(f"{api_url}/search/posts?q=", timeout=30),
        http.get(f"{api_url}/users/{uid}", timeout=10)]
    headers = ("Deprecation", "Sunset", "Link")
    use(topology_admin, {})
    for response in v1_answers():
        assert not any(h in response.headers for h in headers), response.headers

    use(topology_admin, {"versioning": {"v1_deprecation": "2026-01-01T00:00:00+01:00"}})
    answers = v1_answers()
    assert [r.status_code for r in answers] == [200, 200, 201, 404, 400, 200]
    assert {r.headers["X-App-Server"] for r in answers} == {"app-1", "app-2"}
    for response in answers:
        assert response.headers["Deprecation"] == "@1767222000"  # 2025-12-31T23:00:00Z
        assert "Sunset" not in response.headers
    assert answers[0].headers["Link"] == (f'<{base}/api/v2/users/{uid}>; rel="successor-version", '
                                          f'<{base}/api/docs>; rel="deprecation"; type="text/html"')
    assert answers[3].headers["Link"].startswith(f"<{base}/api/v2/users/0>;")
    # Not on v2, and not on v1's admin routes, which have no v2.
    for response in (http.get(f"{v2_url}/users/{uid}", timeout=10), http.get(f"{v2_url}/users/0", timeout=10),
                     topology_admin.get()):
        assert not any(h in response.headers for h in headers), response.headers

    data = ok(topology_admin.patch({"versioning": {"v1_sunset": 1798761599}}))["data"]
    assert data["topology"]["versioning"] == {"v1_deprecation": "2025-12-31T23:00:00Z",
                                              "v1_sunset": "2026-12-31T23:59:59Z"}
    time.sleep(topology.REFRESH_S + 0.2)
    for response in v1_answers():
        assert response.headers["Sunset"] == "Thu, 31 Dec 2026 23:59:59 GMT"
        assert response.headers["Deprecation"] == "@1767222000"

    # Refused, naming the field, changing nothing: a sunset before the deprecation, a bad date.
    before = topology_admin.data()
    assert_problem(topology_admin.patch({"versioning": {"v1_sunset": "2025-06-01T00:00:00Z"}}), 400,
                   "versioning.v1_sunset")
    assert_problem(topology_admin.patch({"versioning": {"v1_deprecation": "2026-01-01", "v1_sunset": True}}), 400,
                   "versioning.v1_deprecation", "versioning.v1_sunset")
    assert topology_admin.data()["version"] == before["version"]

    # Off again through the CLI (`null` clears a date).
    cli = subprocess.run([sys.executable, "manage.py", "topology", "set", "versioning.v1_sunset=null",
                          "versioning.v1_deprecation=null"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env=dict(os.environ))
    assert cli.returncode == 0, cli.stderr
    assert topology_admin.data()["topology"]["versioning"] == {"v1_deprecation": None, "v1_sunset": None}
    time.sleep(topology.REFRESH_S + 0.2)
    for response in v1_answers():
        assert not any(h in response.headers for h in headers), response.headers


@pytest.mark.parametrize("method,path,status,field", [
    ("GET", "/users/{ghost}", 404, "user_id"),
    ("GET", "/users/{user}/posts/1", 404, "post_id"),
    ("GET", "/users/{user}/posts?limit=0", 400, "limit"),
    ("GET", "/users/{user}/posts?since=yesterday", 400, "since"),
    ("GET", "/users/{user}/posts?sort=new", 400, "sort"),
    ("GET", "/users/{user}?view=everything", 400, "view"),
    ("GET", "/search/posts", 400, "q"),
    ("POST", "/users/{user}/posts", 400, "title"),
    ("PATCH", "/users/{user}", 400, "username"),
])
def test_v2_errors_are_the_same_problems(http, v2_url, member, method, path, status, field):
    uid = member["id"]
    body = {"POST": {"title": ""}, "PATCH": {"username": "x_y_z"}}.get(method)
    response = http.request(method, v2_url + path.format(user=uid, ghost=int(uid) + 1), json=body, timeout=30)
    assert_problem(response, status, field)
    assert "Deprecation" not in response.headers


def test_v2_refuses_bad_bodies_and_unknown_routes_with_problems(http, v2_url, stack, member):
    url = f"{v2_url}/users/{member['id']}"
    assert_problem(http.patch(url, data=b'{"bio": ', headers={"Content-Type": "application/json"}, timeout=10),
                   400, "(body)")
    assert_problem(http.patch(url, data=b'{"bio": "a", "bio": "b"}', headers={"Content-Type": "application/json"},
                              timeout=10), 400, "bio")
    assert_problem(http.patch(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=10),
                   415, "Content-Type")
    assert_problem(http.post(f"{v2_url}/users", json={"bio": "b" * 70_000}, timeout=10), 413, "(body)")
    for path in ("/nothing", "/admin/topology", "/users/1/posts/1/comments"):
        response = http.get(v2_url + path, timeout=10)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
    response = http.delete(f"{v2_url}/users", timeout=10)
    assert response.status_code == 405 and response.headers["Content-Type"] == "application/problem+json"
    assert http.get(f"{stack['api_url']}/api/v3/users", timeout=10).status_code == 404


def test_the_schema_documents_both_versions_without_warnings(stack):
    built = subprocess.run([sys.executable, "manage.py", "spectacular", "--fail-on-warn", "--validate",
                            "--file", os.devnull], cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env=dict(os.environ))
    assert built.returncode == 0, built.stderr[-2000:]  # --fail-on-warn: a warning fails it
    schema = yaml.safe_load(requests.get(stack["api_url"] + "/api/schema", timeout=30).text)
    paths = schema["paths"]
    for route in ("/users", "/users/{user_id}", "/users/{user_id}/posts", "/users/{user_id}/posts/{post_id}",
                  "/search/posts", "/users/{user_id}/avatar"):
        assert f"/api/v1{route}" in paths and f"/api/v2{route}" in paths, route
    assert not any(p.startswith("/api/v2/admin") for p in paths)
    ids = [op["operationId"] for item in paths.values() for op in item.values() if isinstance(op, dict)]
    assert len(ids) == len(set(ids))
    v2_ops = [op for p, item in paths.items() if p.startswith("/api/v2/") for op in item.values()]
    assert v2_ops and all(op["operationId"].startswith("v2_") and op["tags"] == ["v2"] for op in v2_ops)
    def ok_schema(path, method, code="200"):  # the shape of the envelope's `data` (api/gateway/openapi_contract.py)
        data = paths[path][method]["responses"][code]["content"]["application/json"]["schema"]["properties"]["data"]
        return data.get("oneOf", [data])[0]["$ref"].rsplit("/", 1)[1]
    assert ok_schema("/api/v1/users/{user_id}/posts", "get") == "PostPage"
    assert ok_schema("/api/v2/users/{user_id}/posts", "get") == "PostPageV2"
    assert ok_schema("/api/v2/users/{user_id}", "get") == "UserV2"
    assert ok_schema("/api/v2/users/{user_id}/posts", "post", "201") == "PostV2"
    assert ok_schema("/api/v2/search/posts", "get") == "PostSearchPageV2"
    post = schema["components"]["schemas"]["PostV2"]["properties"]
    assert list(post) == V2_POST_KEYS and post["created_at"]["type"] == "integer"
    assert schema["components"]["schemas"]["Post"]["properties"]["created_at"]["format"] == "date-time"
    # v1's lifecycle headers are documented where they can appear: v1 routes v2 also serves.
    lifecycle = {"Deprecation", "Sunset", "Link"}
    assert lifecycle <= set(paths["/api/v1/users/{user_id}"]["get"]["responses"]["200"]["headers"])
    assert lifecycle <= set(paths["/api/v1/search/posts"]["get"]["responses"]["200"]["headers"])
    assert not lifecycle & set(paths["/api/v2/users/{user_id}"]["get"]["responses"]["200"].get("headers", {}))
    assert not lifecycle & set(paths["/api/v1/admin/topology"]["get"]["responses"]["200"].get("headers", {}))


# --- the transformation alone (pure) ------------------------------------------------------------------
def test_to_v2_is_pure_and_keeps_everything_else():
    from api import versioning
    author = {"id": "7", "username": "ada", "name": "Ada"}
    v1_post = {"id": "9", "user_id": "7", "title": "t", "body": "", "created_at": "1970-01-01T00:00:01.999999Z",
               "updated_at": "2026-01-31T12:00:00.000500Z", "rank": 0.5}
    v2_post = versioning.to_v2("post", v1_post, {"7": author})
    assert v2_post == {"id": "9", "author": author, "title": "t", "body": "", "created_at": 1999,
                       "updated_at": 1769860800000, "rank": 0.5}
    assert list(v2_post) == ["id", "author", "title", "body", "created_at", "updated_at", "rank"]
    assert versioning.to_v2("post_page", {"results": [], "next": None}, {}) == {"results": [], "next": None}
    with pytest.raises(ValueError):
        versioning.to_v2("comment", {}, {})
    assert versioning.etag({"a": 1}) != versioning.etag_for({"a": 1})


def test_a_v2_view_must_name_a_shape_for_every_handler():
    from django.core.exceptions import ImproperlyConfigured

    from api.views import v1, v2
    with pytest.raises(ImproperlyConfigured, match="put"):
        v2.twin(v1.PostDetailView, {"get": "post", "patch": "post", "delete": None})
    with pytest.raises(ImproperlyConfigured, match="unknown shape"):
        v2.twin(v1.PostListView, {"get": "posts", "post": "post"})
