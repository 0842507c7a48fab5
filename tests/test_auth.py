"""Authentication and authorization at the gateway (api/gateway/auth.py, rbac.py) on the real stack:
JWTs from the token endpoint and from mint-tokens, every way a token can be wrong (missing, expired,
tampered, unsigned, another algorithm), refresh, anonymous reads switched off, and an IDOR attempt
on every write route, in both API versions, by a member on another member's id; what moderators
and admins may do; only admins change the topology."""
import base64
import json
import os
import stat
import subprocess
import sys
from datetime import timedelta

import jwt
import psycopg
import pytest
import requests
from django.conf import settings

from conftest import ANONYMOUS, ROOT, assert_problem, wait_for
from test_avatars import image_bytes
from api.gateway import auth

PASSWORD = "correct-horse"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def token_of(user: dict, role: str = "member", **kw) -> str:
    return auth.access_token(int(user["id"]), role, **kw)


def set_role(stack_config, user: dict, role: str) -> None:
    with psycopg.connect(stack_config.meta_db_url, autocommit=True) as conn:
        conn.execute("UPDATE meta_account SET role = %s WHERE user_id = %s", (role, int(user["id"])))


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.fixture
def alice_and_bob(new_user, api_url):
    """Two members, Bob with a post."""
    alice, bob = new_user(), new_user()
    post = requests.post(f"{api_url}/users/{bob['id']}/posts", json={"title": "bob's", "body": "x"},
                         headers=bearer(token_of(bob)), timeout=10)
    assert post.status_code == 201, post.text
    return alice, bob, post.json()["data"]["id"]


# --- tokens ------------------------------------------------------------------------------------------
def test_password_for_tokens_then_write_as_yourself(new_user, api_url):
    user = new_user(password=PASSWORD)
    response = requests.post(f"{api_url}/auth/token", json={"username": user["username"], "password": PASSWORD},
                             headers=ANONYMOUS, timeout=30)
    assert response.status_code == 200, response.text
    tokens = response.json()["data"]
    assert tokens["token_type"] == "Bearer" and 0 < tokens["expires_in"] <= 15 * 60
    claims = jwt.decode(tokens["access"], options={"verify_signature": False})
    assert (claims["user_id"], claims["role"], claims["token_type"]) == (user["id"], "member", "access")
    patched = requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "mine"}, headers=bearer(tokens["access"]),
                             timeout=10)
    assert patched.status_code == 200 and patched.json()["data"]["bio"] == "mine"

    refreshed = requests.post(f"{api_url}/auth/token/refresh", json={"refresh": tokens["refresh"]},
                              headers=ANONYMOUS, timeout=10)
    assert refreshed.status_code == 200, refreshed.text
    assert requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "again"},
                          headers=bearer(refreshed.json()["data"]["access"]), timeout=10).status_code == 200
    # A deleted account's refresh token gets nothing more.
    assert requests.delete(f"{api_url}/users/{user['id']}", headers=bearer(tokens["access"]), timeout=10).status_code == 204
    assert_problem(requests.post(f"{api_url}/auth/token/refresh", json={"refresh": tokens["refresh"]},
                                 headers=ANONYMOUS, timeout=10), 401, "refresh")


@pytest.mark.parametrize("who", ["wrong password", "no such user", "bulk-seeded user (no password)"])
def test_bad_credentials_are_401_naming_both_fields(new_user, api_url, who):
    if who == "wrong password":
        username = new_user(password=PASSWORD)["username"]
    elif who == "no such user":
        username = "nobody_at_all_here"
    else:
        username = requests.get(f"{api_url}/users?limit=1", timeout=10).json()["data"]["results"][0]["username"]
    response = requests.post(f"{api_url}/auth/token", json={"username": username, "password": "not-it-at-all"},
                             headers=ANONYMOUS, timeout=30)
    assert_problem(response, 401, "username", "password")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_token_endpoint_validates_its_body(api_url):
    assert_problem(requests.post(f"{api_url}/auth/token", json={"username": "x"}, headers=ANONYMOUS, timeout=10),
                   400, "password")
    assert_problem(requests.post(f"{api_url}/auth/token/refresh", json={"refresh": "a.b.c"}, headers=ANONYMOUS,
                                 timeout=10), 401, "refresh")


def bad_tokens(user: dict) -> dict:
    good = token_of(user)
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    key = settings.SIMPLE_JWT["SIGNING_KEY"]
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return {
        "expired": token_of(user, lifetime=timedelta(seconds=-5)),
        "tampered payload": f"{header}.{flipped}.{signature}",
        "another user's id, old signature": f"{header}.{b64({**claims, 'user_id': '1'})}.{signature}",
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg HS512, same key": jwt.encode(claims, key, algorithm="HS512"),
        "signed with another key": jwt.encode(claims, "not the stack's key at all, not at all", algorithm="HS256"),
        "a refresh token": auth.tokens_for(int(user["id"]), "member")["refresh"],
        "not a JWT": "abc",
    }


@pytest.mark.parametrize("kind", list(bad_tokens({"id": "7"})))
def test_every_bad_token_is_401_on_writes_and_reads(new_user, api_url, kind):
    user = new_user()
    token = bad_tokens(user)[kind]
    write = requests.patch(f"{api_url}/users/{user['id']}", json={"bio": "x"}, headers=bearer(token), timeout=10)
    assert_problem(write, 401, "Authorization")
    assert 'error="invalid_token"' in write.headers["WWW-Authenticate"]
    # A read needs no token, but a bad one is still refused: the client must learn it is wrong.
    assert_problem(requests.get(f"{api_url}/users/{user['id']}", headers=bearer(token), timeout=10), 401,
                   "Authorization")


def test_writes_need_a_token_sign_up_does_not(new_user, api_url):
    user = new_user()
    for method, path, body in [("PATCH", f"/users/{user['id']}", {"bio": "x"}),
                               ("POST", f"/users/{user['id']}/posts", {"title": "t", "body": "b"}),
                               ("DELETE", f"/users/{user['id']}", None)]:
        response = requests.request(method, api_url + path, json=body, headers=ANONYMOUS, timeout=10)
        assert_problem(response, 401, "Authorization")
        assert response.headers["WWW-Authenticate"] == auth.CHALLENGE
    signed_up = requests.post(f"{api_url}/users", json={"username": f"anon_{user['username'][-20:]}",
                                                        "email": f"anon_{user['email']}", "password": PASSWORD},
                              headers=ANONYMOUS, timeout=30)
    assert signed_up.status_code == 201, signed_up.text
    assert requests.get(f"{api_url}/users/{user['id']}", headers=ANONYMOUS, timeout=10).status_code == 200


def test_anonymous_reads_can_be_switched_off(topology_admin, new_user, api_url):
    user = new_user()
    topology_admin.apply({"auth": {"anonymous_reads": False}})
    try:
        url = f"{api_url}/users/{user['id']}"
        wait_for(lambda: requests.get(url, headers=ANONYMOUS, timeout=10).status_code == 401, timeout=30,
                 what="anonymous reads refused on every worker")
        assert_problem(requests.get(f"{url}/posts", headers=ANONYMOUS, timeout=10), 401, "Authorization")
        assert requests.get(url, headers=bearer(token_of(user)), timeout=10).status_code == 200
        assert requests.get(api_url.rsplit("/api/", 1)[0] + "/healthz", headers=ANONYMOUS, timeout=10).status_code == 200
    finally:
        topology_admin.apply({"auth": {"anonymous_reads": True}})


# --- RBAC: every write route, both versions, a member on another member's id --------------------------
def write_routes(owner: str, post: str) -> list:
    return [("PUT", f"/users/{owner}", {"name": "taken", "bio": "over", "email": f"x{owner}@example.org"}, None),
            ("PATCH", f"/users/{owner}", {"bio": "taken over"}, None),
            ("DELETE", f"/users/{owner}", None, None),
            ("PUT", f"/users/{owner}/avatar", image_bytes("PNG"), "image/png"),
            ("DELETE", f"/users/{owner}/avatar", None, None),
            ("POST", f"/users/{owner}/posts", {"title": "in your name", "body": "x"}, None),
            ("PUT", f"/users/{owner}/posts/{post}", {"title": "edited", "body": "x"}, None),
            ("PATCH", f"/users/{owner}/posts/{post}", {"title": "edited"}, None),
            ("DELETE", f"/users/{owner}/posts/{post}", None, None)]


def send(api_url, version, method, path, body, content_type, token):
    base = api_url.replace("/api/v1", f"/api/{version}")
    headers = bearer(token)
    if content_type:
        return requests.request(method, base + path, data=body, headers={**headers, "Content-Type": content_type},
                                timeout=10)
    return requests.request(method, base + path, json=body, headers=headers, timeout=10)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_idor_on_every_write_route_is_403_and_changes_nothing(alice_and_bob, api_url, version):
    alice, bob, post = alice_and_bob
    before = (requests.get(f"{api_url}/users/{bob['id']}", timeout=10).json()["data"],
              requests.get(f"{api_url}/users/{bob['id']}/posts", timeout=10).json()["data"]["results"])
    for method, path, body, content_type in write_routes(bob["id"], post):
        response = send(api_url, version, method, path, body, content_type, token_of(alice))
        assert_problem(response, 403, "user_id")
        assert response.json()["errors"][0]["in"] == "path", (method, path)
    after = (requests.get(f"{api_url}/users/{bob['id']}", timeout=10).json()["data"],
             requests.get(f"{api_url}/users/{bob['id']}/posts", timeout=10).json()["data"]["results"])
    assert after == before


def test_moderators_edit_any_post_but_no_profile_admins_everything(alice_and_bob, api_url, stack_config):
    alice, bob, post = alice_and_bob
    moderator = token_of(alice, "moderator")
    for method, path, body, content_type in write_routes(bob["id"], post):
        response = send(api_url, "v1", method, path, body, content_type, moderator)
        if "/posts/" in path:
            assert response.status_code in (200, 204), (method, path, response.text)
        else:
            assert_problem(response, 403, "user_id")
    admin = token_of(alice, "admin")
    made = send(api_url, "v1", "POST", f"/users/{bob['id']}/posts", {"title": "by an admin", "body": "x"}, None, admin)
    assert made.status_code == 201, made.text
    assert send(api_url, "v1", "DELETE", f"/users/{bob['id']}", None, None, admin).status_code == 204


def test_only_admins_change_the_topology(new_user, api_url, topology_admin):
    user = new_user()
    url = f"{api_url}/admin/topology"
    for role in ("member", "moderator"):
        assert_problem(requests.patch(url, json={"replicas": 0}, headers=bearer(token_of(user, role)), timeout=10),
                       403, "Authorization")
        assert_problem(requests.get(url, headers=bearer(token_of(user, role)), timeout=10), 403, "Authorization")
    before = topology_admin.data()["version"]
    changed = requests.patch(url, json={"auth": {"anonymous_reads": True}}, headers=bearer(token_of(user, "admin")),
                             timeout=10)
    assert changed.status_code == 200, changed.text
    assert changed.json()["data"]["version"] == before + 1
    assert changed.json()["data"]["updated_by"].startswith(f"api (admin {user['id']})")


def test_a_real_moderator_account_gets_its_role_in_the_token(new_user, api_url, stack_config):
    user = new_user(password=PASSWORD)
    set_role(stack_config, user, "moderator")
    tokens = requests.post(f"{api_url}/auth/token", json={"username": user["username"], "password": PASSWORD},
                           headers=ANONYMOUS, timeout=30).json()["data"]
    assert jwt.decode(tokens["access"], options={"verify_signature": False})["role"] == "moderator"


# --- mint-tokens and the signing key ------------------------------------------------------------------
def test_mint_tokens_writes_an_owner_only_file_of_working_tokens(alice_and_bob, api_url, stack_config):
    alice, bob, post = alice_and_bob
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "mint-tokens", "--lifetime-hours", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    path = stack_config.data_dir / "load-tokens.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    tokens = json.loads(path.read_text())["tokens"]
    assert alice["id"] in tokens and bob["id"] in tokens
    assert requests.patch(f"{api_url}/users/{bob['id']}/posts/{post}", json={"title": "mine"},
                          headers=bearer(tokens[bob["id"]]), timeout=10).status_code == 200
    assert_problem(requests.patch(f"{api_url}/users/{bob['id']}/posts/{post}", json={"title": "not mine"},
                                  headers=bearer(tokens[alice["id"]]), timeout=10), 403, "user_id")


def test_the_signing_key_is_made_on_first_use_and_kept(tmp_path):
    """No key ships: with none in the environment, the first process makes one (owner-only) in the
    data directory and the next reads the same."""
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_JWT_SIGNING_KEY"}
    env.update(WORKBENCH_DATA_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="workbench.settings")
    show = [sys.executable, "-c", "from django.conf import settings; print(settings.SIMPLE_JWT['SIGNING_KEY'])"]
    first = subprocess.run(show, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(show, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "jwt-signing.key"
    assert len(first.stdout.strip()) >= 40 and first.stdout == second.stdout
    assert key_file.read_text().strip() == first.stdout.strip()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600



def test_the_schema_documents_every_error_answer():
    """Each operation lists the problem+json answers it can give (api/gateway/openapi.py)."""
    from drf_spectacular.generators import SchemaGenerator
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    expected = {("post", "/api/v1/users"): {"201", "400", "409", "411", "413", "415", "429", "503"},
                ("patch", "/api/v1/users/{user_id}"): {"200", "400", "401", "403", "404", "409", "413", "415"},
                ("put", "/api/v2/users/{user_id}/avatar"): {"200", "400", "401", "403", "404", "413", "415"},
                ("get", "/api/v1/users/{user_id}/posts"): {"200", "304", "400", "401", "404", "429", "503"},
                ("patch", "/api/v1/admin/topology"): {"200", "400", "401", "403"}}
    for (method, path), codes in expected.items():
        responses = paths[path][method]["responses"]
        assert codes <= set(responses), (method, path, sorted(responses))
        for code in codes - {"200", "201", "204", "304"}:
            assert "application/problem+json" in responses[code]["content"], (method, path, code)
