"""JWT tampering, algorithm confusion and IDOR, over HTTP through Caddy, beyond tests/test_auth.py
(which has the basic bad tokens and a member writing on another member's id):

- algorithm confusion: `alg` none in every spelling, with and without the signature; an RS256 token
  (signed with an attacker's RSA key), with the key embedded (`jwk`) or pointed at (`jku`, `x5u`);
  HS256 signed with the wrong secrets the server holds (Django's SECRET_KEY, the controller token)
  or with an empty key and a `kid` naming /dev/null;
- edited claims under the old signature: role, user id, scope, token type, expiry;
- claims the server must refuse even when signed with its own key: no `exp`, a future `nbf`, an
  `aud` or `iss` (its tokens carry neither: one made for or by something else sharing the key),
  an unknown role;
- the signature stripped or truncated, padding added, segments swapped;
- every single-character change of a valid token (hypothesis): refused, unless it decodes to the
  very same bytes (base64url's last character carries unused bits).

IDOR: a member reaching another member's post through their own path (`/users/<mine>/posts/<theirs>`,
which passes the owner check), owner fields in bodies (mass assignment), every admin endpoint with
a member's and a moderator's token, a deleted member's still-unexpired token, and no existence oracle
(another member's id and an id nobody holds answer alike)."""
import base64
import json
import time

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from api.gateway import auth
from conftest import assert_problem
from hostile import SOAK, Plain, new_member, record

HOSTILE_URL = "http://127.0.0.1:1/attacker"  # a key URL the server must never fetch


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(data: dict) -> str:
    return b64(json.dumps(data, separators=(",", ":")).encode())


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def session():
    with Plain() as http:
        yield http


@pytest.fixture(scope="module")
def members(api_url, session):
    """Alice and Bob, members, each with a post; their tokens."""
    made = {}
    for who in ("alice", "bob"):
        user, token = new_member(api_url, f"ha_{who}")
        post = session.post(f"{api_url}/users/{user['id']}/posts", json={"title": f"{who}'s", "body": "x"},
                            headers=token, timeout=10)
        assert post.status_code == 201, post.text
        made[who] = {"id": user["id"], "token": token["Authorization"].split()[1], "post": post.json()["data"]["id"]}
    return made


def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def forged(member: dict) -> dict:
    """Tokens an attacker can make from Bob's token and no key of the server's."""
    good = member["token"]
    header, payload, signature = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    private = rsa_key()
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
    admin = {**claims, "role": "admin"}
    tokens = {}
    for alg in ("none", "None", "NONE", "nOnE"):
        tokens[f"alg {alg}, no signature"] = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(admin)}."
    tokens["alg none, the old signature kept"] = f"{segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
    tokens["RS256, the attacker's key"] = jwt.encode(admin, private, algorithm="RS256")
    tokens["RS256, the attacker's key embedded (jwk)"] = jwt.encode(admin, private, algorithm="RS256",
                                                                    headers={"jwk": public_jwk})
    tokens["RS256, key URL (jku)"] = jwt.encode(admin, private, algorithm="RS256", headers={"jku": HOSTILE_URL})
    tokens["RS256, certificate URL (x5u)"] = jwt.encode(admin, private, algorithm="RS256", headers={"x5u": HOSTILE_URL})
    tokens["HS256 keyed with the attacker's RSA public key"] = _hs256(admin, public_pem)
    tokens["HS256, empty key, kid /dev/null"] = _hs256(admin, b"", kid="../../../../../../dev/null")
    tokens["HS256 keyed with Django's SECRET_KEY"] = _hs256(admin, settings.SECRET_KEY.encode())
    tokens["HS256 keyed with the controller token"] = _hs256(admin, settings.STACK.controller_token().encode())
    tokens["ES256, the attacker's key"] = _es256(admin)
    for name, change in (("role admin", {"role": "admin"}), ("role moderator", {"role": "moderator"}),
                         ("another user id", {"user_id": str(int(claims["user_id"]) + 1)}),
                         ("user id as a number", {"user_id": int(claims["user_id"])}),
                         ("scope admin", {"scope": "admin"}), ("token_type refresh", {"token_type": "refresh"}),
                         ("expiry a year on", {"exp": claims["exp"] + 365 * 86400})):
        tokens[f"edited claim: {name}, old signature"] = f"{header}.{segment({**claims, **change})}.{signature}"
    tokens["signature stripped"] = f"{header}.{payload}."
    tokens["signature segment missing"] = f"{header}.{payload}"
    tokens["signature truncated"] = f"{header}.{payload}.{signature[:20]}"
    tokens["signature of another token"] = f"{header}.{segment(admin)}.{signature}"
    tokens["segments swapped"] = f"{payload}.{header}.{signature}"
    tokens["four segments"] = f"{good}.{signature}"
    tokens["header of alg none, payload of admin, signed body of the original"] = (
        f"{segment({'alg': 'none'})}.{segment(admin)}.{signature}")
    tokens["padding added"] = f"{header}==.{payload}==.{signature}=="
    tokens["8 KiB of token"] = f"{header}.{b64(b'x' * 6000)}.{signature}"
    return tokens


def _hs256(claims: dict, key: bytes, kid: str | None = None) -> str:
    import hashlib
    import hmac
    head = {"alg": "HS256", "typ": "JWT", **({"kid": kid} if kid else {})}
    body = f"{segment(head)}.{segment(claims)}"
    return f"{body}.{b64(hmac.new(key, body.encode(), hashlib.sha256).digest())}"


def _es256(claims: dict) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    return jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")


def signed(member: dict, **claims) -> str:
    """A token signed with the server's own key (what no attacker has) carrying these claims; a
    claim given as None is left out."""
    base = jwt.decode(member["token"], options={"verify_signature": False})
    body = {k: v for k, v in {**base, **claims}.items() if v is not None}
    return jwt.encode(body, settings.SIMPLE_JWT["SIGNING_KEY"], algorithm="HS256")


def refused_everywhere(session, api_url, member, token) -> list:
    """Bob's write, a read and an admin read with `token`: each must be 401 problem+json, and Bob's
    profile unchanged."""
    before = session.get(f"{api_url}/users/{member['id']}", timeout=10).json()["data"]
    answers = [session.patch(f"{api_url}/users/{member['id']}", json={"bio": "forged"}, headers=bearer(token),
                             timeout=10),
               session.get(f"{api_url}/users/{member['id']}", headers=bearer(token), timeout=10),
               session.get(f"{api_url}/admin/topology", headers=bearer(token), timeout=10)]
    assert session.get(f"{api_url}/users/{member['id']}", timeout=10).json()["data"] == before
    return answers


def test_forged_tokens_and_algorithm_confusion_are_401(session, api_url, members):
    tokens = forged(members["bob"])
    wrong = {}
    for name, token in tokens.items():
        for response in refused_everywhere(session, api_url, members["bob"], token):
            if response.status_code != 401:
                wrong[name] = (response.request.method, response.request.url, response.status_code, response.text[:200])
                continue
            assert_problem(response, 401, "Authorization")
            assert response.headers["WWW-Authenticate"].startswith(auth.CHALLENGE)
    assert not wrong, wrong
    record("jwt forged", tokens=len(tokens), requests=3 * len(tokens), accepted=len(wrong))


def test_claims_the_server_refuses_even_under_its_own_signature(session, api_url, members):
    bob = members["bob"]
    now = int(time.time())
    cases = {"no exp": signed(bob, exp=None), "nbf an hour ahead": signed(bob, nbf=now + 3600),
             "an audience": signed(bob, aud="https://elsewhere.example"), "an issuer": signed(bob, iss="evil"), "unknown role": signed(bob, role="root"),
             "role as a list": signed(bob, role=["admin"]), "no user_id": signed(bob, user_id=None),
             "user_id not a number": signed(bob, user_id="1 OR 1=1"), "scope a number": signed(bob, scope=7),
             "expired a second ago": signed(bob, exp=now - 1), "token_type refresh": signed(bob, token_type="refresh"),
             "no token_type": signed(bob, token_type=None)}
    accepted = {}
    for name, token in cases.items():
        for response in refused_everywhere(session, api_url, bob, token):
            if response.status_code != 401:
                accepted[name] = (response.request.method, response.status_code, response.text[:200])
    assert not accepted, accepted
    # The control: the same helper with nothing changed is a working token.
    assert session.patch(f"{api_url}/users/{bob['id']}", json={"bio": "mine"}, headers=bearer(signed(bob)),
                         timeout=10).status_code == 200
    record("jwt claims under the server's key", tokens=len(cases), requests=3 * len(cases), accepted=len(accepted))


TOKEN_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="


def _decoded(token: str):
    try:
        parts = token.split(".")
        return tuple(unb64(p) for p in parts) if len(parts) == 3 else None
    except (ValueError, TypeError):
        return None


def test_every_single_character_change_of_a_token_is_refused(api_url, members):
    bob = members["bob"]
    good = bob["token"]
    seen = {"tries": 0, "same bytes": 0}

    @hsettings(max_examples=300 if SOAK else 40, deadline=None, database=None, derandomize=True,
               suppress_health_check=list(HealthCheck))
    @given(at=st.integers(0, len(good) - 1), char=st.sampled_from(TOKEN_CHARS))
    def mutated(at, char):
        token = good[:at] + char + good[at + 1:]
        if token == good:
            return
        with Plain() as http:
            response = http.patch(f"{api_url}/users/{bob['id']}", json={"bio": "mutated"}, headers=bearer(token),
                                  timeout=10)
        seen["tries"] += 1
        if _decoded(token) is not None and _decoded(token) == _decoded(good):
            seen["same bytes"] += 1  # the same header, claims and signature, written differently
            assert response.status_code in (200, 401), response.text
        else:
            assert response.status_code == 401, (at, char, response.status_code, response.text[:200])

    mutated()
    record("jwt single-character mutations", tries=seen["tries"], decoding_to_the_same_bytes=seen["same bytes"])


# --- IDOR ----------------------------------------------------------------------------------------------
def test_anothers_post_through_my_own_path_is_404_and_untouched(session, api_url, members):
    """The owner check compares the path's user with the token's; the post must also belong to that
    user, or /users/<mine>/posts/<theirs> would pass the check and reach Bob's post."""
    alice, bob = members["alice"], members["bob"]
    theirs = f"{api_url}/users/{bob['id']}/posts/{bob['post']}"
    before = session.get(theirs, timeout=10).json()["data"]
    for version in ("v1", "v2"):
        mine = f"{api_url}/users/{alice['id']}/posts/{bob['post']}".replace("/api/v1/", f"/api/{version}/")
        for method, body in (("GET", None), ("PUT", {"title": "taken", "body": "x"}), ("PATCH", {"title": "taken"}),
                             ("DELETE", None)):
            response = session.request(method, mine, json=body, headers=bearer(alice["token"]), timeout=10)
            assert_problem(response, 404, "post_id")
    assert session.get(theirs, timeout=10).json()["data"] == before


def test_owner_fields_in_bodies_are_refused_and_move_nothing(session, api_url, members, stack_config):
    alice, bob = members["alice"], members["bob"]
    mine = bearer(alice["token"])
    attempts = [("POST", f"/users/{alice['id']}/posts", {"title": "t", "user_id": bob["id"]}, {"user_id"}),
                ("POST", f"/users/{alice['id']}/posts", {"title": "t", "author": {"id": bob["id"]}}, {"author"}),
                ("PATCH", f"/users/{alice['id']}/posts/{alice['post']}", {"user_id": bob["id"]}, {"user_id"}),
                ("PATCH", f"/users/{alice['id']}", {"role": "admin"}, {"role"}),
                ("PATCH", f"/users/{alice['id']}", {"id": bob["id"], "bio": "x"}, {"id"}),
                ("PUT", f"/users/{alice['id']}", {"email": "a@example.org", "name": "n", "bio": "b",
                                                  "is_staff": True}, {"is_staff"})]
    for method, path, body, fields in attempts:
        assert_problem(session.request(method, api_url + path, json=body, headers=mine, timeout=10), 400, *fields)
    post = session.get(f"{api_url}/users/{alice['id']}/posts/{alice['post']}", timeout=10).json()["data"]
    assert post["user_id"] == alice["id"]
    with psycopg.connect(stack_config.meta_db_url, autocommit=True) as meta:
        assert meta.execute("SELECT role FROM meta_account WHERE user_id = %s",
                            (int(alice["id"]),)).fetchone() == ("member",)


def test_no_admin_endpoint_answers_a_member_or_a_moderator(session, api_url, members):
    """Errors, traces, profiles and the cache's stale-read table can hold other users' data."""
    alice = members["alice"]
    paths = ["/admin/topology", "/admin/nodes", "/admin/cache", "/admin/ratelimit", "/admin/readmodel",
             "/admin/shards", f"/admin/explain?user_id={members['bob']['id']}", "/admin/errors",
             "/admin/errors/0123456789abcdef", "/admin/profiles", "/admin/profiles/0123456789abcdef",
             "/admin/traces", "/admin/traces/0123456789abcdef0123456789abcdef"]
    tried = 0
    for role in ("member", "moderator"):
        token = bearer(auth.access_token(int(alice["id"]), role))
        for path in paths:
            assert_problem(session.get(api_url + path, headers=token, timeout=10), 403, "Authorization")
            tried += 1
        for method, path in (("PATCH", "/admin/topology"), ("PUT", "/admin/topology"), ("DELETE", "/admin/errors")):
            response = session.request(method, api_url + path, json={"replicas": 0} if method != "DELETE" else None,
                                       headers=token, timeout=10)
            assert_problem(response, 403, "Authorization")
            tried += 1
    record("idor admin endpoints", requests=tried)


def test_a_deleted_members_unexpired_token_writes_nothing(session, api_url, new_user):
    user = new_user()
    token = bearer(auth.access_token(int(user["id"]), "member"))
    assert session.delete(f"{api_url}/users/{user['id']}", headers=token, timeout=10).status_code == 204
    for method, path, body in (("PATCH", "", {"bio": "back"}), ("POST", "/posts", {"title": "ghost"}),
                               ("PUT", "", {"email": f"{user['username']}@example.org", "name": "", "bio": ""})):
        assert_problem(session.request(method, f"{api_url}/users/{user['id']}{path}", json=body, headers=token,
                                       timeout=10), 404, "user_id")
    assert session.get(f"{api_url}/users/{user['id']}", timeout=10).status_code == 404


def test_no_existence_oracle_for_other_members_ids(session, api_url, members):
    """A member's write to another member's id and to an id nobody holds answer alike (403 before
    any query), so ids cannot be enumerated through writes."""
    alice, bob = members["alice"], members["bob"]
    ghost = str(int(bob["id"]) + 7)
    answers = []
    for target in (bob["id"], ghost):
        response = session.patch(f"{api_url}/users/{target}", json={"bio": "x"}, headers=bearer(alice["token"]),
                                 timeout=10)
        assert_problem(response, 403, "user_id")
        body = response.json()
        answers.append((body["type"], body["title"], body["detail"].replace(target, "<id>")))
    assert answers[0] == answers[1], answers
