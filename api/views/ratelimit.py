"""GET /api/v1/admin/ratelimit: the rate limiter's live rules and its counters (api/gateway/ratelimit.py),
and the load shedder's settings and counters under `shedding` (api/gateway/shedding.py)."""
import redis
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from api.gateway import ratelimit, shedding
from api.gateway.errors import Unavailable

from .admin import AdminView


class RateLimitView(AdminView):
    """The topology's `rate_limit` group as the app servers run it (each rule with its
    RateLimit-Policy item and how many requests it refused), the trusted proxies, and the counters of
    every app server added up: allowed, limited, fail_open, fail_closed; and under `shedding`, the load
shedder's settings and counters: admitted, shed, no_stamp (requests without a trusted stamp)."""

    @extend_schema(operation_id="admin_ratelimit_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        from api.state import state_client

        try:
            client = state_client()
            return Response({**ratelimit.status(client), "shedding": shedding.status(client)})
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
