"""Strings that attempt SQL injection, and Unicode tricks, over HTTP through Caddy: every one is
stored verbatim and harmlessly (parameterized queries, never string-built SQL), read back
byte-identical over the API and in the database itself, and the tables and their counts are what
they should be afterwards. NUL, which PostgreSQL text cannot hold, is a 400 naming the field
(tests/test_bad_input.py has a case per writable field). Query parameters with the same strings
are refused naming the parameter, or, for the search text, searched for as text. Also: every
writable text field has a length limit, counted in characters, astral ones included."""
import json
import secrets

import psycopg
import pytest
from rest_framework import serializers

from conftest import assert_problem, sign_up

HOSTILE = [
    "'; DROP TABLE api_user; --",
    '" OR 1=1 --',
    "' OR '1'='1",
    "Robert'); DROP TABLE api_post;--",
    "1; DELETE FROM api_post WHERE 1=1; --",
    "' UNION SELECT password, email FROM meta_account --",
    "$$; DROP TABLE api_user; $$",
    "\\'; DROP TABLE api_user; --",            # a backslash before the quote
    "E'\\x27'; SELECT pg_sleep(10); --",        # an escape-string literal, and a sleep
    "%' AND title LIKE '%_%",                   # LIKE wildcards
    "ʼ; DROP TABLE api_user; --",               # U+02BC, an apostrophe look-alike
    "＇ OR ＇1＇=＇1",                           # U+FF07, the fullwidth apostrophe
    "x\u202e; DROP TABLE api_user; --\u202cy",  # a right-to-left override
    "a\u200bb\u200dc\ufeffd\u2060e",            # zero-width space, joiner, BOM, word joiner
    "e\u0301 is not \u00e9",                    # combining accent vs precomposed: not normalized
    "😀 𝕏 \U0010fffd \U000e0041",              # astral characters, a tag character
    "line1\nline2\r\n\ttab\x01\x1f\x7fend",     # control characters other than NUL
    "\\u0000 and \\x00 written out, not a NUL",
    "<script>alert(1)</script> {{7*7}} ${jndi:ldap://x} %s %n",
    "'" * 100,                                  # at the name's limit of 100
]


@pytest.fixture(scope="module")
def dbs(stack, stack_config):
    with psycopg.connect(stack_config.data_database_url, autocommit=True) as data, \
            psycopg.connect(stack_config.meta_db_url, autocommit=True) as meta:
        yield data, meta


def counts(dbs) -> dict:
    data, meta = dbs
    return {"users": data.execute("SELECT count(*) FROM api_user").fetchone()[0],
            "posts": data.execute("SELECT count(*) FROM api_post").fetchone()[0],
            "accounts": meta.execute("SELECT count(*) FROM meta_account").fetchone()[0]}


def tables(dbs) -> set:
    data, meta = dbs
    return {data.execute("SELECT to_regclass('api_user')::text").fetchone()[0],
            data.execute("SELECT to_regclass('api_post')::text").fetchone()[0],
            meta.execute("SELECT to_regclass('meta_account')::text").fetchone()[0]}


def test_injection_strings_are_stored_verbatim_and_harmlessly(http, api_url, dbs):
    data, _ = dbs
    before = counts(dbs)
    assert tables(dbs) == {"api_user", "api_post", "meta_account"}
    user = sign_up(http, api_url, f"inj_{secrets.token_hex(4)}", name=HOSTILE[0], bio=HOSTILE[1])
    uid = user["id"]
    assert (user["name"], user["bio"]) == (HOSTILE[0], HOSTILE[1])
    made = []
    for text in HOSTILE:
        # As a user's name and bio...
        patched = http.patch(f"{api_url}/users/{uid}", json={"name": text[:100], "bio": text}, timeout=10)
        assert patched.status_code == 200, (text, patched.text)
        shown = http.get(f"{api_url}/users/{uid}", timeout=10).json()["data"]
        assert (shown["name"], shown["bio"]) == (text[:100], text)
        row = data.execute("SELECT name, bio FROM api_user WHERE id = %s", (int(uid),)).fetchone()
        assert row == (text[:100], text)
        # ...and as a post's title and body, sent as raw UTF-8 (no \\u escapes) this time.
        body = json.dumps({"title": text, "body": text}, ensure_ascii=False).encode()
        created = http.post(f"{api_url}/users/{uid}/posts", data=body, headers={"Content-Type": "application/json"},
                            timeout=10)
        assert created.status_code == 201, (text, created.text)
        made.append(created.json()["data"]["id"])
    for text, post_id in zip(HOSTILE, made):
        response = http.get(f"{api_url}/users/{uid}/posts/{post_id}", timeout=10)
        shown = response.json()["data"]
        assert (shown["title"], shown["body"]) == (text, text)
        assert json.dumps(shown["body"], ensure_ascii=False).encode() in response.content  # the very bytes
        row = data.execute("SELECT title, body, octet_length(body) FROM api_post WHERE id = %s",
                           (int(post_id),)).fetchone()
        assert row == (text, text, len(text.encode()))
    # Nothing dropped, nothing deleted, nothing extra: exactly one user, one account, and a post per string.
    assert tables(dbs) == {"api_user", "api_post", "meta_account"}
    after = counts(dbs)
    assert after == {"users": before["users"] + 1, "posts": before["posts"] + len(HOSTILE),
                     "accounts": before["accounts"] + 1}
    assert http.get(f"{api_url}/users/{uid}", timeout=10).json()["data"]["post_count"] == len(HOSTILE)
    # The posts page holds them all, newest first, as written.
    page = http.get(f"{api_url}/users/{uid}/posts?limit=100", timeout=10).json()["data"]["results"]
    assert [p["title"] for p in page] == HOSTILE[::-1]


def test_search_text_is_searched_for_never_run(http, api_url, dbs, new_user):
    before = counts(dbs)
    word = "wbi" + secrets.token_hex(6).translate(str.maketrans("0123456789", "ghijklmnop"))
    uid = new_user()["id"]
    post = http.post(f"{api_url}/users/{uid}/posts", json={"title": f"{word} '; DROP TABLE api_post; --"},
                     timeout=10).json()["data"]
    for text in HOSTILE + [f"{word}' OR 1=1 --", f"{word}\\", "'", "\\", "!:*&|()<->"]:
        response = http.get(f"{api_url}/search/posts", params={"q": text}, timeout=30)
        assert response.status_code == 200, (text, response.text[:300])
        assert isinstance(response.json()["data"]["results"], list)
    found = http.get(f"{api_url}/search/posts", params={"q": f"{word} drop table"}, timeout=30).json()["data"]
    assert [p["id"] for p in found["results"]] == [post["id"]]
    assert found["results"][0]["title"] == f"{word} '; DROP TABLE api_post; --"
    assert tables(dbs) == {"api_user", "api_post", "meta_account"}
    assert counts(dbs) == {**before, "users": before["users"] + 1, "posts": before["posts"] + 1,
                           "accounts": before["accounts"] + 1}


@pytest.mark.parametrize("query,field", [
    ("limit=1;DROP TABLE api_user", "limit"),
    ("limit=1 OR 1=1", "limit"),
    ("cursor=' OR '1'='1", "cursor"),
    ("since='; DROP TABLE api_post; --", "since"),
    ("until=2026-01-01T00:00:00Z' OR '1'='1", "until"),
    ("until=2026-01-01T00:00:00Z%00", "until"),
    ("since=%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96-01-01T00:00:00Z", "since"),  # fullwidth digits
    ("'; DROP TABLE api_user; --=1", "'; DROP TABLE api_user; --"),
])
def test_hostile_query_parameters_are_refused_naming_them(http, api_url, dbs, query, field):
    user = http.get(f"{api_url}/users?limit=1", timeout=10).json()["data"]["results"][0]
    assert_problem(http.get(f"{api_url}/users/{user['id']}/posts?{query}", timeout=10), 400, field)
    assert tables(dbs) == {"api_user", "api_post", "meta_account"}


def test_hostile_path_segments_match_no_route(http, api_url, dbs):
    for path in ("/users/1;DROP TABLE api_user", "/users/1%27%20OR%20%271%27=%271", "/users/1/posts/1%00",
                 "/users/%EF%BC%91"):
        response = http.get(api_url + path, timeout=10)
        assert response.status_code == 404 and response.headers["Content-Type"] == "application/problem+json"
    assert tables(dbs) == {"api_user", "api_post", "meta_account"}


def test_every_writable_text_field_has_a_length_limit():
    """A field added without one would be unbounded (the body cap is 64 KB); where the column is a
    varchar, the serializer's limit is within it, so a too-long value is a 400, not a database error."""
    from api.models import Post, User
    from api.serializers import PostSerializer, UserSerializer, UserUpdateSerializer
    checked = []
    for serializer, model in ((UserSerializer, User), (UserUpdateSerializer, User), (PostSerializer, Post)):
        for name, field in serializer().fields.items():
            if field.read_only or not isinstance(field, serializers.CharField):
                continue
            assert field.max_length, f"{serializer.__name__}.{name} has no max_length"
            column = {f.name: f for f in model._meta.fields}.get(name)
            if column is not None and getattr(column, "max_length", None):
                assert field.max_length <= column.max_length, f"{serializer.__name__}.{name}"
            checked.append(f"{serializer.__name__}.{name}")
    assert len(checked) == 10, checked  # username, email, name, bio, password; email, name, bio; title, body


@pytest.mark.parametrize("field,limit", [("name", 100), ("bio", 2000), ("title", 200), ("body", 10_000)])
def test_lengths_count_characters_not_bytes(http, api_url, member, field, limit):
    """4-byte characters: exactly the limit is stored whole (four times as many bytes), one more is a 400."""
    url = f"{api_url}/users/{member}" if field in ("name", "bio") else f"{api_url}/users/{member}/posts"
    method = "PATCH" if field in ("name", "bio") else "POST"
    extra = {} if field in ("name", "bio") else ({"title": "t"} if field == "body" else {})

    def send(value):
        body = json.dumps({**extra, field: value}, ensure_ascii=False).encode()
        return http.request(method, url, data=body, headers={"Content-Type": "application/json"}, timeout=10)

    fits = "𝕏" * (limit - 1) + "😀"
    response = send(fits)
    assert response.status_code in (200, 201), response.text[:300]
    assert response.json()["data"][field] == fits
    assert_problem(send(fits + "x"), 400, field)


@pytest.fixture(scope="module")
def member(api_url):
    import requests
    with requests.Session() as http:
        return sign_up(http, api_url, f"len_{secrets.token_hex(4)}")["id"]
