"""The in-process gateway, in order: request id and app-server stamp, load shedding on queue time
(api.gateway.shedding), authentication (api.gateway.auth: who the request is, from its token, with
no database), the rate limiter (api.gateway.ratelimit, keyed by that user), body size and
content-type limits. Authorization (api.gateway.rbac) runs in the view, where the path's owner is
known.

It runs first, so even a request rejected here carries X-Request-Id, X-App-Server,
X-Topology-Version and X-Cache (api.caching.request). The limiter's time is part of the `gateway`
Server-Timing part.
"""
from __future__ import annotations

import re
import time
import uuid

from django.conf import settings

from api import avatars, counters, faults, logs, metrics, profiling, served, timing, tracing
from api.caching import reads as cache_reads
from api.caching import request as cache_request
from api.caching import writes as cache_writes
from api.routing import db, nodes
from workbench import topology

from . import auth, ratelimit, shedding
from .problems import field_error, problem, problem_response

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
BODY_METHODS = {"POST", "PUT", "PATCH"}
# The one route whose body is not JSON: an avatar upload, an image up to AVATAR_MAX_BYTES. Its type
# is decided from the bytes by the view (api.avatars); here only the declared type is screened.
AVATAR_PUT = re.compile(r"^/api/v[12]/users/[^/]+/avatar$")
# A refused body up to this size is read and dropped so the connection stays usable; a larger one
# is not worth reading (the edge's body cap belongs in Caddy, with the load-balancer issue).
DRAIN_BYTES = 4 * 1024 * 1024
# Caddy's health probes and the scrapes themselves are not traffic to measure.
UNMEASURED = frozenset({"/healthz", "/metrics"})


class GatewayMiddleware:
    def __init__(self, get_response):
        self.get_response = tracing.wrapped("view", get_response)  # a sampled request's `view` span

    def __call__(self, request):
        started = time.perf_counter()
        timing_token = timing.begin()
        given = request.headers.get("X-Request-Id", "")
        request.request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        traced = tracing.begin(request)  # the sampling decision; None (no spans at all) for most requests
        faults.arm(request)
        client_id = request.headers.get("X-Client-Id")
        token = db.begin_request(request.method, client_id)
        cache_token = cache_request.begin(request.method)
        try:
            # Shedding first: a request that queued past the budget costs no Valkey or database work.
            shed = shedding.check(request)
            # Then who it is (a bad or missing token is a 401 here), so the limiter can key by user.
            unauthenticated = None if shed else auth.check(request)
            limited = None if shed or unauthenticated else ratelimit.check(request)  # None: off, or no rule
            refused = shed or unauthenticated or (limited and limited.refusal) or self._limits(request)
            if refused is not None:
                self._drain(request)
            timing.add("gateway", time.perf_counter() - started)
            if refused is None:
                faults.point("handler")  # tests: a slow request (X-Workbench-Pause: handler:<s>)
            response = refused or profiling.run(request, self.get_response)  # an admin's X-Workbench-Profile
            cache_writes.retry_pending()  # invalidations that failed while the cache was down
        finally:
            finishing = time.perf_counter()
            faults.disarm()
            cache_reads.release_held()  # a single-flight lock that no fill released (an error, a 404)
            cache = cache_request.end(cache_token)
            routing = db.end_request(token)
        if request.method not in ("GET", "HEAD", "OPTIONS") and response.status_code < 400 and routing.used:
            db.note_write(client_id)
        self._db_headers(response, routing)
        if limited:
            limited.apply(response)
        measured = request.path not in UNMEASURED
        if measured:
            served.count(settings.APP_SERVER_NAME)
        counters.flush_all()
        response["X-Request-Id"] = request.request_id
        response["X-App-Server"] = settings.APP_SERVER_NAME
        # The worker's local copy: at most one small version check a second, never a read per request.
        version = topology.current().version
        response["X-Topology-Version"] = str(version)
        if measured:  # Prometheus (api/metrics.py): memory writes, no I/O
            metrics.observe(request, response.status_code, time.perf_counter() - started, version)
        timing.add("gateway", time.perf_counter() - finishing)
        spent = timing.end(timing_token)
        response["Server-Timing"] = cache_request.headers(
            response, cache, f"app;dur={(time.perf_counter() - started) * 1000:.2f}") + timing.header_parts(spent)
        logs.request_done(request, response, started)  # the request's JSON log line (api/logs.py)
        tracing.end(traced, request, response)  # a sampled request's spans, stored in one round trip
        return response

    def process_view(self, request, view_func, view_args, view_kwargs):
        faults.raise_if_asked()  # tests: an unhandled exception where the view would run (X-Workbench-Fault)

    @staticmethod
    def _db_headers(response, routing) -> None:
        """Which data node answered, how far behind it was (the controller's last sample), and the
        replica a failed read was retried away from."""
        used = routing.used
        if routing.avoid:
            response["X-DB-Retried-From"] = ", ".join(sorted(routing.avoid))
        response["X-DB-Node"] = ", ".join(db.node_name(a) for a in used) or "none"
        report = nodes.current() if any(a in db.REPLICAS for a in used) else None
        lag = max((report.lag_ms(a) for a in used if a in db.REPLICAS), default=0.0) if report else 0.0
        response["X-DB-Lag-Ms"] = f"{lag:.1f}"

    @staticmethod
    def _drain(request) -> None:
        """Read (and drop) the body of a request refused before its body was read (411, 413,
        415), up to DRAIN_BYTES, before answering. Otherwise the server closes a connection with
        unread data in it, the kernel resets it, and the proxy sees its response cut off or its
        next request on that kept-alive connection fail: Caddy answered 502 for a 411 that way."""
        stream = request.META.get("wsgi.input")
        left = DRAIN_BYTES
        try:
            while left > 0 and stream is not None:
                chunk = stream.read(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            pass

    def _limits(self, request):
        if not request.path.startswith("/api/v") or request.method not in BODY_METHODS:
            return None
        if not request.META.get("CONTENT_LENGTH") and request.META.get("HTTP_TRANSFER_ENCODING"):
            # Django reads no body without a Content-Length: a chunked one would be silently dropped.
            detail = "Send the body with a Content-Length; chunked request bodies are not accepted."
            return problem_response(problem(411, "Length Required", detail, kind="length-required",
                                            errors=[field_error("Content-Length", detail, "header")]),
                                    request.request_id)
        length = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(length)
        except ValueError:
            return problem_response(problem(400, "Bad Request", "Content-Length is not a number.",
                                            errors=[field_error("Content-Length", "not a number", "header")]),
                                    request.request_id)
        limit, accepted = _body_rule(request)
        if length > limit:
            detail = f"The body is {length} bytes; the limit is {limit}."
            return problem_response(problem(413, "Content Too Large", detail, kind="body-too-large",
                                            errors=[field_error("(body)", detail)]), request.request_id)
        media_type = request.content_type or ""
        if media_type not in accepted:
            detail = f"Send {' or '.join(accepted)}, not {media_type or 'no Content-Type'}."
            return problem_response(problem(415, "Unsupported Media Type", detail, kind="unsupported-media-type",
                                            errors=[field_error("Content-Type", detail, "header")]),
                                    request.request_id)
        return None


def _body_rule(request) -> tuple[int, tuple[str, ...]]:
    """The largest body the request may carry and the media types it may declare."""
    if request.method == "PUT" and AVATAR_PUT.match(request.path):
        return settings.AVATAR_MAX_BYTES, avatars.MEDIA_TYPES
    if auth.OAUTH_PATH.match(request.path):  # OAuth 2.0 (RFC 6749) and its browser forms are form-encoded
        return settings.MAX_BODY_BYTES, ("application/x-www-form-urlencoded",)
    return settings.MAX_BODY_BYTES, ("application/json",)
