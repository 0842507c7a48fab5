"""GET /api/v1/admin/ratelimit: the rate limiter's live rules and its counters (api/gateway/ratelimit.py)."""
import redis
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.response import Response

from api.gateway import ratelimit
from api.gateway.errors import Unavailable

from .admin import AdminView


class RateLimitView(AdminView):
    """The topology's `rate_limit` group as the app servers run it (each rule with its
    RateLimit-Policy item and how many requests it refused), the trusted proxies, and the counters of
    every app server added up: allowed, limited, fail_open, fail_closed."""

    @extend_schema(operation_id="admin_ratelimit_get", responses=OpenApiTypes.OBJECT)
    def get(self, request):
        from api.state import state_client

        try:
            return Response(ratelimit.status(state_client()))
        except redis.RedisError as exc:
            raise Unavailable(f"The state Valkey is unavailable: {type(exc).__name__}.") from None
