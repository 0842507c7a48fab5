"""The app server's request log: one structlog JSON line per request, written by the gateway's last
step (api/gateway/middleware.py), to <data dir>/logs/<app server>.requests.jsonl (settings.
REQUEST_LOG_FILE; gunicorn's own access line is off, since this one says more).

A line: {"ts", "event": "request", "request_id", "app_server", "pid", "method", "route", "status",
"latency_ms", "cache", "db_node", "topology_version", "client"}. `route` is Django's URL pattern
(`api/v1/users/<str:uid>/posts/<str:pid>`), not the path, so lines group by endpoint and carry no
ids; `client` is the address Caddy forwarded (X-Forwarded-For, which Caddy sets from the
connection rather than trusting the client's), or the peer for a direct request.
`ts` is when the response was ready (seconds since the epoch, as Caddy's `ts`); the request began
latency_ms earlier. `manage.py logs --request-id` joins these lines with Caddy's access log.

Cost per request: the values are already on the request and response; rendering is one json.dumps
and the write is one append to a line-buffered file (each worker opens its own after the fork).
"""
from __future__ import annotations

import fcntl
import os
import threading
import time

import structlog
from django.conf import settings

ROTATE_BYTES = 100 * 2**20  # as Caddy's access log (workbench/stack/caddy.py)
_lock = threading.Lock()
_logger = None
_pid = None


def _get():
    """The worker's logger; opened on first use, so every gunicorn worker has its own file handle."""
    global _logger, _pid
    if _pid == os.getpid():
        return _logger
    with _lock:
        if _pid != os.getpid():
            path = settings.REQUEST_LOG_FILE
            logger = None
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _rotate(path)
                # Line-buffered append: one write(2) per line, and O_APPEND keeps the workers' lines whole.
                out = open(path, "a", buffering=1, encoding="utf-8")
                logger = structlog.wrap_logger(
                    structlog.WriteLogger(out),
                    processors=[structlog.processors.JSONRenderer()],
                    cache_logger_on_first_use=True,
                )
            _logger, _pid = logger, os.getpid()
    return _logger


def _rotate(path: str) -> None:
    """Keep the file bounded: a worker starting on a file over ROTATE_BYTES moves it to `<path>.1`
    (replacing the previous one) under a lock, so two workers starting together rotate once. A
    worker still writing to the moved file carries on there until it restarts; `manage.py logs`
    reads both files."""
    try:
        if os.path.getsize(path) < ROTATE_BYTES:
            return
    except OSError:
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.path.getsize(path) >= ROTATE_BYTES:
                os.replace(path, path + ".1")
        except OSError:
            pass


def client_address(request) -> str:
    """The address Caddy put in X-Forwarded-For (its last entry: the hop Caddy saw), else the peer."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    return forwarded.rsplit(",", 1)[-1].strip() if forwarded else request.META.get("REMOTE_ADDR", "")


def request_done(request, response, started: float) -> None:
    """Log one finished request; `started` is the gateway's perf_counter at its start."""
    logger = _get()
    if logger is None or request.path == "/healthz":  # Caddy's health probes are not traffic
        return
    match = getattr(request, "resolver_match", None)
    logger.info(
        "request", ts=round(time.time(), 6), request_id=getattr(request, "request_id", None),
        app_server=settings.APP_SERVER_NAME, pid=_pid, method=request.method,
        route=(match.route or match.view_name) if match else None, status=response.status_code,
        latency_ms=round((time.perf_counter() - started) * 1000, 2),
        cache=response.get("X-Cache"), db_node=response.get("X-DB-Node"),
        topology_version=response.get("X-Topology-Version"), client=client_address(request),
    )
