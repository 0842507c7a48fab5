"""What the gateway adds to every API response, in the OpenAPI schema (a drf-spectacular
postprocessing hook, settings.SPECTACULAR_SETTINGS): the rate limiter's headers (api/gateway/
ratelimit.py) and its 429 and 503 answers, on every operation it can limit (not the admin ones)."""
from __future__ import annotations

import copy
import re

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


# --- authentication (api/gateway/auth.py, oauth.py) and authorization (rbac.py) ----------------------
ME_PATH = re.compile(r"^/api/v[0-9]+/me/")


def _security_schemes() -> dict:
    from oauth2_provider.settings import oauth2_settings

    from .oauth import PREFIX
    scopes = dict(oauth2_settings.SCOPES)
    token_url = f"{PREFIX}token"
    return {
        "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "An access token from POST /api/v1/auth/token (username and password) or "
                               "/auth/token/refresh: HS256, 15 minutes, carrying user_id and role."},
        "oauth2": {"type": "oauth2",
                   "description": "OAuth 2.0 for third-party clients (django-oauth-toolkit). The access "
                                  "token is the same kind of JWT, with a `scope` claim; its role is the "
                                  "lower of the scope's and the account's. Authorization code needs PKCE "
                                  "with S256. These endpoints answer RFC 6749 JSON errors, not problem+json.",
                   "flows": {
                       "clientCredentials": {"tokenUrl": token_url, "scopes": scopes},
                       "authorizationCode": {"authorizationUrl": f"{PREFIX}authorize", "tokenUrl": token_url,
                                             "refreshUrl": token_url, "scopes": scopes},
                   }},
    }


def document_auth(result, generator, request, public):
    """Both auth schemes, which operations need which (a global optional `security` for reads, a
    required one for writes and the admin endpoints), and their 401 and 403 problem+json answers."""
    from .auth import ADMIN_PATH, OPEN_WRITES, WRITE_METHODS
    components = result.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(_security_schemes())
    components.setdefault("schemas", {}).setdefault("Problem", PROBLEM)
    problem = {PROBLEM_CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}}
    challenge = {"WWW-Authenticate": {"description": 'Bearer realm="workbench", with error="invalid_token" '
                                                     "when the token sent is bad.", "schema": {"type": "string"}}}
    # Reads: anonymous unless the topology's auth.anonymous_reads is off; a token may always be sent.
    result["security"] = [{"jwt": []}, {"oauth2": ["read"]}, {}]
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            if ADMIN_PATH.match(path):
                operation["security"] = [{"jwt": []}, {"oauth2": ["admin"]}]
                forbidden = "Forbidden: the token is not an admin's (or the operator's)."
            elif method.upper() in WRITE_METHODS and OPEN_WRITES.match(path):
                operation["security"] = [{}]  # sign-up and the token endpoints: anonymous
                continue
            elif ME_PATH.match(path):  # a member's own data (api/views/workspace.py): a token, even to read
                scope = "write" if method.upper() in WRITE_METHODS else "read"
                operation["security"] = [{"jwt": []}, {"oauth2": [scope]}]
                forbidden = ("Forbidden: the operator's token (it belongs to no account), or an OAuth token whose "
                             "scope is read-only, to write.")
            elif method.upper() in WRITE_METHODS:
                operation["security"] = [{"jwt": []}, {"oauth2": ["write"]}]
                forbidden = ("Forbidden: another user's data (a moderator may edit and delete any post, an "
                             "admin anything), or an OAuth token whose scope is read-only.")
            else:
                operation.pop("security", None)  # the global, optional one
                forbidden = None
            unauthorized = responses.setdefault("401", {})
            unauthorized["description"] = ("Unauthorized: the token is missing (where one is needed), expired, "
                                           "tampered, unsigned or of another algorithm."
                                           + ("" if forbidden else " A read needs one only when the topology's "
                                                                    "auth.anonymous_reads is off."))
            unauthorized.setdefault("content", copy.deepcopy(problem))
            unauthorized.setdefault("headers", {}).update(copy.deepcopy(challenge))
            if forbidden:
                responses.setdefault("403", {"description": forbidden}).setdefault("content", copy.deepcopy(problem))
    return result


# The errors every API operation can answer besides the gateway's (401/403/429/503 above): each is
# problem+json naming the field at fault (api/gateway/errors.py), 304 excepted.
_BODY_METHODS = ("post", "put", "patch")
_CONFLICTS = {("post", "/users"), ("put", "/users/{user_id}"), ("patch", "/users/{user_id}")}  # username, email


def document_errors(result, generator, request, public):
    components = result.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault("Problem", PROBLEM)
    problem = {PROBLEM_CONTENT_TYPE: {"schema": _ref("schemas", "Problem")}}
    for path, item in result.get("paths", {}).items():
        if not path.startswith("/api/v"):
            continue
        tail = "/" + path.split("/", 3)[3]  # /api/v1/users/{user_id} -> /users/{user_id}
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            answers = {"400": "Bad Request: a body field, query parameter or header is invalid; `errors` names each."}
            if "{" in path:
                answers["404"] = "Not Found: no such user or post (the path parameter is named)."
            if method in _BODY_METHODS:
                answers["411"] = "Length Required: a chunked body (send a Content-Length)."
                answers["413"] = "Content Too Large: the body is over the limit (64 KiB; an avatar 2 MB)."
                answers["415"] = "Unsupported Media Type: not JSON (an avatar: not PNG, JPEG, WebP or GIF)."
            if (method, tail) in _CONFLICTS:
                answers["409"] = "Conflict: the username or email is taken."
            for code, description in answers.items():
                responses = operation["responses"]
                responses.setdefault(code, {"description": description}).setdefault("content", copy.deepcopy(problem))
            if method == "get" and "200" in operation["responses"]:
                operation["responses"].setdefault("304", {"description": "Not Modified: If-None-Match matched the ETag."})
    return result
