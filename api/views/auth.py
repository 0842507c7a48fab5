"""POST /api/v1/auth/token (username and password for tokens) and /auth/token/refresh (api/gateway/auth.py)."""
from django.contrib.auth.hashers import make_password
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.response import Response

from api.gateway import auth
from api.models import Account
from api.routing.db import META

from .base import ApiView
from .v1 import _validated

_DUMMY_HASH = make_password("a password no account has")  # see TokenView: a miss costs what a hit does


class Credentials(serializers.Serializer):
    username = serializers.CharField(max_length=30)
    password = serializers.CharField(max_length=128, trim_whitespace=False, style={"input_type": "password"})


class RefreshBody(serializers.Serializer):
    refresh = serializers.CharField(max_length=4096)


TOKENS = inline_serializer("Tokens", {
    "access": serializers.CharField(), "refresh": serializers.CharField(required=False),
    "token_type": serializers.CharField(), "expires_in": serializers.IntegerField()})


class BadCredentials(exceptions.NotAuthenticated):
    """401 naming the body fields at fault (not the Authorization header)."""

    def __init__(self, detail: str, *fields: str):
        super().__init__(detail)
        self.fields = [(name, "body") for name in fields]


def _active_account(**lookup) -> Account | None:
    return Account.objects.using(META).filter(state=Account.ACTIVE, **lookup).first()


class TokenView(ApiView):
    authentication_classes, permission_classes = [], []

    @extend_schema(operation_id="auth_token", request=Credentials, auth=[],
                   responses={200: TOKENS, 401: OpenApiResponse(description="wrong username or password")})
    def post(self, request):
        body = _validated(Credentials, request)
        account = _active_account(username=body["username"])
        if account is None:
            Account(password=_DUMMY_HASH).check_password(body["password"])  # the same time as a real check
            raise BadCredentials("The username or password is wrong.", "username", "password")
        if not account.check_password(body["password"]):
            raise BadCredentials("The username or password is wrong.", "username", "password")
        return Response(auth.tokens_for(account.user_id, account.role))


class RefreshView(ApiView):
    authentication_classes, permission_classes = [], []

    @extend_schema(operation_id="auth_token_refresh", request=RefreshBody, auth=[],
                   responses={200: TOKENS, 401: OpenApiResponse(description="refresh token invalid or expired")})
    def post(self, request):
        body = _validated(RefreshBody, request)

        def role_of(user_id):
            account = _active_account(user_id=user_id)
            return None if account is None else account.role

        try:
            return Response(auth.refreshed(body["refresh"], role_of))
        except auth.Refused as refused:
            raise BadCredentials(refused.detail, "refresh") from refused
