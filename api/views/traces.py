"""GET /api/v1/admin/traces and /api/v1/admin/traces/{trace_id}: the sampled requests' traces kept
in the `state` Valkey (api/tracing.py), for the dashboard's waterfall."""
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.response import Response

from api import tracing
from api.gateway.errors import FieldError, NotFound
from workbench import topology

from .admin import AdminView, read_state, whole_number

DEFAULT_LIMIT = 20


class TracesView(AdminView):
    """The latest sampled traces, newest first: one summary row each (trace id, when, method, route,
    status, app server, why it was sampled, total ms, span count, DB queries and their ms), with the
    topology's sampling settings. A trace's spans: GET /api/v1/admin/traces/{trace_id}."""
    PARAMS = ("limit",)

    @extend_schema(operation_id="admin_traces_list", responses=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("limit", int, description=f"How many, 1 to the store's size (default {DEFAULT_LIMIT})."),
    ])
    def get(self, request):
        settings = topology.current().topology.observability
        limit = whole_number(self.query(request), "limit", settings.trace_store, DEFAULT_LIMIT,
                             " (observability.trace_store)")
        rows = read_state(lambda client: tracing.latest(client, limit))
        return Response({"trace_sample_rate": settings.trace_sample_rate, "trace_store": settings.trace_store,
                         "force_header": f"{tracing.FORCE_HEADER}: 1", "traces": rows})


class TraceDetailView(AdminView):
    """One stored trace: its summary and every span (name, span and parent ids, start offset and
    duration in ms from the root's start, status, attributes such as the DB node), by start time."""

    @extend_schema(operation_id="admin_traces_get", responses=OpenApiTypes.OBJECT, parameters=[
        OpenApiParameter("trace_id", str, OpenApiParameter.PATH, description="32 lower-case hex digits "
                         "(the response header X-Trace-Id of a traced request)."),
    ])
    def get(self, request, trace_id: str):
        if not tracing.TRACE_ID.match(trace_id):
            raise FieldError("trace_id", "Must be a trace id: 32 lower-case hex digits.", where="path")
        found = read_state(lambda client: tracing.find(client, trace_id))
        if found is None:
            raise NotFound("trace_id", f"No stored trace {trace_id}: not sampled, or older than the "
                                       "store's latest observability.trace_store traces.")
        return Response(found)
