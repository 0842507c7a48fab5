"""GET/PUT /api/v1/me/workspace/{kind} on the real test stack: each member reads and writes only their
own documents (the token says whose, the path cannot), versions refuse a blind overwrite, and bad
input is a problem naming the field."""
import requests

from api.workspace import MAX_BYTES
from conftest import ANONYMOUS, assert_problem

PASSWORD = "correct-horse"  # conftest.sign_up's


def member(new_user, api_url) -> dict:
    """A new member with an access token got by signing in, as the dashboard does."""
    user = new_user()
    tokens = requests.post(f"{api_url}/auth/token", json={"username": user["username"], "password": PASSWORD},
                           headers=ANONYMOUS, timeout=30)
    assert tokens.status_code == 200, tokens.text
    return {**user, "headers": {"Authorization": f"Bearer {tokens.json()['data']['access']}"}}


def test_members_see_only_their_own_workspace(new_user, api_url):
    a, b = member(new_user, api_url), member(new_user, api_url)
    url = f"{api_url}/me/workspace/notes"

    empty = requests.get(url, headers=b["headers"], timeout=10)
    assert empty.status_code == 200 and empty.headers["Cache-Control"] == "private, no-cache"
    assert empty.json()["data"] == {"kind": "notes", "data": {}, "version": 0, "updated_at": None}

    saved = requests.put(url, json={"data": {"phases": {"clarify": "A's notes"}}}, headers=a["headers"], timeout=10)
    assert saved.status_code == 200, saved.text
    assert saved.json()["data"]["version"] == 1 and saved.json()["data"]["updated_at"]
    assert requests.get(url, headers=b["headers"], timeout=10).json()["data"]["version"] == 0  # not A's

    requests.put(url, json={"data": {"phases": {"clarify": "B's notes"}}}, headers=b["headers"], timeout=10)
    assert requests.get(url, headers=a["headers"], timeout=10).json()["data"]["data"] == {
        "phases": {"clarify": "A's notes"}}
    assert requests.get(url, headers=b["headers"], timeout=10).json()["data"]["data"] == {
        "phases": {"clarify": "B's notes"}}
    # Another kind is another document.
    assert requests.get(f"{api_url}/me/workspace/clarify", headers=a["headers"], timeout=10).json()["data"]["version"] == 0

    # Nothing names another member: no user id in the path, and the query and other headers change nothing.
    sneaky = requests.get(url, params={"user_id": b["id"]}, headers={**a["headers"], "X-User-Id": b["id"]}, timeout=10)
    assert sneaky.json()["data"]["data"] == {"phases": {"clarify": "A's notes"}}
    for path in (f"/users/{b['id']}/workspace/notes", f"/me/workspace/notes/{b['id']}"):
        assert_problem(requests.get(api_url + path, headers=a["headers"], timeout=10), 404)

    assert_problem(requests.get(url, headers=ANONYMOUS, timeout=10), 401, "Authorization")
    assert_problem(requests.put(url, json={"data": {}}, headers=ANONYMOUS, timeout=10), 401, "Authorization")
    assert_problem(requests.get(url, timeout=10), 403, "Authorization")  # the operator's token: no account


def test_a_stale_version_is_refused_and_a_304_saves_the_body(new_user, api_url):
    a = member(new_user, api_url)
    url = f"{api_url}/me/workspace/clarify"
    first = requests.put(url, json={"data": {"qps_avg": 10}, "version": 0}, headers=a["headers"], timeout=10)
    assert first.json()["data"]["version"] == 1
    second = requests.put(url, json={"data": {"qps_avg": 20}, "version": 1}, headers=a["headers"], timeout=10)
    assert second.json()["data"]["version"] == 2
    stale = requests.put(url, json={"data": {"qps_avg": 30}, "version": 1}, headers=a["headers"], timeout=10)
    assert_problem(stale, 409, "version")
    assert "version 2" in stale.json()["detail"]
    assert_problem(requests.put(url, json={"data": {}, "version": 0}, headers=a["headers"], timeout=10), 409, "version")
    got = requests.get(url, headers=a["headers"], timeout=10)
    assert got.json()["data"]["data"] == {"qps_avg": 20}
    assert requests.get(url, headers={**a["headers"], "If-None-Match": got.headers["ETag"]},
                        timeout=10).status_code == 304
    blind = requests.put(url, json={"data": {"qps_avg": 40}}, headers=a["headers"], timeout=10)
    assert blind.json()["data"]["version"] == 3 and blind.json()["data"]["data"] == {"qps_avg": 40}


def test_bad_input_gets_a_problem_naming_the_field(new_user, api_url):
    a = member(new_user, api_url)
    url = f"{api_url}/me/workspace/notes"
    h = a["headers"]

    def put(body, path=url):
        return requests.put(path, json=body, headers=h, timeout=10)

    assert_problem(put({"data": ["not", "an", "object"]}), 400, "data")
    assert_problem(put({"data": "text"}), 400, "data")
    assert_problem(put({}), 400, "data")
    assert_problem(put({"data": {}, "owner": "someone"}), 400, "owner")
    assert_problem(put({"data": {}, "version": -1}), 400, "version")
    assert_problem(put({"data": {}, "version": "one"}), 400, "version")
    assert_problem(put({"data": {"phases": {"clarify": "a\x00b"}}}), 400, "data.phases.clarify")
    assert_problem(put({"data": {"a\x00": 1}}), 400, "data")
    big = put({"data": {"text": "x" * (MAX_BYTES + 1)}})  # under the gateway's 64 KiB, over the workspace's cap
    assert_problem(big, 400, "data")
    assert f"{MAX_BYTES:,}" in big.json()["detail"]
    assert_problem(put({"data": {"text": "x" * 70_000}}), 413, "(body)")  # the gateway's limit
    assert_problem(put({"data": {}}, f"{api_url}/me/workspace/diary"), 404, "kind")
    assert_problem(requests.get(f"{api_url}/me/workspace/diary", headers=h, timeout=10), 404, "kind")
    assert requests.get(url, headers=h, timeout=10).json()["data"]["version"] == 0  # none of it was stored


def test_a_deleted_accounts_workspace_goes_with_it(new_user, api_url):
    a = member(new_user, api_url)
    url = f"{api_url}/me/workspace/estimate"
    assert requests.put(url, json={"data": {"servers": 3}}, headers=a["headers"], timeout=10).status_code == 200
    deleted = requests.delete(f"{api_url}/users/{a['id']}", headers=a["headers"], timeout=30)
    assert deleted.status_code == 204, deleted.text
    # The access token stays valid until it expires (api/gateway/auth.py); the workspace is gone all the same.
    assert requests.get(url, headers=a["headers"], timeout=10).json()["data"]["version"] == 0
    assert_problem(requests.put(url, json={"data": {}}, headers=a["headers"], timeout=10), 403, "Authorization")


def test_the_schema_documents_the_workspace():
    from drf_spectacular.generators import SchemaGenerator
    item = SchemaGenerator().get_schema(request=None, public=True)["paths"]["/api/v1/me/workspace/{kind}"]
    assert item["get"]["security"] == [{"jwt": []}, {"oauth2": ["read"]}]  # a token even to read
    assert item["put"]["security"] == [{"jwt": []}, {"oauth2": ["write"]}]
    assert {"200", "304", "401", "403", "404"} <= set(item["get"]["responses"])
    assert {"200", "400", "401", "403", "404", "409", "413"} <= set(item["put"]["responses"])
    assert set(item["get"]["parameters"][0]["schema"]["enum"]) == {"notes", "clarify", "estimate", "baseline"}
