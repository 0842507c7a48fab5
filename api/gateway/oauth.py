"""OAuth 2.0 for third-party clients, by django-oauth-toolkit (DOT), under /api/v1/oauth/:
`token` (client credentials; authorization code with PKCE; refresh), `authorize` (a signed-in
user's consent), `revoke`, and `login` (the sign-in page the authorize step sends a browser to).

The access tokens are this API's own JWTs (settings.OAUTH2_PROVIDER["ACCESS_TOKEN_GENERATOR"] is
`access_token_generator` below, which signs with api/gateway/auth.py's `access_token`), so the
gateway verifies an OAuth token like any other, statelessly, with one HMAC; the `scope` claim marks
it as OAuth's. DOT still records each token (hashed at rest: COMPLIANT_BCP_RFC9700_TOKEN_STORAGE),
so `revoke` works for refresh tokens; a revoked access token stays valid until it expires (at most
the JWT lifetime), the same price as a deleted account's JWT.

Scopes map onto roles (auth.SCOPE_ROLES): `read` and `write` are a member's, `moderate` a
moderator's, `admin` an admin's. The token's role is the lower of the scope's and the account's own
role, read at the time of issue: a client never gets more than its user has. A token whose scope
names no writing scope is read-only (rbac.py answers its writes 403). With client credentials the
principal is the application's owner (DOT's Application.user); an application without an owner, or
whose owner is not active, gets no token.

PKCE: required for every authorization-code client, S256 only (`plain`, and a challenge without a
method, which RFC 7636 reads as `plain`, are refused at /authorize).

Errors: these endpoints answer OAuth's own JSON errors (`{"error": "invalid_grant", ...}`, RFC 6749
section 5.2) or, at /authorize, a redirect to the client with `error=`, because OAuth client
libraries parse exactly those; the rest of the API keeps RFC 9457 problem+json.

Browser sessions (Django's session and auth middleware, and CSRF on the two forms) exist only under
/api/v1/oauth/ (BrowserSessionMiddleware, and the cookies' path): the API's own views stay stateless
and never ask for a CSRF token.
"""
from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.urls import path
from django.views.decorators.csrf import csrf_protect
from oauth2_provider import views as dot_views
from oauth2_provider.oauth2_validators import OAuth2Validator
from oauth2_provider.settings import oauth2_settings
from oauthlib.oauth2 import Server
from oauthlib.oauth2.rfc6749.grant_types.authorization_code import code_challenge_method_s256

from . import auth

PREFIX = "/api/v1/oauth/"


def role_for(scopes, account_role: str) -> str:
    """The lower of the scopes' highest role and the account's own role."""
    rank = auth.ROLES.index
    wanted = max((auth.SCOPE_ROLES[s] for s in scopes if s in auth.SCOPE_ROLES), key=rank, default="member")
    own = account_role if account_role in auth.ROLES else "member"
    return min(wanted, own, key=rank)


def _owner(request):
    """The account a token is for: the signed-in user (authorization code, refresh) or the
    application's owner (client credentials)."""
    user = getattr(request, "user", None)
    if user is None and getattr(request, "client", None) is not None:
        user = request.client.user
    return user


def _active(account) -> bool:
    from api.models import Account
    return account is not None and account.state == Account.ACTIVE


def access_token_generator(request) -> str:
    """DOT's ACCESS_TOKEN_GENERATOR: a JWT as auth.access_token makes them, plus the granted scope.
    Its lifetime is DOT's ACCESS_TOKEN_EXPIRE_SECONDS, so `expires_in` tells the truth."""
    account = _owner(request)
    scopes = list(request.scopes or [])
    return auth.access_token(account.user_id, role_for(scopes, account.role), scope=" ".join(scopes),
                             lifetime=timedelta(seconds=oauth2_settings.ACCESS_TOKEN_EXPIRE_SECONDS))


class Validator(OAuth2Validator):
    """DOT's validator, refusing a token to an account that is not active (or an ownerless client)."""

    def validate_grant_type(self, client_id, grant_type, client, request, *args, **kwargs):
        if not super().validate_grant_type(client_id, grant_type, client, request, *args, **kwargs):
            return False
        return grant_type != "client_credentials" or _active(request.client.user)

    def validate_code(self, client_id, code, client, request, *args, **kwargs):
        return super().validate_code(client_id, code, client, request, *args, **kwargs) and _active(request.user)

    def validate_refresh_token(self, refresh_token, client, request, *args, **kwargs):
        return (super().validate_refresh_token(refresh_token, client, request, *args, **kwargs)
                and _active(request.user))


class S256Server(Server):
    """oauthlib's server with PKCE's S256 method only: `plain` is refused at /authorize, before any
    consent, as is a challenge with no method (RFC 7636 reads that as `plain`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.auth_grant._code_challenge_methods = {"S256": code_challenge_method_s256}


class BrowserSessionMiddleware:
    """Django's session and authentication middleware, only for the OAuth pages (login, consent):
    everything else is untouched, so the API stays stateless and cookie-free."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.with_session = SessionMiddleware(AuthenticationMiddleware(get_response))

    def __call__(self, request):
        if request.path_info.startswith(PREFIX):
            return self.with_session(request)
        return self.get_response(request)


class LoginForm(AuthenticationForm):
    """Django's login form, refusing accounts that are not active (pending sign-ups, deletions)."""

    def confirm_login_allowed(self, user):
        if not _active(user):
            raise forms.ValidationError("This account is not active.", code="inactive")


login = auth_views.LoginView.as_view(template_name="oauth/login.html", authentication_form=LoginForm,
                                     redirect_authenticated_user=False)
urlpatterns = [
    path("login", login, name="oauth-login"),
    path("authorize", csrf_protect(dot_views.AuthorizationView.as_view()), name="authorize"),
    path("token", dot_views.TokenView.as_view(), name="token"),
    path("revoke", dot_views.RevokeTokenView.as_view(), name="revoke-token"),
]
