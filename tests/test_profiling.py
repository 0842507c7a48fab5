"""On-demand profiling (api/profiling.py) on the real stack: an admin's request with
X-Workbench-Profile runs under pyinstrument and names its stored profile in X-Profile-Id; the
profile shows the view that served it; a member's header is ignored."""
import requests

from api.gateway import auth
from conftest import assert_problem

PROFILE = {"X-Workbench-Profile": "1"}


def test_an_admin_profiles_one_request(api_url, http):
    response = http.get(f"{api_url}/users?limit=50", headers=PROFILE, timeout=30)
    assert response.status_code == 200
    profile_id = response.headers["X-Profile-Id"]

    listed = http.get(f"{api_url}/admin/profiles", timeout=10).json()["data"]
    newest = listed["profiles"][0]
    assert newest["id"] == profile_id and newest["route"] == "api/v1/users" and newest["status"] == 200
    assert newest["request_id"] == response.headers["X-Request-Id"]
    assert newest["app_server"] == response.headers["X-App-Server"]
    assert "text" not in newest  # the list is light

    profile = http.get(f"{api_url}/admin/profiles/{profile_id}", timeout=10).json()["data"]
    assert profile["samples"] > 0 and profile["duration_ms"] > 0
    # The view that served it is in the call tree: UserListView.get, in api/views/v1.py.
    assert "UserListView" in profile["text"] and "v1.py" in profile["text"], profile["text"]
    assert profile["top_frames"] and {"function", "file", "self_ms"} <= set(profile["top_frames"][0])


def test_a_members_profile_header_is_ignored(api_url, new_user):
    member = {"Authorization": f"Bearer {auth.access_token(int(new_user()['id']), 'member')}", **PROFILE}
    response = requests.get(f"{api_url}/users?limit=5", headers=member, timeout=30)
    assert response.status_code == 200
    assert "X-Profile-Id" not in response.headers
    assert_problem(requests.get(f"{api_url}/admin/profiles", headers=member, timeout=10), 403, "Authorization")


def test_bad_profile_ids_are_problems(api_url, http):
    assert_problem(http.get(f"{api_url}/admin/profiles/xyz", timeout=10), 400, "profile_id")
    assert_problem(http.get(f"{api_url}/admin/profiles/0123456789abcdef", timeout=10), 404, "profile_id")
    assert_problem(http.get(f"{api_url}/admin/profiles", params={"limit": "1"}, timeout=10), 400, "limit")
