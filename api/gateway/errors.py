"""One exception handler: every failure becomes problem+json naming the field at fault."""
from __future__ import annotations

import logging
import sys

import redis
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, IntegrityError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

from api import errors as tracking

from .problems import PROBLEM_CONTENT_TYPE, field_error, problem, problem_response

log = logging.getLogger(__name__)


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request conflicts with the current state."

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field


class FieldError(exceptions.APIException):
    """A 400 about one named field outside the body: a query parameter or a header."""
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, field: str, detail: str, where: str = "query"):
        super().__init__(detail)
        self.field, self.where = field, where


class NotFound(exceptions.NotFound):
    """A 404 naming the path parameter whose value matched nothing."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field


class BodyRejected(exceptions.APIException):
    """A 413 or 415 about the request body itself (a body read by the view, not by a parser)."""

    def __init__(self, code: int, detail: str, kind: str):
        super().__init__(detail)
        self.status_code, self.kind = code, kind


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "A dependency is unavailable; retry shortly."


def _flatten(detail, prefix: str = "") -> list[dict]:
    """DRF's nested error dicts/lists into [{field, pointer, detail}]."""
    if isinstance(detail, dict):
        out = []
        for key, value in detail.items():
            name = "(body)" if key in ("non_field_errors",) else (f"{prefix}.{key}" if prefix else str(key))
            out += _flatten(value, name)
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            return [field_error(prefix or "(body)", str(item)) for item in detail]
        out = []
        for index, item in enumerate(detail):
            out += _flatten(item, f"{prefix}.{index}" if prefix else str(index))
        return out
    return [field_error(prefix or "(body)", str(detail))]


TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
          405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 413: "Content Too Large",
          415: "Unsupported Media Type", 429: "Too Many Requests", 503: "Service Unavailable"}


def exception_handler(exc, context):
    request = context.get("request")
    headers = {}
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "No such resource.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError):
        # An unreachable or failing database: say so and invite a retry, never a bare 500.
        log.warning("database error: %s", exc)
        exc = Unavailable(f"The database is unavailable: {type(exc).__name__}.")
        headers["Retry-After"] = "1"
    elif isinstance(exc, redis.RedisError):
        # The state Valkey (id leases, the topology, queues) failing is an outage, not a bug.
        log.warning("state Valkey error: %s", exc)
        exc = Unavailable(f"The state store is unavailable: {type(exc).__name__}.")
        headers["Retry-After"] = "1"
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: Django's handler500 answers with problem+json

    code = exc.status_code
    if isinstance(exc, Conflict):
        errors = [field_error(exc.field, str(exc.detail))]
        body = problem(code, TITLES[code], str(exc.detail), kind="conflict", errors=errors)
    elif isinstance(exc, FieldError):
        body = problem(code, TITLES[code], f"{exc.field}: {exc.detail}", kind="invalid-parameter",
                       errors=[field_error(exc.field, str(exc.detail), exc.where)])
    elif isinstance(exc, BodyRejected):
        body = problem(code, TITLES[code], str(exc.detail), kind=exc.kind,
                       errors=[field_error("(body)", str(exc.detail))])
    elif isinstance(exc, NotFound):
        body = problem(code, TITLES[code], str(exc.detail), kind="not-found",
                       errors=[field_error(exc.field, str(exc.detail), "path")])
    elif isinstance(exc, exceptions.NotFound):
        body = problem(code, TITLES[code], str(exc.detail), kind="not-found")
    elif isinstance(exc, exceptions.NotAuthenticated) and code == 401:
        fields = getattr(exc, "fields", None) or [("Authorization", "header")]  # api.views.auth: the body's
        body = problem(code, TITLES[code], str(exc.detail), kind="unauthorized",
                       errors=[field_error(name, str(exc.detail), where) for name, where in fields])
    elif isinstance(exc, exceptions.PermissionDenied):  # api.gateway.rbac.Forbidden names the path's owner
        field = getattr(exc, "field", None)
        body = problem(code, TITLES[code], str(exc.detail), kind="forbidden",
                       errors=[field_error(field, str(exc.detail), exc.where)] if field else None)
    elif isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        body = problem(code, TITLES[code], "; ".join(f"{e['field']}: {e['detail']}" for e in errors),
                       kind="validation", errors=errors)
    elif isinstance(exc, exceptions.ParseError):  # api.gateway.parsers: BodyError names the field
        body = problem(code, TITLES[code], str(exc.detail), kind=getattr(exc, "kind", "malformed-body"),
                       errors=[field_error(getattr(exc, "field", "(body)"), str(exc.detail))])
    elif isinstance(exc, exceptions.UnsupportedMediaType):
        body = problem(code, TITLES[code], str(exc.detail), kind="unsupported-media-type",
                       errors=[field_error("Content-Type", str(exc.detail), "header")])
    elif isinstance(exc, exceptions.MethodNotAllowed):
        body = problem(code, TITLES[code], str(exc.detail), kind="method-not-allowed")
    else:
        body = problem(code, TITLES.get(code, "Error"), str(exc.detail))
    if request is not None and getattr(request, "request_id", None):
        body["request_id"] = request.request_id
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    if getattr(exc, "auth_header", None):  # a 401 says how to authenticate (RFC 9110)
        headers["WWW-Authenticate"] = exc.auth_header
    response = Response(body, status=code, headers=headers, content_type=PROBLEM_CONTENT_TYPE)
    response.is_problem = True
    return response


# Django-level handlers, for requests that never reach a DRF view.
def not_found(request, exception=None):
    return problem_response(problem(404, "Not Found", f"No resource at {request.path[:200]!r}.", kind="not-found"),
                            getattr(request, "request_id", None))


def bad_request(request, exception=None):
    return problem_response(problem(400, "Bad Request", "The request could not be understood."),
                            getattr(request, "request_id", None))


def server_error(request):
    tracking.record(request, sys.exc_info()[1])  # api/errors.py: grouped by fingerprint for the admins
    return problem_response(problem(500, "Internal Server Error",
                                    "An unexpected error occurred; it has been logged with this request id."),
                            getattr(request, "request_id", None))
