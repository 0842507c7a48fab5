"""What the gateway adds to every API response, in the OpenAPI schema (a drf-spectacular
postprocessing hook, settings.SPECTACULAR_SETTINGS): the rate limiter's headers (api/gateway/
ratelimit.py) and its 429 and 503 answers, on every operation it can limit (not the admin ones)."""
from __future__ import annotations

import copy

from .problems import PROBLEM_CONTENT_TYPE
from .ratelimit import DRAFT, LIMITED_PATH, QUOTA_EXCEEDED

_WHEN = "Sent when the rate limiter is on and at least one of its rules applies to the request."
HEADERS = {
    "RateLimit-Policy": {"description": f"{DRAFT}: each applying rule as `\"name\";q=<capacity>;w=<seconds an "
                                        f"empty bucket takes to fill>`. {_WHEN}",
                         "schema": {"type": "string"}, "example": '"per-ip";q=1000;w=2'},
    "RateLimit": {"description": f"{DRAFT}: each applying rule's bucket as `\"name\";r=<whole tokens left>;"
                                 "t=<seconds until full, or on a 429 until the next token>;pk=<partition key>`. "
                                 + _WHEN, "schema": {"type": "string"}, "example": '"per-ip";r=998;t=1;pk=:3q2+7w==:'},
    "X-RateLimit-Status": {"description": "allowed, limited, or, while the limiter's store is unreachable, fail-open "
                                          f"(let through unchecked) or fail-closed (503). {_WHEN}",
                           "schema": {"type": "string", "enum": ["allowed", "limited", "fail-open", "fail-closed"]}},
    "Retry-After": {"description": "Whole seconds to wait before retrying.", "schema": {"type": "integer"}},
}
PROBLEM = {
    "type": "object", "description": "RFC 9457 problem details.",
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "request_id": {"type": "string"},
                   "violated-policies": {"type": "array", "items": {"type": "string"},
                                         "description": "On a 429: the rules that refused."}},
    "required": ["type", "title", "status", "detail"],
}


def _ref(kind: str, name: str) -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def document_rate_limits(result, generator, request, public):
    components = result.setdefault("components", {})
    components.setdefault("headers", {}).update(HEADERS)
    components.setdefault("schemas", {}).setdefault("Problem", PROBLEM)
    problem = {PROBLEM_CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}}
    limit_headers = {name: _ref("headers", name) for name in ("RateLimit-Policy", "RateLimit", "X-RateLimit-Status")}
    refusal_headers = {**limit_headers, "Retry-After": _ref("headers", "Retry-After")}
    for path, item in result.get("paths", {}).items():
        if not LIMITED_PATH.match(path):
            continue
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for response in responses.values():
                response.setdefault("headers", {}).update(copy.deepcopy(limit_headers))
            responses.setdefault("429", {
                "description": f"Too Many Requests: a rate-limit rule's bucket is empty (problem type {QUOTA_EXCEEDED})."})
            responses.setdefault("503", {"description": "Service Unavailable: a dependency is down, or the rate "
                                                        "limiter's store is and `rate_limit.on_error` is closed."})
            for code in ("429", "503"):
                responses[code].setdefault("content", copy.deepcopy(problem))
                responses[code].setdefault("headers", {}).update(copy.deepcopy(refusal_headers))
    return result
