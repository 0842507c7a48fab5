"""The `state` Valkey (noeviction): id leases and the topology now; rate limits and queues later."""
import functools

import redis
from django.conf import settings


@functools.lru_cache(maxsize=1)
def state_client() -> redis.Redis:
    return redis.Redis.from_url(settings.VALKEY_STATE_URL, socket_timeout=2, socket_connect_timeout=2)
