"""The users endpoints over HTTP, through Caddy, against the real stack."""
import os
import time
from datetime import datetime

import pytest

from conftest import assert_problem, sign_up

USER_FIELDS = {"id", "username", "email", "name", "bio", "post_count", "created_at", "updated_at"}


def unique_name(tag: str = "u") -> str:
    return f"{tag}{os.getpid() % 1000}_{time.monotonic_ns() % 10**12}"[:30]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


def get_user(http, api_url, user_id):
    response = http.get(f"{api_url}/users/{user_id}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["data"]


def walk(http, url, max_pages=1000):
    """Follow `next` to the end; returns (rows, pages)."""
    rows, pages = [], []
    while url:
        response = http.get(url, timeout=30)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert set(data) == {"results", "next"}
        rows += data["results"]
        pages.append(data)
        url = data["next"]
        assert len(pages) <= max_pages, "pagination does not end"
    return rows, pages


# --- sign-up --------------------------------------------------------------------------------------

def test_sign_up_returns_201_the_user_and_never_the_password(http, api_url):
    name = unique_name()
    body = {"username": name, "email": f"{name}@Example.ORG", "password": "correct-horse",
            "name": "Ada Lovelace", "bio": "Analyst."}
    response = http.post(f"{api_url}/users", json=body, timeout=30)
    assert response.status_code == 201, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    envelope = response.json()
    assert set(envelope) == {"data", "meta"}
    assert set(envelope["meta"]) == {"timestamp", "version", "request_id"}
    user = envelope["data"]
    assert set(user) == USER_FIELDS
    assert "password" not in response.text and "correct-horse" not in response.text
    assert isinstance(user["id"], str) and user["id"].isdigit() and int(user["id"]) < 2**63
    assert user["username"] == name
    assert user["email"] == f"{name}@example.org"  # emails are stored lower-cased
    assert (user["name"], user["bio"], user["post_count"]) == ("Ada Lovelace", "Analyst.", 0)
    assert user["created_at"] == user["updated_at"]
    assert response.headers["Location"].endswith(f"/api/v1/users/{user['id']}")

    fetched = http.get(f"{api_url}/users/{user['id']}", timeout=10)
    assert fetched.status_code == 200
    assert fetched.json()["data"] == user
    assert "password" not in fetched.json()["data"]


def test_sign_up_defaults_name_and_bio_to_empty(http, api_url):
    user = sign_up(http, api_url, unique_name())
    assert (user["name"], user["bio"]) == ("", "")


def test_ids_are_time_ordered(http, api_url, new_user):
    first, second = new_user(), new_user()
    assert int(second["id"]) > int(first["id"])


def test_identical_retry_of_a_completed_sign_up_returns_the_same_user(http, api_url):
    name = unique_name("r")
    body = {"username": name, "email": f"{name}@example.org", "password": "correct-horse"}
    first = http.post(f"{api_url}/users", json=body, timeout=30)
    assert first.status_code == 201, first.text
    retry = http.post(f"{api_url}/users", json=body, timeout=30)
    assert retry.status_code == 200, retry.text
    assert retry.json()["data"]["id"] == first.json()["data"]["id"]
    assert retry.json()["data"]["username"] == name
    assert "password" not in retry.json()["data"]
    assert retry.headers["Location"] == first.headers["Location"]

    # Exactly one user with that name in the whole list.
    rows, _ = walk(http, f"{api_url}/users?limit=100")
    assert [row["id"] for row in rows if row["username"] == name] == [first.json()["data"]["id"]]

    # The same username and email with another password is not a retry: a conflict.
    other = http.post(f"{api_url}/users", json={**body, "password": "another-horse"}, timeout=30)
    assert_problem(other, 409, "username")


# --- reads and lists ------------------------------------------------------------------------------

def test_get_one_user(http, api_url, new_user):
    user = new_user(name="Grace", bio="COBOL")
    assert get_user(http, api_url, user["id"]) == user


def test_list_default_limit_is_20_and_max_is_100(http, api_url):
    default = http.get(f"{api_url}/users", timeout=10)
    assert default.status_code == 200
    assert len(default.json()["data"]["results"]) == 20
    assert default.json()["data"]["next"]
    full = http.get(f"{api_url}/users?limit=100", timeout=10)
    assert full.status_code == 200
    assert len(full.json()["data"]["results"]) == 100
    one = http.get(f"{api_url}/users?limit=1", timeout=10)
    assert len(one.json()["data"]["results"]) == 1
    for bad in ("0", "101"):
        assert_problem(http.get(f"{api_url}/users?limit={bad}", timeout=10), 400, "limit")


def test_list_walks_to_the_end_in_id_order_without_duplicates(http, api_url, new_user):
    mine = [new_user()["id"] for _ in range(3)]
    rows, pages = walk(http, f"{api_url}/users?limit=100")
    ids = [int(row["id"]) for row in rows]
    assert len(ids) == len(set(ids)), "a user appears twice"
    assert ids == sorted(ids), "users are not ordered by id"
    assert all(set(row) == USER_FIELDS for row in rows)
    assert all(isinstance(row["id"], str) for row in rows)
    assert "password" not in str(rows)
    assert set(map(int, mine)) <= set(ids)
    assert len(ids) >= 300  # the seed
    assert pages[-1]["next"] is None
    assert all(len(page["results"]) == 100 for page in pages[:-1])
    assert all("limit=100" in page["next"] for page in pages[:-1])

    # The default page size walks the very same list, 20 at a time.
    small_rows, small_pages = walk(http, f"{api_url}/users")
    assert [int(row["id"]) for row in small_rows] == ids
    assert all(len(page["results"]) == 20 for page in small_pages[:-1])
    assert 1 <= len(small_pages[-1]["results"]) <= 20
    assert small_pages[-1]["next"] is None


def test_a_user_created_after_a_page_was_read_shows_on_a_later_page(http, api_url, new_user):
    first = http.get(f"{api_url}/users?limit=5", timeout=10).json()["data"]
    late = new_user()
    rows, _ = walk(http, first["next"].replace("limit=5", "limit=100"))
    ids = [row["id"] for row in first["results"] + rows]
    assert late["id"] in ids
    assert len(ids) == len(set(ids))


# --- updates --------------------------------------------------------------------------------------

def test_put_replaces_email_name_and_bio(http, api_url, new_user):
    user = new_user(name="Old", bio="old bio")
    new_email = f"new_{user['username']}@example.net"
    response = http.put(f"{api_url}/users/{user['id']}",
                        json={"email": new_email.upper(), "name": "New", "bio": "new bio"}, timeout=30)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert (data["email"], data["name"], data["bio"]) == (new_email, "New", "new bio")
    assert (data["id"], data["username"], data["created_at"]) == (user["id"], user["username"], user["created_at"])
    assert ts(data["updated_at"]) > ts(user["updated_at"])
    assert get_user(http, api_url, user["id"]) == data

    # The old email is free again; the new one is taken.
    sign_up(http, api_url, unique_name("o"), email=user["email"])
    taken = http.post(f"{api_url}/users", json={"username": unique_name("t"), "email": new_email,
                                                 "password": "correct-horse"}, timeout=30)
    assert_problem(taken, 409, "email")


def test_put_needs_every_field(http, api_url, new_user):
    user = new_user(name="Kept")
    response = http.put(f"{api_url}/users/{user['id']}", json={"name": "Changed"}, timeout=10)
    assert_problem(response, 400, "email", "bio")
    assert get_user(http, api_url, user["id"]) == user


@pytest.mark.parametrize("change", [{"bio": "only the bio"}, {"name": "only the name"},
                                    {"email": "PLACEHOLDER"}, {"name": "", "bio": ""}])
def test_patch_changes_only_what_it_is_given(http, api_url, new_user, change):
    user = new_user(name="Name", bio="Bio")
    if change.get("email") == "PLACEHOLDER":
        change = {"email": f"patched_{user['username']}@example.com"}
    response = http.patch(f"{api_url}/users/{user['id']}", json=change, timeout=30)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    expected = {**user, **change}
    for key in ("id", "username", "email", "name", "bio", "post_count", "created_at"):
        assert data[key] == expected[key], key
    assert ts(data["updated_at"]) >= ts(user["updated_at"])
    assert get_user(http, api_url, user["id"]) == data


def test_patch_with_the_same_email_is_fine(http, api_url, new_user):
    user = new_user()
    response = http.patch(f"{api_url}/users/{user['id']}", json={"email": user["email"]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["email"] == user["email"]


@pytest.mark.parametrize("method", ["put", "patch"])
def test_username_cannot_be_changed(http, api_url, new_user, method):
    user = new_user()
    body = {"username": unique_name("x")}
    if method == "put":
        body.update(email=user["email"], name="n", bio="b")
    response = getattr(http, method)(f"{api_url}/users/{user['id']}", json=body, timeout=10)
    assert_problem(response, 400, "username")
    assert get_user(http, api_url, user["id"]) == user
    # The username that was asked for was not reserved either.
    sign_up(http, api_url, body["username"])


def test_email_conflicts_give_409_naming_email(http, api_url, new_user):
    first, second = new_user(), new_user()
    response = http.post(f"{api_url}/users", json={"username": unique_name("c"), "email": first["email"].upper(),
                                                    "password": "correct-horse"}, timeout=30)
    assert_problem(response, 409, "email")
    assert response.json()["type"].endswith("conflict")

    patch = http.patch(f"{api_url}/users/{second['id']}", json={"email": first["email"]}, timeout=30)
    assert_problem(patch, 409, "email")
    put = http.put(f"{api_url}/users/{second['id']}",
                   json={"email": first["email"], "name": "x", "bio": "y"}, timeout=30)
    assert_problem(put, 409, "email")
    assert get_user(http, api_url, second["id"]) == second
    assert get_user(http, api_url, first["id"]) == first


def test_username_conflict_gives_409_naming_username_and_reserves_nothing(http, api_url, new_user):
    first = new_user()
    spare = f"spare_{first['username']}@example.org"
    response = http.post(f"{api_url}/users", json={"username": first["username"], "email": spare,
                                                    "password": "correct-horse"}, timeout=30)
    assert_problem(response, 409, "username")
    # The email of the failed sign-up is still free.
    assert sign_up(http, api_url, unique_name("s"), email=spare)["email"] == spare


# --- delete ---------------------------------------------------------------------------------------

def test_delete_then_404_and_the_username_and_email_are_free_again(http, api_url, new_user):
    user = new_user()
    post = http.post(f"{api_url}/users/{user['id']}/posts", json={"title": "doomed"}, timeout=10)
    assert post.status_code == 201
    response = http.delete(f"{api_url}/users/{user['id']}", timeout=30)
    assert response.status_code == 204, response.text
    assert response.content == b""

    assert_problem(http.get(f"{api_url}/users/{user['id']}", timeout=10), 404, "user_id")
    assert_problem(http.get(f"{api_url}/users/{user['id']}/posts", timeout=10), 404, "user_id")
    assert_problem(http.get(f"{api_url}/users/{user['id']}/posts/{post.json()['data']['id']}", timeout=10),
                   404, "post_id")
    assert_problem(http.delete(f"{api_url}/users/{user['id']}", timeout=10), 404, "user_id")
    assert_problem(http.patch(f"{api_url}/users/{user['id']}", json={"bio": "x"}, timeout=10), 404, "user_id")
    assert_problem(http.put(f"{api_url}/users/{user['id']}", json={"email": "z@example.org", "name": "", "bio": ""},
                            timeout=10), 404, "user_id")
    rows, _ = walk(http, f"{api_url}/users?limit=100")
    assert user["id"] not in {row["id"] for row in rows}

    again = sign_up(http, api_url, user["username"], email=user["email"])
    assert again["id"] != user["id"]
    assert again["post_count"] == 0
    assert http.get(f"{api_url}/users/{again['id']}/posts", timeout=10).json()["data"]["results"] == []
