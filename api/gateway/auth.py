"""Authentication at the gateway: who a request is, decided once, before the rate limiter and the view.

Tokens are JWTs made by djangorestframework-simplejwt: `POST /api/v1/auth/token` trades a username
and password for an access token (15 minutes) and a refresh token (a day);
`POST /api/v1/auth/token/refresh` trades a refresh token for a new access token, with the role read
again from `meta` (a deleted or demoted account gets nothing more). OAuth 2.0 clients get the same
kind of access token (api/gateway/oauth.py).

Verifying an access token needs no database: it is signed (HS256, with the key `up` made in the
data directory; no key ships with the code) and carries the user id and role. So every app
server checks any token with one HMAC, and nothing about a session lives on a server (the
load-balancer lesson's stateless servers). The price: a token stays valid until it expires, up to
15 minutes after its account is deleted or demoted (the refresh is where that is caught).

The decoder accepts HS256 only, so an unsigned token (`alg: none`) or one signed with another
algorithm is refused like a tampered or expired one, and so is one naming an audience or an issuer
(`aud`, `iss`: ours carry neither): 401 problem+json with
`WWW-Authenticate: Bearer error="invalid_token"`. A bad token is refused on every route, even
where no token is needed: a client that sent credentials must learn they are wrong.

What needs a token (`required`): every write under /api/, except sign-up (`POST /users`, limited per
IP by the rate limiter's default rule) and the token endpoints; a read only when the topology's
`auth.anonymous_reads` is off. The admin endpoints take an admin's token or the stack controller's
own token (an opaque bearer string kept in the data directory, for the operator's tools).
What a principal may do to whose data is api/gateway/rbac.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from workbench import topology
from workbench.stack.config import bearer_matches

from .problems import field_error, problem, problem_response

ROLES = ("member", "moderator", "admin")
# OAuth scopes (api/gateway/oauth.py) and the role each stands for. A token whose `scope` names none of
# WRITE_SCOPES is read-only: api/gateway/rbac.py refuses its writes.
SCOPE_ROLES = {"read": "member", "write": "member", "moderate": "moderator", "admin": "admin"}
WRITE_SCOPES = frozenset({"write", "moderate", "admin"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
API_PATH = re.compile(r"^/api/v[0-9]+/")
OPEN_WRITES = re.compile(r"^/api/v[0-9]+/(users|auth/.*|oauth/.*)$")  # sign-up and the token endpoints
# The OAuth endpoints authenticate for themselves (a client's HTTP Basic credentials, a browser's
# session): the gateway leaves their Authorization header alone.
OAUTH_PATH = re.compile(r"^/api/v1/oauth/")
ADMIN_PATH = re.compile(r"^/api/v[0-9]+/admin/")
CHALLENGE = 'Bearer realm="workbench"'


@dataclass(frozen=True)
class Principal:
    user_id: int | None  # None for the operator (the controller's token)
    role: str
    via: str             # "jwt", "oauth" or "controller"
    read_only: bool = False  # an OAuth token whose scope names no writing scope

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Refused(Exception):
    def __init__(self, detail: str, error: str = "invalid_token"):
        super().__init__(detail)
        self.detail, self.error = detail, error


# --- making tokens -----------------------------------------------------------------------------------
def tokens_for(user_id: int, role: str, *, lifetime: timedelta | None = None, scope: str | None = None) -> dict:
    """An access and a refresh token for this account. Ids travel as strings (64-bit ids do not
    survive a JavaScript number)."""
    refresh = _claims(RefreshToken(), user_id, role)
    access = _claims(refresh.access_token, user_id, role, lifetime=lifetime, scope=scope)
    return {"access": str(access), "refresh": str(refresh), "token_type": "Bearer",
            "expires_in": int(access["exp"] - access["iat"])}


def access_token(user_id: int, role: str, *, lifetime: timedelta | None = None, scope: str | None = None) -> str:
    """Only an access token: mint-tokens, the operator's tools and OAuth (with its `scope`)."""
    return str(_claims(AccessToken(), user_id, role, lifetime=lifetime, scope=scope))


def _claims(token, user_id: int, role: str, *, lifetime: timedelta | None = None, scope: str | None = None):
    """The claims every token of ours carries (and an access token's own lifetime and scope)."""
    token["user_id"], token["role"] = str(user_id), role
    if lifetime is not None:
        token.set_exp(lifetime=lifetime)
    if scope is not None:
        token["scope"] = scope
    return token


def refreshed(raw: str, role_of) -> dict:
    """A new access token for a valid refresh token; `role_of(user_id)` gives the account's role
    now, or None when the account is gone or not active. Raises Refused."""
    try:
        refresh = RefreshToken(raw)
    except TokenError as exc:
        raise Refused(f"The refresh token is not valid: {exc}.") from exc
    user_id = int(refresh["user_id"])
    role = role_of(user_id)
    if role is None:
        raise Refused("The account of this refresh token no longer exists or is not active.")
    access = refresh.access_token
    access["role"] = role
    return {"access": str(access), "token_type": "Bearer", "expires_in": int(access["exp"] - access["iat"])}


# --- reading them ------------------------------------------------------------------------------------
def principal_of(authorization: str) -> Principal | None:
    """Who the Authorization header says this is; None without one. Raises Refused."""
    if not authorization:
        return None
    scheme, _, raw = authorization.partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise Refused("Send `Authorization: Bearer <token>`.", "invalid_request")
    if raw.count(".") != 2:  # not a JWT: the controller's opaque token, or nothing valid
        if bearer_matches(authorization, settings.STACK.controller_token()):
            return Principal(None, "admin", "controller")
        raise Refused("The token is not a JWT this API issued.")
    try:
        token = AccessToken(raw)
        user_id, role, scope = int(token["user_id"]), token.get("role", "member"), token.get("scope")
    except (TokenError, KeyError, ValueError, TypeError) as exc:
        raise Refused(f"The token was refused: {exc}.") from exc
    if "aud" in token.payload or "iss" in token.payload:
        # Ours carry neither, and the decoder checks neither (none is configured): a token that names
        # an audience or an issuer was made for, or by, something else that holds the same key.
        raise Refused("The token names an audience or an issuer; this API's tokens carry neither.")
    if role not in ROLES:
        raise Refused("The token names no known role.")
    if scope is None:
        return Principal(user_id, role, "jwt")
    if not isinstance(scope, str):
        raise Refused("The token's scope is not a string.")
    return Principal(user_id, role, "oauth", read_only=not (set(scope.split()) & WRITE_SCOPES))


def required(method: str, path: str) -> bool:
    if not API_PATH.match(path) or ADMIN_PATH.match(path):
        return False  # docs, health, and the admin endpoints (which check for themselves)
    if method in WRITE_METHODS:
        return not (OPEN_WRITES.match(path) and (method == "POST"))
    return not topology.current().topology.auth.anonymous_reads


def check(request):
    """Sets `request.principal` (None when anonymous); answers 401 when a token is bad, or missing
    where one is required; None to go on."""
    request.principal = None
    if OAUTH_PATH.match(request.path_info):
        return None
    try:
        request.principal = principal_of(request.headers.get("Authorization", ""))
    except Refused as refused:
        return unauthorized(refused.detail, refused.error, request.request_id)
    if request.principal is None and required(request.method, request.path_info):
        return unauthorized("This request needs a token: `Authorization: Bearer <access token>` "
                            "(POST /api/v1/auth/token).", None, request.request_id)
    return None


def unauthorized(detail: str, error: str | None, request_id: str | None):
    challenge = CHALLENGE + (f', error="{error}"' if error else "")
    return problem_response(problem(401, "Unauthorized", detail, kind="unauthorized",
                                    errors=[field_error("Authorization", detail, "header")]),
                            request_id, {"WWW-Authenticate": challenge})
