"""Liveness says the process answers; readiness checks each dependency and names the one that fails.
Liveness is also what Caddy's active health check asks (workbench/stack/caddy.py), so a draining
app server answers it with 503 to leave the rotation before it is stopped (stack/apps.py)."""
import os
import time

import redis
from django.conf import settings
from django.db import connections
from django.http import JsonResponse

from workbench.stack.apps import draining_marker

# This server's marker, fixed for the process: each probe costs one stat() and nothing else.
_DRAINING = str(draining_marker(settings.STACK, settings.APP_SERVER_NAME))


def healthz(request):
    if os.path.exists(_DRAINING):
        # RFC 9457 keeps `status` for the HTTP code: the state goes in an extension member.
        body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "state": "draining",
                "app_server": settings.APP_SERVER_NAME,
                "detail": f"{settings.APP_SERVER_NAME} is draining: it finishes what it has, then stops"}
        return JsonResponse(body, status=503, content_type="application/problem+json")
    return JsonResponse({"status": "ok", "app_server": settings.APP_SERVER_NAME})


def _check_db(alias: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT 1")


def _ping(url: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    finally:
        client.close()


def _check_cache() -> None:
    """Every node the topology's `cache_nodes` uses: the single cache, or each cluster node."""
    from api.caching import valkey
    failed = []
    for url in valkey.node_urls():
        try:
            _ping(url)
        except redis.RedisError as exc:
            failed.append(f"{url.split('@')[-1]}: {exc}")
    if failed:
        raise redis.ConnectionError("; ".join(failed))


CHECKS = {
    "postgres-meta": lambda: _check_db("default"),
    "postgres-primary": lambda: _check_db("primary"),
    "valkey-cache": _check_cache,
    "valkey-state": lambda: _ping(settings.VALKEY_STATE_URL),
}


def readyz(request):
    results, failing = {}, []
    for name, check in CHECKS.items():
        started = time.perf_counter()
        try:
            check()
            results[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}
        except Exception as exc:  # any failure of a dependency means "not ready", never a 500
            results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
            failing.append(name)
    if failing:
        body = {"type": "about:blank", "title": "Service Unavailable", "status": 503,
                "detail": f"not ready: {', '.join(failing)} failed", "failing": failing, "checks": results}
        return JsonResponse(body, status=503, content_type="application/problem+json")
    return JsonResponse({"status": "ready", "checks": results})
