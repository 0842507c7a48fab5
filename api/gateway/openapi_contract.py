"""The OpenAPI schema as the API really answers (drf-spectacular postprocessing hooks, settings),
so that a client generated from it, or a fuzzer checking every response against it
(tests/test_hostile_schema.py, schemathesis), finds what the server sends:

- the envelope: every JSON success of /api/v*/ is `{"data": <the documented shape>, "meta":
  {timestamp, version, request_id}}` (api/gateway/envelope.py); the views document only `data`;
- `GET /users/{id}?view=profile` answers `{"user", "latest_posts"}`, not a user;
- sign-up answers 200, not 201, to an identical retry of a sign-up already made (it resumes it);
- a request body is required wherever one is documented (without one the gateway answers 415);
- OpenAPI links from what a write answers to the operations on what it made (sign-up's user,
  a new post), for stateful clients and fuzzers.
"""
from __future__ import annotations

import copy
import re

API = re.compile(r"^/api/(v[0-9]+)/")
JSON = "application/json"
_META = {
    "v1": {"type": "string", "format": "date-time", "description": "RFC 3339, UTC, milliseconds."},
    "v2": {"type": "integer", "description": "Unix epoch milliseconds."},
}
_PROFILE = {"v1": ("User", "Post"), "v2": ("UserV2", "PostV2")}
PROFILE_GETS = ("users_get", "v2_users_get")
SIGN_UPS = ("v1_users_create", "v2_users_create")


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _components(schemas: dict) -> None:
    for version, stamp in _META.items():
        name = f"Meta{version.upper()}"
        schemas[name] = {"type": "object", "required": ["timestamp", "version", "request_id"],
                         "properties": {"timestamp": stamp, "version": {"type": "string", "enum": [version]},
                                        "request_id": {"type": "string"}}}
        user, post = _PROFILE[version]
        schemas[f"Profile{version.upper()}"] = {
            "type": "object", "required": ["user", "latest_posts"],
            "description": "GET /users/{id}?view=profile: the user and their latest 10 posts.",
            "properties": {"user": _ref(user), "latest_posts": {"type": "array", "items": _ref(post)}}}


def document_envelope(result, generator, request, public):
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    _components(schemas)
    for path, item in result.get("paths", {}).items():
        found = API.match(path)
        if not found:
            continue
        version = found.group(1)
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if operation.get("requestBody"):
                operation["requestBody"]["required"] = True
            responses = operation["responses"]
            if operation.get("operationId") in SIGN_UPS and "201" in responses:
                created = responses["201"]
                responses.setdefault("200", {**copy.deepcopy(created), "description": "An identical retry of a sign-up already "
                                                                      "made: the same user, resumed."})
            for code, response in responses.items():
                content = (response.get("content") or {}).get(JSON)
                if not code.startswith("2") or not content or "schema" not in content:
                    continue
                data = content["schema"]
                if operation.get("operationId") in PROFILE_GETS:
                    data = {"oneOf": [data, _ref(f"Profile{version.upper()}")]}
                content["schema"] = {"type": "object", "required": ["data", "meta"],
                                     "properties": {"data": data, "meta": _ref(f"Meta{version.upper()}")}}
    return result


# --- links -----------------------------------------------------------------------------------------
# A write's path, and the operations that take what it made (path, methods: None for all), with
# where each of their path parameters comes from (OpenAPI runtime expressions). A new user has no
# avatar to GET or DELETE yet: only its PUT is linked.
NEW_USER = {"user_id": "$response.body#/data/id"}
LINKS = (
    ("/users", {("/users/{user_id}", None): NEW_USER, ("/users/{user_id}/posts", None): NEW_USER,
                ("/users/{user_id}/avatar", ("put",)): NEW_USER}),
    ("/users/{user_id}/posts", {("/users/{user_id}/posts/{post_id}", None): {
        "user_id": "$request.path.user_id", "post_id": "$response.body#/data/id"}}),
)


def document_links(result, generator, request, public):
    paths = result.get("paths", {})
    for version in ("v1", "v2"):
        for source, targets in LINKS:
            write = paths.get(f"/api/{version}{source}", {}).get("post")
            if not write:
                continue
            for code in ("201", "200"):
                response = write["responses"].get(code)
                if response is None:
                    continue
                links = response.setdefault("links", {})
                for (target, methods), parameters in targets.items():
                    for method, operation in paths.get(f"/api/{version}{target}", {}).items():
                        if isinstance(operation, dict) and "operationId" in operation and \
                                (methods is None or method in methods):
                            links[operation["operationId"]] = {"operationId": operation["operationId"],
                                                               "parameters": parameters}
    return result
