"""Admin endpoints. Until the gateway has accounts and roles, "admin" means a request bearing the
stack controller's token (the one in the data directory)."""
import redis
from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.response import Response

from api.gateway.errors import Conflict, Unavailable
from workbench import topology
from workbench.stack.config import bearer_matches

from .base import ApiView


def _is_admin(request) -> bool:
    # The token is read per request: `up` may have made a new one.
    return bearer_matches(request.headers.get("Authorization", ""), settings.STACK.controller_token())


class AdminView(ApiView):
    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        if not _is_admin(request):
            raise exceptions.NotAuthenticated("Send `Authorization: Bearer <controller token>`; "
                                              "the token is in the data directory's controller.token.")

    def get_authenticate_header(self, request):
        return 'Bearer realm="workbench-admin"'  # without one, DRF would turn the 401 into a 403


class TopologyView(AdminView):
    """The live topology: GET reads it, PUT replaces it (absent fields take defaults), PATCH merges
    into it (nested objects key by key). Every accepted change is one new version."""

    @extend_schema(operation_id="admin_topology_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        return self._answer(lambda s: s.read())

    @extend_schema(operation_id="admin_topology_put", request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def put(self, request):
        return self._answer(lambda s: s.replace(request.data, self._who()))

    @extend_schema(operation_id="admin_topology_patch", request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def patch(self, request):
        return self._answer(lambda s: s.patch(request.data, self._who()))

    @staticmethod
    def _who() -> str:
        return f"api (controller token) via {settings.APP_SERVER_NAME}"

    @staticmethod
    def _answer(action) -> Response:
        try:
            doc = action(topology.store())
        except topology.TopologyError as exc:
            detail = {}
            for name, message in exc.errors:
                detail.setdefault(name, []).append(message)
            raise exceptions.ValidationError(detail) from None
        except topology.Conflict as exc:
            raise Conflict("(body)", str(exc)) from None
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
        topology.remember(doc)  # so this response's X-Topology-Version already shows a write
        return Response(doc.to_dict(topology.report()))
