"""GET/PUT /api/v1/me/workspace/{kind}: the signed-in member's own workspace (api/workspace.py).
There is no user id in the path: whose workspace it is comes from the token alone, so no request
can name another member's (no IDOR to check). Anonymous requests get 401, the operator's token
(which belongs to no account) 403."""
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response

from api import workspace
from api.gateway.errors import NotFound
from api.gateway.rbac import Forbidden
from api.serializers import StrictSerializer

from .base import ApiView
from .v1 import _validated

PRIVATE = {"Cache-Control": "private, no-cache"}  # one member's data: no shared cache may keep it
KIND = OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(workspace.KINDS), description=(
    "`notes`: the Practice page's notes per phase; `clarify`: the Clarify page's answers; `estimate`: "
    "the Estimate page's assumptions; `baseline`: the run pinned as the Scale page's baseline."))


class WorkspaceSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=workspace.KINDS)
    data = serializers.DictField(help_text="The document, a JSON object (an empty one until first saved).")
    version = serializers.IntegerField(help_text="0 until first saved; one more on every save.")
    updated_at = serializers.DateTimeField(allow_null=True)


class WorkspaceWrite(StrictSerializer):
    data = serializers.DictField(help_text=f"A JSON object of at most {workspace.MAX_BYTES:,} bytes "
                                           "(compact UTF-8), with no NUL character.")
    version = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1, help_text=(
        "The version you read. When given, the save is refused (409) if the workspace changed since; "
        "left out, the save overwrites whatever is there."))

    def validate_data(self, value):
        found = workspace.problems(value)
        nested = {path.removeprefix("data."): detail for path, detail in found if path != "data"}
        if nested:  # each named by its path inside the document: data.phases.clarify
            raise serializers.ValidationError(nested)
        if found:
            raise serializers.ValidationError(found[0][1])
        return value


def _me(request) -> int:
    principal = getattr(request, "principal", None)
    if principal is None:
        raise exceptions.NotAuthenticated("Your workspace needs your token: `Authorization: Bearer <access "
                                          "token>` (POST /api/v1/auth/token).")
    if principal.user_id is None:
        raise Forbidden("The operator's token belongs to no account, so it has no workspace: sign in as a "
                        "member (POST /api/v1/auth/token).", field="Authorization")
    return principal.user_id


def _kind(kind: str) -> str:
    if kind not in workspace.KINDS:
        raise NotFound("kind", f"No workspace kind {kind[:40]!r}; the kinds are {', '.join(workspace.KINDS)}.")
    return kind


def _answer(document: workspace.Document) -> Response:
    return Response(WorkspaceSerializer(document).data, headers=PRIVATE)


class WorkspaceView(ApiView):
    @extend_schema(operation_id="me_workspace_get", parameters=[KIND], responses={
        200: WorkspaceSerializer, 403: OpenApiResponse(description="The operator's token: it belongs to no account.")})
    def get(self, request, kind):
        account_id = _me(request)
        return _answer(workspace.workspace_get(account_id=account_id, kind=_kind(kind)))

    @extend_schema(operation_id="me_workspace_put", parameters=[KIND], request=WorkspaceWrite, responses={
        200: WorkspaceSerializer,
        409: OpenApiResponse(description="Conflict: `version` is not the stored one (saved elsewhere since).")})
    def put(self, request, kind):
        account_id = _me(request)
        kind = _kind(kind)
        body = _validated(WorkspaceWrite, request)
        return _answer(workspace.workspace_save(account_id=account_id, kind=kind, data=body["data"],
                                                version=body.get("version")))
