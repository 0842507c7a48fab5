"""OAuth 2.0 for third-party clients (api/gateway/oauth.py, django-oauth-toolkit) on the real stack:
clients registered with `manage.py oauth_client`; client credentials writing as the application's
owner and refused on another member's data; a `read`-scoped token that reads but cannot write; a
token's role never above its user's; the authorization-code flow with PKCE driven like a browser
(sign in, consent, code, exchange with the verifier), a wrong verifier and the `plain` method
refused; the OpenAPI schema's two security schemes."""
import base64
import hashlib
import json
import secrets
import subprocess
import sys
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
import psycopg
import pytest
import requests
import yaml

from conftest import ANONYMOUS, ROOT, assert_problem, sign_up

PASSWORD = "correct-horse"
REDIRECT = "http://127.0.0.1:9/callback"


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def register(*args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "manage.py"), "oauth_client", "--json", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def set_role(stack_config, user_id, role: str) -> None:
    with psycopg.connect(stack_config.meta_db_url, autocommit=True) as conn:
        conn.execute("UPDATE meta_account SET role = %s WHERE user_id = %s", (role, int(user_id)))


@pytest.fixture(scope="module")
def world(stack, api_url):
    """An owner and another member, a client-credentials client of the owner's and a public
    authorization-code client."""
    tag = secrets.token_hex(4)
    owner = sign_up(requests, api_url, f"oa_own_{tag}", password=PASSWORD)
    other = sign_up(requests, api_url, f"oa_oth_{tag}", password=PASSWORD)
    machine = register("--name", f"machine {tag}", "--grant", "client-credentials", "--owner", owner["username"])
    app = register("--name", f"app {tag}", "--grant", "authorization-code", "--public", "--owner",
                   owner["username"], "--redirect-uri", REDIRECT)
    return {"owner": owner, "other": other, "machine": machine, "app": app, "token_url": f"{api_url}/oauth/token"}


def client_token(world, scope: str) -> requests.Response:
    machine = world["machine"]
    return requests.post(world["token_url"], data={"grant_type": "client_credentials", "scope": scope},
                         auth=(machine["client_id"], machine["client_secret"]), timeout=30)


# --- client credentials -------------------------------------------------------------------------------
def test_client_credentials_write_as_the_owner_and_never_on_another_members_data(world, api_url):
    got = client_token(world, "read write")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read write" and 0 < body["expires_in"] <= 900
    token = claims(body["access_token"])
    assert token["user_id"] == world["owner"]["id"] and token["role"] == "member"
    assert token["token_type"] == "access" and token["scope"] == "read write" and token["exp"] > token["iat"]
    mine = requests.post(f"{api_url}/users/{world['owner']['id']}/posts", json={"title": "by a client", "body": "x"},
                         headers=bearer(body["access_token"]), timeout=10)
    assert mine.status_code == 201, mine.text
    theirs = requests.post(f"{api_url}/users/{world['other']['id']}/posts", json={"title": "idor", "body": "x"},
                           headers=bearer(body["access_token"]), timeout=10)
    assert_problem(theirs, 403, "user_id")
    # OAuth's own errors (RFC 6749 section 5.2), never a 500.
    wrong = requests.post(world["token_url"], data={"grant_type": "client_credentials"},
                          auth=(world["machine"]["client_id"], "not the secret"), timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    assert client_token(world, "fly").json()["error"] == "invalid_scope"
    as_json = requests.post(world["token_url"], json={"grant_type": "client_credentials"}, timeout=10)
    assert_problem(as_json, 415, "Content-Type")


def test_a_read_scoped_token_reads_but_cannot_write(world, api_url):
    got = client_token(world, "read")
    assert got.status_code == 200, got.text
    token = got.json()["access_token"]
    assert requests.get(f"{api_url}/users/{world['owner']['id']}", headers=bearer(token), timeout=10).status_code == 200
    refused = requests.patch(f"{api_url}/users/{world['owner']['id']}", json={"display_name": "no"},
                             headers=bearer(token), timeout=10)
    assert_problem(refused, 403, "Authorization")
    assert "read-only" in refused.json()["detail"]


def test_a_tokens_role_never_exceeds_its_users(world, api_url, stack_config):
    admin_scoped = client_token(world, "admin").json()["access_token"]
    assert claims(admin_scoped)["role"] == "member"  # a member's client asked for admin
    assert_problem(requests.get(f"{api_url}/admin/topology", headers=bearer(admin_scoped), timeout=10),
                   403, "Authorization")
    set_role(stack_config, world["owner"]["id"], "moderator")
    try:
        assert claims(client_token(world, "admin").json()["access_token"])["role"] == "moderator"
        assert claims(client_token(world, "write").json()["access_token"])["role"] == "member"
        assert claims(client_token(world, "moderate").json()["access_token"])["role"] == "moderator"
    finally:
        set_role(stack_config, world["owner"]["id"], "member")


# --- authorization code with PKCE ----------------------------------------------------------------------
class _Inputs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.fields = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name") and attrs.get("type") != "submit":
            self.fields[attrs["name"]] = attrs.get("value") or ""


def form_fields(html: str) -> dict:
    parser = _Inputs()
    parser.feed(html)
    return parser.fields


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(api_url, world, **params) -> str:
    query = {"response_type": "code", "client_id": world["app"]["client_id"], "redirect_uri": REDIRECT,
             "scope": "read write", "state": "s-1", **params}
    return f"{api_url}/oauth/authorize?{urlencode(query)}"


@pytest.fixture
def browser(world, api_url):
    """A browser signed in as the owner (Django's login page, CSRF and all)."""
    session = requests.Session()
    session.headers.update(ANONYMOUS)
    _, challenge = pkce()
    start = session.get(authorize_url(api_url, world, code_challenge=challenge, code_challenge_method="S256"),
                        timeout=10)
    assert start.status_code == 200 and "/oauth/login" in start.url, start.url  # sent to sign in first
    fields = form_fields(start.text)
    assert fields.get("csrfmiddlewaretoken")
    refused = session.post(start.url, data={**fields, "username": world["owner"]["username"], "password": "wrong"},
                           timeout=30)
    assert refused.status_code == 200 and "/oauth/login" in refused.url
    signed_in = session.post(start.url, data={**fields, "username": world["owner"]["username"], "password": PASSWORD},
                             timeout=30)
    assert signed_in.status_code == 200 and "Authorize" in signed_in.text, signed_in.text[:500]
    return session


def consent(browser, url) -> dict:
    """Consent on the authorize page; the query the client's redirect URI gets."""
    page = browser.get(url, timeout=10)
    assert page.status_code == 200, page.text[:500]
    answer = browser.post(page.url, data={**form_fields(page.text), "allow": "Authorize"}, allow_redirects=False,
                          timeout=10)
    assert answer.status_code == 302, answer.text[:500]
    location = answer.headers["Location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


def test_authorization_code_with_pkce_s256(browser, world, api_url):
    verifier, challenge = pkce()
    url = authorize_url(api_url, world, code_challenge=challenge, code_challenge_method="S256")
    exchange = {"grant_type": "authorization_code", "redirect_uri": REDIRECT, "client_id": world["app"]["client_id"]}
    # a wrong verifier is refused
    got = consent(browser, url)
    assert got["state"] == "s-1" and got["code"]
    wrong = requests.post(world["token_url"], data={**exchange, "code": got["code"], "code_verifier": pkce()[0]},
                          timeout=30)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant", wrong.text
    # the right one gets a JWT for the signed-in user, which writes as them
    got = consent(browser, url)
    tokens = requests.post(world["token_url"], data={**exchange, "code": got["code"], "code_verifier": verifier},
                           timeout=30)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    token = claims(body["access_token"])
    assert token["user_id"] == world["owner"]["id"] and token["role"] == "member" and token["scope"] == "read write"
    assert body["refresh_token"].count(".") != 2  # refresh tokens stay opaque (kept, hashed, in meta)
    made = requests.post(f"{api_url}/users/{world['owner']['id']}/posts", json={"title": "via an app", "body": "x"},
                         headers=bearer(body["access_token"]), timeout=10)
    assert made.status_code == 201, made.text
    # a code is good once
    again = requests.post(world["token_url"], data={**exchange, "code": got["code"], "code_verifier": verifier},
                          timeout=30)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the refresh token gives a new access token, with the same claims
    refreshed = requests.post(world["token_url"], data={"grant_type": "refresh_token", "client_id": world["app"]["client_id"],
                                                        "refresh_token": body["refresh_token"]}, timeout=30)
    assert refreshed.status_code == 200, refreshed.text
    assert claims(refreshed.json()["access_token"])["user_id"] == world["owner"]["id"]
    # a revoked refresh token refreshes nothing
    rotated = {"client_id": world["app"]["client_id"], "refresh_token": refreshed.json()["refresh_token"]}
    assert requests.post(f"{api_url}/oauth/revoke", data={"token": rotated["refresh_token"], "client_id":
                                                          rotated["client_id"]}, timeout=30).status_code == 200
    dead = requests.post(world["token_url"], data={"grant_type": "refresh_token", **rotated}, timeout=30)
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant", dead.text


@pytest.mark.parametrize("params", [{"code_challenge_method": "plain"}, {}, None],
                         ids=["plain", "no-method", "no-challenge"])
def test_pkce_plain_or_missing_is_refused(browser, world, api_url, params):
    verifier, challenge = pkce()
    extra = {} if params is None else {"code_challenge": verifier if params else challenge, **params}
    page = browser.get(authorize_url(api_url, world, **extra), allow_redirects=False, timeout=10)
    # refused before any consent: back to the client with an error, no code
    assert page.status_code == 302, page.text[:500]
    query = parse_qs(urlparse(page.headers["Location"]).query)
    assert query["error"] == ["invalid_request"] and "code" not in query, query


def test_the_schema_documents_both_auth_schemes(api_url):
    schema = requests.get(api_url.replace("/api/v1", "/api/schema"), timeout=30)
    assert schema.status_code == 200, schema.text[:300]
    schema = yaml.safe_load(schema.text)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["jwt"] == {**schemes["jwt"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    flows = schemes["oauth2"]["flows"]
    assert flows["clientCredentials"]["tokenUrl"] == "/api/v1/oauth/token"
    assert flows["authorizationCode"]["authorizationUrl"] == "/api/v1/oauth/authorize"
    assert set(flows["authorizationCode"]["scopes"]) == {"read", "write", "moderate", "admin"}
    write = schema["paths"]["/api/v1/users/{user_id}/posts"]["post"]
    assert write["security"] == [{"jwt": []}, {"oauth2": ["write"]}]
    for code in ("401", "403"):
        assert "application/problem+json" in write["responses"][code]["content"]
    assert schema["paths"]["/api/v1/admin/topology"]["patch"]["security"] == [{"jwt": []}, {"oauth2": ["admin"]}]
    assert {} in schema["security"]  # reads: a token is optional
