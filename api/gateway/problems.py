"""RFC 9457 problem details: the one shape of every error the API returns."""
from __future__ import annotations

import json

from django.http import HttpResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://workbench.local/problems/"


def problem(status: int, title: str, detail: str, *, kind: str | None = None,
            errors: list[dict] | None = None, **extra) -> dict:
    """A problem document. `errors` lists {field, pointer, detail}: the fields at fault."""
    body = {"type": TYPE_BASE + kind if kind else "about:blank", "title": title, "status": status,
            "detail": detail}
    if errors:
        body["errors"] = errors
        body["field"] = errors[0]["field"]
    body.update(extra)
    return body


def field_error(field: str, detail: str, where: str = "body") -> dict:
    """One field at fault. `where` is body, query, path or header; body fields get a JSON pointer."""
    error = {"field": field, "in": where, "detail": detail}
    if where == "body":
        error["pointer"] = "#" if field == "(body)" else "#/" + field.replace(".", "/")
    return error


def problem_response(body: dict, request_id: str | None = None, headers: dict | None = None) -> HttpResponse:
    """For errors raised outside DRF (middleware, Django's 404): same body, same media type."""
    if request_id:
        body = {**body, "request_id": request_id}
    response = HttpResponse(json.dumps(body), status=body["status"], content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response
