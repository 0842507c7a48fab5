"""Bad input, over HTTP through Caddy: every case is RFC 9457 problem+json naming the field at fault,
none is a 5xx, and nothing is half-written (checked in the stack's own databases)."""
import base64
import collections
import json
import secrets
from dataclasses import dataclass, field

import psycopg
import pytest
import requests

MAX_ID = 2**63 - 1
SUFFIX = secrets.token_hex(3)
NAME = "@NAME@"  # replaced, in JSON bodies and paths, by a username unique to the case
BODY = "(body)"
MISSING = object()
UNKNOWN_FIELD = "Unknown field."
READ_ONLY = "This field is read-only."


@dataclass
class Case:
    method: str
    path: str
    status: int
    fields: set
    json: object = MISSING
    data: object = None  # raw body: bytes or str, or a list of bytes to send chunked
    content_type: str | None = "application/json"
    exact: bool = False  # `fields` must be every field named, not just among them
    id: str = ""
    extra: dict = field(default_factory=dict)


def cursor(*key) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def sign_up_body(**changes):
    body = {"username": NAME, "email": f"{NAME}@example.org", "password": "correct-horse"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not MISSING}


C = []


def case(id, method, path, status, fields, **kw):
    C.append(pytest.param(Case(method, path, status, set(fields), id=id, **kw), id=id))


# --- sign-up: POST /users -------------------------------------------------------------------------
U = "/users"
case("signup-malformed-json", "POST", U, 400, {BODY}, data='{"username": "abc",')
case("signup-truncated-json", "POST", U, 400, {BODY}, data='{"username"')
case("signup-trailing-garbage", "POST", U, 400, {BODY}, data='{"username": "abc"} x')
case("signup-top-level-array", "POST", U, 400, {BODY}, data='[{"username": "abc"}]')
case("signup-top-level-string", "POST", U, 400, {BODY}, data='"abc"')
case("signup-top-level-number", "POST", U, 400, {BODY}, data="42")
case("signup-top-level-null", "POST", U, 400, {BODY}, data="null")
case("signup-nan", "POST", U, 400, {BODY}, data='{"username": NaN}')
case("signup-infinity", "POST", U, 400, {BODY}, data='{"username": Infinity}')
case("signup-invalid-utf8", "POST", U, 400, {BODY}, data=b'{"username": "\xff\xfe"}')
case("signup-raw-nul-byte-in-json", "POST", U, 400, {BODY},
     data=b'{"username": "ab\x00c", "email": "x@example.org", "password": "correct-horse"}')
case("signup-deeply-nested", "POST", U, 400, {BODY}, data='{"a":' * 5000 + "1" + "}" * 5000)
# The parser's nesting limit (api/gateway/parsers.MAX_DEPTH = 32): one level past it is refused
# there, naming the top-level field that holds it; at the limit the body reaches the serializer.
SIGNUP_TEXT = '"username": "abc_def", "email": "abc@example.org", "password": "correct-horse"'
case("signup-nested-33-levels", "POST", U, 400, {"bio"},
     data="{" + SIGNUP_TEXT + ', "bio": ' + '{"a":' * 32 + "1" + "}" * 33, exact=True,
     extra={"detail": "The JSON nests deeper than 32 levels, the most accepted.", "type": "body-too-deep"})
case("signup-nested-32-levels-reaches-the-serializer", "POST", U, 400, {"bio"},
     data="{" + SIGNUP_TEXT + ', "bio": ' + '{"a":' * 31 + "1" + "}" * 32, exact=True,
     extra={"detail": "Not a valid string.", "type": "validation"})
case("signup-nested-arrays-40-levels", "POST", U, 400, {"name"},
     data="{" + SIGNUP_TEXT + ', "name": ' + "[" * 40 + "]" * 40 + "}", exact=True, extra={"type": "body-too-deep"})
case("signup-nested-past-the-recursion-limit", "POST", U, 400, {BODY}, data="[" * 30_000 + "]" * 30_000,
     extra={"type": "body-too-deep"})
# Duplicate keys: refused, naming the key (the parser's policy: which copy would count is ambiguous).
case("signup-duplicate-key", "POST", U, 400, {"username"},
     data='{"username": "abc_def", "username": "admin", "email": "d@example.org", "password": "correct-horse"}',
     exact=True, extra={"type": "duplicate-field"})
case("signup-duplicate-key-same-value", "POST", U, 400, {"email"},
     data='{"username": "abc_def", "email": "d@example.org", "email": "d@example.org", "password": "correct-horse"}',
     exact=True, extra={"type": "duplicate-field"})
case("signup-duplicate-nested-key", "POST", U, 400, {"bio.x"},
     data="{" + SIGNUP_TEXT + ', "bio": {"x": 1, "x": 2}}', exact=True, extra={"type": "duplicate-field"})
# Lone UTF-16 surrogates: not Unicode, so neither storable nor printable (a key holding one was a 500).
case("signup-lone-surrogate-key", "POST", U, 400, {BODY}, data="{" + SIGNUP_TEXT + ', "\\ud800": 1}', exact=True)
case("signup-lone-surrogate-in-bio", "POST", U, 400, {"bio"}, data="{" + SIGNUP_TEXT + ', "bio": "a\\udc00b"}',
     exact=True)
case("signup-reversed-surrogate-pair", "POST", U, 400, {"name"},
     data="{" + SIGNUP_TEXT + ', "name": "\\ude00\\ud83d"}', exact=True)
case("signup-lone-surrogate-in-a-list", "POST", U, 400, {"bio.1"}, data="{" + SIGNUP_TEXT + ', "bio": ["ok", "\\ud8ff"]}',
     exact=True)
# Bytes that are not UTF-8, or UTF-8 with a byte order mark.
case("signup-utf8-bom", "POST", U, 400, {BODY}, data=b"\xef\xbb\xbf{" + SIGNUP_TEXT.encode() + b"}")
case("signup-utf16", "POST", U, 400, {BODY}, data=("{" + SIGNUP_TEXT + "}").encode("utf-16"))
case("signup-overlong-utf8-slash", "POST", U, 400, {BODY}, data=b'{"bio": "\xc0\xaf"}')
case("signup-utf8-encoded-surrogate", "POST", U, 400, {BODY}, data=b'{"bio": "\xed\xa0\x80"}')
case("signup-latin1", "POST", U, 400, {BODY}, data='{"name": "Zoë"}'.encode("latin-1"))
case("signup-top-level-true", "POST", U, 400, {BODY}, data="true")
case("signup-empty-body", "POST", U, 400, {"username", "email", "password"}, data="", exact=True)
case("signup-empty-object", "POST", U, 400, {"username", "email", "password"}, json={}, exact=True)
case("signup-missing-password", "POST", U, 400, {"password"}, json=sign_up_body(password=MISSING), exact=True)
case("signup-missing-email", "POST", U, 400, {"email"}, json=sign_up_body(email=MISSING), exact=True)
case("signup-missing-username", "POST", U, 400, {"username"}, json=sign_up_body(username=MISSING), exact=True)
case("signup-wrong-types", "POST", U, 400, {"username", "email", "password", "name", "bio"},
     json={"username": [NAME], "email": 5, "password": True, "name": {}, "bio": []}, exact=True)
case("signup-nulls", "POST", U, 400, {"username", "email", "password"},
     json={"username": None, "email": None, "password": None}, exact=True)
case("signup-unknown-fields", "POST", U, 400, {"admin", "is_staff", "role"},
     json=sign_up_body(admin=True, role="admin", is_staff=1), exact=True, extra={"detail": UNKNOWN_FIELD})
case("signup-read-only-fields", "POST", U, 400, {"id", "post_count", "created_at"},
     json=sign_up_body(id="1", post_count=5, created_at="2025-01-01T00:00:00Z"), exact=True,
     extra={"detail": READ_ONLY})
case("signup-unknown-and-invalid", "POST", U, 400, {"email", "zzz", "yyy"},
     json=sign_up_body(email="nope", zzz=1, yyy=None), exact=True)
for i, bad in enumerate(["ab", "a" * 31, "Upper_case", "has-dash", "has space", "ünïcode", "", "a.b.c"]):
    case(f"signup-username-pattern-{i}", "POST", U, 400, {"username"}, json=sign_up_body(username=bad), exact=True)
for i, bad in enumerate(["not-an-email", "a@", "@example.org", "a b@example.org", "x" * 250 + "@e.org",
                         "a@b@example.org"]):
    case(f"signup-bad-email-{i}", "POST", U, 400, {"email"}, json=sign_up_body(email=bad), exact=True)
case("signup-password-too-short", "POST", U, 400, {"password"}, json=sign_up_body(password="short"), exact=True)
case("signup-password-too-long", "POST", U, 400, {"password"}, json=sign_up_body(password="p" * 129), exact=True)
case("signup-name-too-long", "POST", U, 400, {"name"}, json=sign_up_body(name="n" * 101), exact=True)
case("signup-bio-too-long", "POST", U, 400, {"bio"}, json=sign_up_body(bio="b" * 2001), exact=True)
for name in ("username", "email", "password", "name", "bio"):
    value = {"username": "ab\u0000cd", "email": "a\u0000b@example.org", "password": "correct\u0000horse"}.get(
        name, "x\u0000y")
    case(f"signup-nul-in-{name}", "POST", U, 400, {name}, json=sign_up_body(**{name: value}))
case("signup-oversized-body", "POST", U, 413, {BODY}, json=sign_up_body(bio="b" * 70_000))
case("signup-text-plain", "POST", U, 415, {"Content-Type"},
     data=json.dumps(sign_up_body()), content_type="text/plain")
case("signup-form-encoded", "POST", U, 415, {"Content-Type"},
     data="username=abc&email=a%40example.org&password=correct-horse",
     content_type="application/x-www-form-urlencoded")
case("signup-multipart", "POST", U, 415, {"Content-Type"},
     data="--b\r\n\r\n--b--\r\n", content_type="multipart/form-data; boundary=b")
case("signup-missing-content-type", "POST", U, 415, {"Content-Type"}, data=json.dumps(sign_up_body()),
     content_type=None)
case("signup-chunked-body", "POST", U, 411, {"Content-Length"}, data=[json.dumps(sign_up_body()).encode()])
case("signup-username-taken", "POST", U, 409, {"username"},
     json={"username": "user1", "email": f"{NAME}@example.org", "password": "correct-horse"})
case("signup-email-taken", "POST", U, 409, {"email"},
     json={"username": NAME, "email": "user2@example.test", "password": "correct-horse"})

# --- user updates: PUT/PATCH/DELETE /users/{id} ----------------------------------------------------
UD = "/users/{user}"
case("patch-user-malformed-json", "PATCH", UD, 400, {BODY}, data='{"bio": ')
case("patch-user-duplicate-bio", "PATCH", UD, 400, {"bio"}, data='{"bio": "a", "bio": "b"}', exact=True)
case("patch-user-lone-surrogate-name", "PATCH", UD, 400, {"name"}, data='{"name": "\\udbff"}', exact=True)
case("patch-user-nested-too-deep", "PATCH", UD, 400, {"bio"}, data='{"bio": ' + "[" * 33 + "]" * 33 + "}", exact=True)
case("patch-user-top-level-string", "PATCH", UD, 400, {BODY}, data='"bio"')
case("patch-user-top-level-array", "PATCH", UD, 400, {BODY}, data='["bio"]')
case("patch-user-username", "PATCH", UD, 400, {"username"}, json={"username": NAME}, exact=True)
case("patch-user-username-and-bio", "PATCH", UD, 400, {"username"}, json={"username": NAME, "bio": "x"},
     exact=True)
case("patch-user-password", "PATCH", UD, 400, {"password"}, json={"password": "new-password"}, exact=True)
case("patch-user-unknown-fields", "PATCH", UD, 400, {"nickname", "role"},
     json={"nickname": "x", "role": "admin", "bio": "ok"}, exact=True, extra={"detail": UNKNOWN_FIELD})
case("patch-user-read-only-fields", "PATCH", UD, 400, {"id", "post_count"},
     json={"post_count": 99, "id": "1"}, exact=True)
case("patch-user-wrong-types", "PATCH", UD, 400, {"name", "bio", "email"},
     json={"name": ["x"], "bio": {"a": 1}, "email": False}, exact=True)
case("patch-user-null-bio", "PATCH", UD, 400, {"bio"}, json={"bio": None}, exact=True)
case("patch-user-bad-email", "PATCH", UD, 400, {"email"}, json={"email": "not-an-email"}, exact=True)
case("patch-user-email-taken", "PATCH", UD, 409, {"email"}, json={"email": "user3@example.test"})
case("patch-user-nul-in-bio", "PATCH", UD, 400, {"bio"}, json={"bio": "a\u0000b"}, exact=True)
case("patch-user-nul-in-name", "PATCH", UD, 400, {"name"}, json={"name": "\u0000"}, exact=True)
case("patch-user-bio-too-long", "PATCH", UD, 400, {"bio"}, json={"bio": "b" * 2001}, exact=True)
case("patch-user-oversized-body", "PATCH", UD, 413, {BODY}, json={"bio": "b" * 70_000})
case("patch-user-text-plain", "PATCH", UD, 415, {"Content-Type"}, data='{"bio": "x"}', content_type="text/plain")
case("patch-user-missing-content-type", "PATCH", UD, 415, {"Content-Type"}, data='{"bio": "x"}',
     content_type=None)
case("put-user-missing-fields", "PUT", UD, 400, {"email", "bio"}, json={"name": "x"}, exact=True)
case("put-user-empty-object", "PUT", UD, 400, {"email", "name", "bio"}, json={}, exact=True)
case("put-user-text-plain", "PUT", UD, 415, {"Content-Type"}, data="{}", content_type="text/plain")
VALID_PUT = {"email": f"{NAME}@example.org", "name": "n", "bio": "b"}
case("put-unknown-user", "PUT", "/users/{ghost}", 404, {"user_id"}, json=VALID_PUT)
case("patch-unknown-user", "PATCH", "/users/{ghost}", 404, {"user_id"}, json={"bio": "x"})
case("patch-user-beyond-63-bits", "PATCH", "/users/{huge}", 404, {"user_id"}, json={"bio": "x"})
case("put-user-beyond-64-bits", "PUT", "/users/{huge64}", 404, {"user_id"}, json=VALID_PUT)
case("delete-unknown-user", "DELETE", "/users/{ghost}", 404, {"user_id"})
case("delete-user-beyond-63-bits", "DELETE", "/users/{huge}", 404, {"user_id"})
case("delete-user-30-digits", "DELETE", "/users/{long}", 404, {"user_id"})

# --- post create: POST /users/{id}/posts ----------------------------------------------------------
P = "/users/{user}/posts"
case("post-malformed-json", "POST", P, 400, {BODY}, data='{"title": "x"')
case("post-top-level-array", "POST", P, 400, {BODY}, data='[{"title": "x"}]')
case("post-nan", "POST", P, 400, {BODY}, data='{"title": NaN}')
case("post-invalid-utf8", "POST", P, 400, {BODY}, data=b'{"title": "\xc3\x28"}')
case("post-duplicate-title", "POST", P, 400, {"title"}, data='{"title": "a", "body": "b", "title": "c"}',
     exact=True)
case("post-lone-surrogate-title", "POST", P, 400, {"title"}, data='{"title": "\\ud800"}', exact=True)
case("post-lone-surrogate-key", "POST", P, 400, {BODY}, data='{"title": "t", "\\udfff": "x"}', exact=True)
case("post-nested-too-deep", "POST", P, 400, {"body"}, data='{"title": "t", "body": ' + '{"a":' * 40 + "1" + "}" * 41,
     exact=True)
case("post-top-level-number", "POST", P, 400, {BODY}, data="1e999")
case("post-latin1", "POST", P, 400, {BODY}, data='{"title": "café"}'.encode("latin-1"))
case("post-empty-object", "POST", P, 400, {"title"}, json={}, exact=True)
case("post-missing-title", "POST", P, 400, {"title"}, json={"body": "no title"}, exact=True)
case("post-empty-title", "POST", P, 400, {"title"}, json={"title": ""}, exact=True)
case("post-blank-title", "POST", P, 400, {"title"}, json={"title": "   "}, exact=True)
case("post-title-too-long", "POST", P, 400, {"title"}, json={"title": "t" * 201}, exact=True)
case("post-body-too-long", "POST", P, 400, {"body"}, json={"title": "t", "body": "b" * 10_001}, exact=True)
case("post-title-and-body-too-long", "POST", P, 400, {"title", "body"},
     json={"title": "t" * 201, "body": "b" * 10_001}, exact=True)
case("post-title-list", "POST", P, 400, {"title"}, json={"title": ["x"]}, exact=True)
case("post-title-bool", "POST", P, 400, {"title"}, json={"title": True}, exact=True)
case("post-title-object", "POST", P, 400, {"title"}, json={"title": {"a": 1}}, exact=True)
case("post-title-null", "POST", P, 400, {"title"}, json={"title": None}, exact=True)
case("post-body-null", "POST", P, 400, {"body"}, json={"title": "t", "body": None}, exact=True)
case("post-body-list", "POST", P, 400, {"body"}, json={"title": "t", "body": ["b"]}, exact=True)
case("post-unknown-fields", "POST", P, 400, {"draft", "tags"},
     json={"title": "t", "tags": [], "draft": True}, exact=True, extra={"detail": UNKNOWN_FIELD})
case("post-read-only-fields", "POST", P, 400, {"id", "user_id", "updated_at"},
     json={"title": "t", "user_id": "1", "id": "2", "updated_at": "2025-01-01T00:00:00Z"}, exact=True,
     extra={"detail": READ_ONLY})
case("post-unknown-field-and-bad-title", "POST", P, 400, {"title", "colour"},
     json={"title": "", "colour": "red"}, exact=True)
case("post-nul-in-title", "POST", P, 400, {"title"}, json={"title": "a\u0000"}, exact=True)
case("post-nul-in-body", "POST", P, 400, {"body"}, json={"title": "t", "body": "\u0000"}, exact=True)
case("post-oversized-body", "POST", P, 413, {BODY}, json={"title": "t", "body": "b" * 70_000})
EDGE = '{"title": "t", "body": "%s"}'
case("post-oversized-one-byte-over-64k", "POST", P, 413, {BODY}, data=EDGE % ("b" * (64 * 1024 + 1 - len(EDGE % ""))))
case("post-exactly-64k-is-parsed", "POST", P, 400, {"body"}, data=EDGE % ("b" * (64 * 1024 - len(EDGE % ""))),
     exact=True)
case("post-text-plain", "POST", P, 415, {"Content-Type"}, data='{"title": "t"}', content_type="text/plain")
case("post-missing-content-type", "POST", P, 415, {"Content-Type"}, data='{"title": "t"}', content_type=None)
case("post-xml", "POST", P, 415, {"Content-Type"}, data="<title>t</title>", content_type="application/xml")
case("post-chunked-body", "POST", P, 411, {"Content-Length"}, data=[b'{"title": ', b'"chunked"}'])
case("post-unknown-user", "POST", "/users/{ghost}/posts", 404, {"user_id"}, json={"title": "t"})
case("post-user-beyond-63-bits", "POST", "/users/{huge}/posts", 404, {"user_id"}, json={"title": "t"})
case("post-user-30-digits", "POST", "/users/{long}/posts", 404, {"user_id"}, json={"title": "t"})

# --- post updates: PUT/PATCH/DELETE /users/{id}/posts/{post_id} -----------------------------------
PD = "/users/{user}/posts/{post}"
case("put-post-missing-title", "PUT", PD, 400, {"title"}, json={"body": "b"}, exact=True)
case("put-post-malformed-json", "PUT", PD, 400, {BODY}, data="{,}")
case("patch-post-title-too-long", "PATCH", PD, 400, {"title"}, json={"title": "t" * 201}, exact=True)
case("patch-post-body-too-long", "PATCH", PD, 400, {"body"}, json={"body": "b" * 10_001}, exact=True)
case("patch-post-unknown-field", "PATCH", PD, 400, {"likes"}, json={"title": "x", "likes": 3}, exact=True)
case("patch-post-read-only-user-id", "PATCH", PD, 400, {"user_id"}, json={"user_id": "{other}"}, exact=True)
case("patch-post-nul-in-body", "PATCH", PD, 400, {"body"}, json={"body": "a\u0000b"}, exact=True)
case("patch-post-top-level-array", "PATCH", PD, 400, {BODY}, data="[]")
case("patch-post-oversized-body", "PATCH", PD, 413, {BODY}, json={"body": "b" * 70_000})
case("patch-post-text-plain", "PATCH", PD, 415, {"Content-Type"}, data='{"title": "x"}', content_type="text/plain")
case("patch-unknown-post", "PATCH", "/users/{user}/posts/{ghost}", 404, {"post_id"}, json={"title": "x"})
case("put-post-beyond-63-bits", "PUT", "/users/{user}/posts/{huge}", 404, {"post_id"}, json={"title": "x"})
case("patch-post-of-another-user", "PATCH", "/users/{other}/posts/{post}", 404, {"post_id"}, json={"title": "x"})
case("delete-unknown-post", "DELETE", "/users/{user}/posts/{ghost}", 404, {"post_id"})
case("delete-post-of-another-user", "DELETE", "/users/{other}/posts/{post}", 404, {"post_id"})
case("delete-post-beyond-64-bits", "DELETE", "/users/{user}/posts/{huge64}", 404, {"post_id"})

# --- reads: ids ------------------------------------------------------------------------------------
case("get-unknown-user", "GET", "/users/{ghost}", 404, {"user_id"})
case("get-user-id-zero", "GET", "/users/0", 404, {"user_id"})
case("get-user-max-id", "GET", f"/users/{MAX_ID}", 404, {"user_id"})
case("get-user-beyond-63-bits", "GET", "/users/{huge}", 404, {"user_id"})
case("get-user-beyond-64-bits", "GET", "/users/{huge64}", 404, {"user_id"})
case("get-user-30-digits", "GET", "/users/{long}", 404, {"user_id"})
case("get-posts-of-unknown-user", "GET", "/users/{ghost}/posts", 404, {"user_id"})
case("get-posts-of-user-beyond-63-bits", "GET", "/users/{huge}/posts", 404, {"user_id"})
case("get-unknown-post", "GET", "/users/{user}/posts/{ghost}", 404, {"post_id"})
case("get-post-beyond-63-bits", "GET", "/users/{user}/posts/{huge}", 404, {"post_id"})
case("get-post-of-user-beyond-63-bits", "GET", "/users/{huge}/posts/{post}", 404, {"user_id"})
case("get-post-of-another-user", "GET", "/users/{other}/posts/{post}", 404, {"post_id"})

# --- reads: limit, cursor, unknown parameters ------------------------------------------------------
for lists in ("/users", "/users/{user}/posts"):
    tag = "users" if lists == "/users" else "posts"
    for i, raw in enumerate(["0", "101", "-1", "abc", "1.5", "1e2", "%00", "5%00", "%D9%A1", "%C2%B2",
                             "99999999999999999999", "+5", "0x10"]):
        case(f"{tag}-limit-{i}", "GET", f"{lists}?limit={raw}", 400, {"limit"}, exact=True)
    for i, raw in enumerate(["abc", "!!!!", "%00", "=", "A" * 300, "%FF%FE", cursor(), cursor(1, 2), "e30",
                             base64.urlsafe_b64encode(b'{"a": 1}').decode()]):
        case(f"{tag}-garbage-cursor-{i}", "GET", f"{lists}?cursor={raw}", 400, {"cursor"}, exact=True)
    case(f"{tag}-unknown-param", "GET", f"{lists}?sort=id", 400, {"sort"}, exact=True)
    case(f"{tag}-offset-param", "GET", f"{lists}?limit=5&offset=10", 400, {"offset"}, exact=True)
    case(f"{tag}-nul-param-name", "GET", f"{lists}?x%00=1", 400, {"x\u0000"}, exact=True)
    # A query parameter given twice is refused (which copy counts differs between frameworks).
    case(f"{tag}-limit-twice", "GET", f"{lists}?limit=1&limit=100", 400, {"limit"}, exact=True)
    case(f"{tag}-cursor-twice", "GET", f"{lists}?cursor=&cursor=", 400, {"cursor"}, exact=True)
for i, key in enumerate([[-1], [MAX_ID + 1], [1.5], [True], ["1"], [None], [[1]], ["2025-01-01T00:00:00Z", 1]]):
    case(f"users-out-of-range-cursor-{i}", "GET", f"/users?cursor={cursor(*key)}", 400, {"cursor"}, exact=True)
for i, key in enumerate([["2025-13-01T00:00:00Z", 1], ["2025-01-01T00:00:00+25:00", 1], ["2025-02-30T00:00:00Z", 1],
                         ["2025-01-01T00:00:00", 1], ["2025-01-01T00:00:00Z"], [123], ["2025-01-01T00:00:00Z", "1"],
                         ["2025-01-01T00:00:00Z", -5], ["2025-01-01T00:00:00Z", MAX_ID + 1],
                         ["2025-01-01T00:00:00Z\u0000", 1], ["not a time", 1], [None, 1],
                         ["\uff12\uff10\uff12\uff15-01-01T00:00:00Z", 1]]):
    case(f"posts-out-of-range-cursor-{i}", "GET", f"/users/{{user}}/posts?cursor={cursor(*key)}", 400, {"cursor"},
         exact=True)

case("posts-since-twice", "GET", "/users/{user}/posts?since=2026-01-01T00:00:00Z&since=2026-01-02T00:00:00Z", 400,
     {"since"}, exact=True)
case("search-q-twice", "GET", "/search/posts?q=one&q=two", 400, {"q"}, exact=True)
case("search-limit-twice", "GET", "/search/posts?q=one&limit=5&limit=5", 400, {"limit"}, exact=True)

# --- reads: time ranges ---------------------------------------------------------------------------
BAD_TIMES = {
    "words": "yesterday", "date-only": "2025-01-01", "year-0": "0000-01-01T00:00:00Z",
    "month-13": "2025-13-01T00:00:00Z", "feb-30": "2025-02-30T00:00:00Z", "hour-25": "2025-01-01T25:00:00Z",
    "missing-offset": "2025-01-01T00:00:00", "offset-25h": "2025-01-01T00:00:00%2B25:00",
    "year-1": "0001-01-01T00:00:00Z", "year-9999": "9999-12-31T23:59:59Z", "year-10000": "10000-01-01T00:00:00Z",
    "nul": "%00", "trailing-nul": "2025-01-01T00:00:00Z%00", "too-long": "2" * 65, "epoch-number": "1735689600",
    "fullwidth-digits": "%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%95-01-01T00:00:00Z",
    "arabic-indic-digits": "%D9%A2%D9%A0%D9%A2%D9%A5-01-01T00:00:00Z",
}
for bound in ("since", "until"):
    for tag, raw in BAD_TIMES.items():
        case(f"{bound}-{tag}", "GET", f"/users/{{user}}/posts?{bound}={raw}", 400, {bound}, exact=True)
case("since-after-until", "GET", "/users/{user}/posts?since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
     400, {"since"})
case("since-after-until-by-offset", "GET",
     "/users/{user}/posts?since=2026-01-01T12:00:00Z&until=2026-01-01T12:00:00%2B01:00", 400, {"since"})
case("bad-since-and-bad-limit", "GET", "/users/{user}/posts?since=nope&limit=0", 400, {"limit"})


# --- fixtures and the check -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def dbs(stack, stack_config):
    """Read-only connections to the stack's data primary and meta databases."""
    with psycopg.connect(stack_config.data_database_url, autocommit=True) as data, \
            psycopg.connect(stack_config.meta_db_url, autocommit=True) as meta:
        yield data, meta


@pytest.fixture(scope="module")
def target(api_url):
    """A user with one post, and another user, that every case aims at."""
    with requests.Session() as http:
        users = []
        for who in ("target", "other"):
            name = f"bi_{who}_{SUFFIX}"
            response = http.post(f"{api_url}/users", json={"username": name, "email": f"{name}@example.org",
                                                           "password": "correct-horse"}, timeout=30)
            assert response.status_code == 201, response.text
            users.append(response.json()["data"])
        post = http.post(f"{api_url}/users/{users[0]['id']}/posts", json={"title": "target", "body": "body"},
                         timeout=10)
        assert post.status_code == 201, post.text
        ghost = int(post.json()["data"]["id"]) + 1  # a well-formed snowflake that nothing holds
    return {"user": users[0]["id"], "other": users[1]["id"], "post": post.json()["data"]["id"], "ghost": ghost,
            "huge": MAX_ID + 1, "huge64": 2**64, "long": "9" * 30}


def snapshot(dbs, target):
    data, meta = dbs
    one = lambda conn, sql, *args: conn.execute(sql, args).fetchall()  # noqa: E731
    return {
        "users": one(data, "SELECT count(*), max(id), max(updated_at) FROM api_user"),
        "posts": one(data, "SELECT count(*), max(id), max(updated_at) FROM api_post"),
        "target_user": one(data, "SELECT username, email, name, bio, post_count, updated_at FROM api_user "
                                 "WHERE id = %s", int(target["user"])),
        "target_post": one(data, "SELECT user_id, title, body, updated_at FROM api_post WHERE id = %s",
                           int(target["post"])),
        "accounts": one(meta, "SELECT state, count(*), max(user_id) FROM meta_account GROUP BY state ORDER BY state"),
        "target_account": one(meta, "SELECT username, email, state, password FROM meta_account WHERE user_id = %s",
                              int(target["user"])),
    }


def _fill(value, name, ctx):
    if isinstance(value, str):
        return value.replace(NAME, name).format(**ctx) if "{" in value else value.replace(NAME, name)
    if isinstance(value, dict):
        return {k: _fill(v, name, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, name, ctx) for v in value]
    return value


def send(http, api_url, case: Case, name: str, ctx: dict):
    url = api_url + case.path.format(**ctx)
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    kwargs = {}
    if case.json is not MISSING:
        kwargs["data"] = json.dumps(_fill(case.json, name, ctx)).encode()
    elif isinstance(case.data, list):
        kwargs["data"] = iter(case.data)  # no Content-Length: Transfer-Encoding: chunked
    elif case.data is not None:
        kwargs["data"] = case.data.encode() if isinstance(case.data, str) else case.data
    return http.request(case.method, url, headers=headers, timeout=30, **kwargs)


def assert_problem(response, status, fields, exact=False):
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert response.status_code == status, response.text[:500]
    assert response.headers["Content-Type"].split(";")[0].strip() == "application/problem+json"
    body = response.json()
    for member, kind in (("type", str), ("title", str), ("status", int), ("detail", str)):
        assert isinstance(body.get(member), kind), f"{member} missing in {body}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body.get("request_id") == response.headers["X-Request-Id"]
    errors = body.get("errors")
    assert isinstance(errors, list) and errors, body
    assert all(isinstance(e.get("field"), str) and isinstance(e.get("detail"), str) for e in errors)
    named = {e["field"] for e in errors}
    if exact:
        assert named == fields, body
    else:
        assert fields <= named, body
    return body


@pytest.mark.parametrize("case", C)
def test_bad_input(http, api_url, target, dbs, case: Case):
    name = f"b{abs(hash(case.id)) % 10**8}_{SUFFIX}"
    before = snapshot(dbs, target)
    user_url = f"{api_url}/users/{target['user']}"
    user_before = http.get(user_url, timeout=10).json()["data"] if case.method != "GET" else None
    response = send(http, api_url, case, name, target)
    body = assert_problem(response, case.status, case.fields, case.exact)
    if "detail" in case.extra:
        assert all(e["detail"] == case.extra["detail"] for e in body["errors"]), body
    if "type" in case.extra:
        assert body["type"] == "https://workbench.local/problems/" + case.extra["type"], body
    # Nothing half-written: not a row, not an account, not a counter, not a timestamp.
    assert snapshot(dbs, target) == before
    if user_before is not None:  # and over HTTP: the target user, its post_count included, is unchanged
        assert http.get(user_url, timeout=10).json()["data"] == user_before
    data, meta = dbs
    assert meta.execute("SELECT count(*) FROM meta_account WHERE username = %s OR email = %s",
                        (name, f"{name}@example.org")).fetchone()[0] == 0
    assert data.execute("SELECT count(*) FROM api_user WHERE username = %s", (name,)).fetchone()[0] == 0


def test_every_unknown_field_is_listed(http, api_url):
    unknown = [f"extra_{i}" for i in range(12)]
    response = http.post(f"{api_url}/users", json={"username": "whatever_name", "email": "w@example.org",
                                                    "password": "correct-horse", **{k: 1 for k in unknown}},
                         timeout=10)
    body = assert_problem(response, 400, set(unknown), exact=True)
    assert {e["pointer"] for e in body["errors"]} == {f"#/{k}" for k in unknown}
    assert all(e["in"] == "body" for e in body["errors"])


def test_failed_sign_ups_leave_the_username_and_email_free(http, api_url):
    name = f"free_{SUFFIX}"
    email = f"{name}@example.org"
    good = {"username": name, "email": email, "password": "correct-horse"}
    attempts = [
        http.post(f"{api_url}/users", json={**good, "password": "short"}, timeout=10),
        http.post(f"{api_url}/users", json={**good, "role": "admin"}, timeout=10),
        http.post(f"{api_url}/users", json={**good, "bio": "x\u0000"}, timeout=10),
        http.post(f"{api_url}/users", json={**good, "bio": "b" * 70_000}, timeout=10),
        http.post(f"{api_url}/users", data=json.dumps(good), headers={"Content-Type": "text/plain"}, timeout=10),
        http.post(f"{api_url}/users", data=iter([json.dumps(good).encode()]),
                  headers={"Content-Type": "application/json"}, timeout=10),
    ]
    assert [r.status_code for r in attempts] == [400, 400, 400, 413, 415, 411]
    assert http.get(f"{api_url}/users?limit=100", timeout=10).status_code == 200
    created = http.post(f"{api_url}/users", json=good, timeout=30)
    assert created.status_code == 201, created.text
    assert (created.json()["data"]["username"], created.json()["data"]["email"]) == (name, email)


def test_valid_edge_values_are_accepted(http, api_url, new_user):
    """The other side of the boundaries: exactly at the limits is fine."""
    user = new_user(name="n" * 100, bio="b" * 2000)
    assert len(user["name"]) == 100 and len(user["bio"]) == 2000
    for limit in ("1", "100"):
        assert http.get(f"{api_url}/users?limit={limit}", timeout=10).status_code == 200
    posts = f"{api_url}/users/{user['id']}/posts"
    ok = http.post(posts, json={"title": "t" * 200, "body": "b" * 10_000}, timeout=10)
    assert ok.status_code == 201, ok.text
    for query in ("since=0002-01-01T00:00:00Z", "until=9998-12-31T23:59:59Z",
                  "since=2025-01-01T00:00:00%2B14:00&until=2025-01-01T00:00:00-12:00",
                  "since=2026-01-01T00:00:00Z&until=2026-01-01T00:00:00Z", "since=&until=", "cursor="):
        response = http.get(f"{posts}?{query}", timeout=10)
        assert response.status_code == 200, (query, response.text)
    assert http.get(f"{posts}?since=2025-01-01T00:00:00.123456%2B05:30", timeout=10).status_code == 200


ODD_REQUESTS = [
    ("GET", "/users/abc"), ("GET", "/users/-1"), ("GET", "/users/1.5"), ("GET", "/users/%00"),
    ("GET", "/users/1/posts/abc"), ("GET", "/users/"), ("GET", "/nothing"), ("DELETE", "/users"),
    ("PUT", "/users"), ("PATCH", "/users/{user}/posts"), ("POST", "/users/{user}"),
    ("POST", "/users/{user}/posts/{post}"), ("GET", "/users?limit=" + "9" * 4000),
    ("GET", "/users?cursor=" + "%00" * 100), ("GET", "/users/{user}/posts?since=" + "%FF" * 40),
]


@pytest.mark.parametrize("method,path", ODD_REQUESTS)
def test_odd_requests_never_give_5xx(http, api_url, target, method, path):
    response = http.request(method, api_url + path.format(**target), timeout=10,
                            **({"json": {}} if method in ("POST", "PUT", "PATCH") else {}))
    assert response.status_code < 500, response.text[:300]
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == response.status_code and body["title"] and body["detail"] and body["type"]


def test_refused_bodies_never_break_the_connection_through_caddy(api_url):
    """A body refused before it is read (413, 415, 411) is drained first. Without that, the app
    server closed connections with unread data in them: the 413's own response came back cut off,
    or the next request on the kept-alive connection got 502 from Caddy (2 in 60 of these rounds)."""
    good = {"username": "chunky", "email": "chunky@example.org", "password": "correct-horse"}
    body = json.dumps(good).encode()
    seen = collections.Counter()
    for _ in range(60):
        with requests.Session() as http:  # a new client connection each round, as in the failures seen
            seen[http.post(f"{api_url}/users", json={**good, "bio": "b" * 70_000}, timeout=10).status_code] += 1
            seen[http.post(f"{api_url}/users", data=body, headers={"Content-Type": "text/plain"},
                           timeout=10).status_code] += 1
            seen[http.post(f"{api_url}/users", data=iter([body[:20], body[20:]]),
                           headers={"Content-Type": "application/json"}, timeout=10).status_code] += 1
    assert seen == {413: 60, 415: 60, 411: 60}, seen


def test_a_state_valkey_error_is_a_503_problem_not_a_500():
    """An id lease or a queue write failing because the state Valkey is down (a worker's first post
    after it died) is an outage the client may retry, not a bug."""
    import redis

    from api.gateway.errors import exception_handler

    response = exception_handler(redis.ConnectionError("Connection refused"), {"request": None})
    assert response.status_code == 503 and response["Retry-After"] == "1" and response.is_problem
    assert response.content_type == "application/problem+json"  # the header is set once rendered
    assert response.data["status"] == 503 and "state store" in response.data["detail"]
