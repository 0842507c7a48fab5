"""Properties (hypothesis) of ids, cursors, time ranges and payloads, beyond the fixed cases of
tests/test_bad_input.py and tests/test_hostile_strings.py. First the pure parsers, with many
examples each (no stack needed): whatever the input, they answer a value or the API's own refusal,
never another exception, and what the API writes it reads back. Then the same properties over HTTP
through Caddy, fewer examples since each is a request: never a 5xx, a refusal is problem+json naming
the parameter, a time range returns only posts inside it, and a post written is read back as sent."""
import base64
import json
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from api.gateway.errors import FieldError
from api.gateway.parsers import MAX_DEPTH, BodyError, StrictJSONParser
from api.pagination import decode_cursor, encode_cursor, parse_time
from api.routing.ids import MAX_ID
from hostile import SOAK, Plain, new_member, record

PURE = settings(max_examples=2000 if SOAK else 300, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
HTTP = settings(max_examples=200 if SOAK else 25, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))
COUNTS: dict = {}


def tick(name: str) -> None:
    """Count the examples a property ran (recorded at the module's end, for docs/reliability.md)."""
    COUNTS[name] = COUNTS.get(name, 0) + 1


AWARE = st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31),
                     timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=14)),
                                                timezone(timedelta(hours=-12)), timezone(timedelta(minutes=330))]))
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
JSON = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                            max_size=4), max_leaves=20)


# --- pure: the parsers --------------------------------------------------------------------------------
@PURE
@given(raw=st.text(max_size=300) | st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode()))
@example(raw=base64.urlsafe_b64encode(b"[1e999]").decode())
def test_any_text_as_a_cursor_is_a_key_or_the_apis_refusal(raw):
    tick("cursor: arbitrary text")
    for kinds in (("id",), ("time", "id")):
        try:
            key = decode_cursor(raw, kinds)
        except FieldError as refused:
            assert refused.field == "cursor"
            continue
        assert len(key) == len(kinds)
        assert all(0 <= v <= MAX_ID for v, kind in zip(key, kinds) if kind == "id")
        assert all(v.tzinfo is not None for v, kind in zip(key, kinds) if kind == "time")


@PURE
@given(user=st.integers(0, MAX_ID), moment=AWARE)
def test_every_cursor_the_api_writes_it_reads_back(user, moment):
    tick("cursor: round trip")
    assert decode_cursor(encode_cursor((user,)), ("id",)) == (user,)
    assert decode_cursor(encode_cursor((moment.isoformat(), user)), ("time", "id")) == (moment, user)


@PURE
@given(raw=st.text(max_size=80))
@example(raw="2026-01-01T00:00:00+25:00")
@example(raw="\uff12\uff10\uff12\uff16-01-01T00:00:00Z")
def test_any_text_as_a_time_bound_is_a_time_or_the_apis_refusal(raw):
    tick("time: arbitrary text")
    try:
        moment = parse_time({"since": raw}, "since")
    except FieldError as refused:
        assert refused.field == "since"
        return
    assert moment is None or (moment.tzinfo is not None and 1 < moment.year < 9999)


@PURE
@given(moment=AWARE)
def test_every_rfc3339_time_reads_back_as_the_same_instant(moment):
    tick("time: round trip")
    assert parse_time({"until": moment.isoformat()}, "until") == moment


def _parse(raw: bytes):
    import io
    return StrictJSONParser().parse(io.BytesIO(raw))


@PURE
@given(raw=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def test_any_body_is_an_object_or_a_body_error(raw):
    tick("payload: arbitrary bytes and JSON")
    try:
        data = _parse(raw)
    except BodyError as refused:
        assert refused.field and refused.kind
        return
    assert isinstance(data, dict)


@PURE
@given(depth=st.integers(1, 3000), opening=st.sampled_from(["[", '{"a":']), field=st.sampled_from(["bio", "x"]))
def test_nesting_past_the_limit_is_refused_naming_the_field(depth, opening, field):
    tick("payload: nesting depth")
    closing = "]" if opening == "[" else "}"
    raw = ('{"%s": ' % field + opening * depth + "1" + closing * depth + "}").encode()
    try:
        data = _parse(raw)
    except BodyError as refused:
        assert depth + 1 > MAX_DEPTH and refused.kind == "body-too-deep"
        # Past the interpreter's recursion limit (about 1,000 levels, less the caller's own stack)
        # the decoder itself stops, before any field can be named.
        assert refused.field == field or (depth > 500 and refused.field == "(body)"), (depth, refused.field)
        return
    assert depth + 1 <= MAX_DEPTH and field in data


# --- over HTTP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def author(api_url):
    """A member with posts spread over time (created_at is the insert time: a few ms apart)."""
    user, token = new_member(api_url, "hp")
    with Plain() as http:
        posts = [http.post(f"{api_url}/users/{user['id']}/posts", json={"title": f"p{i}"}, headers=token,
                           timeout=10).json()["data"] for i in range(6)]
    return user["id"], token, posts


def _refusal(response, field: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert field in {e["field"] for e in response.json()["errors"]}, response.text[:300]


@HTTP
@given(raw=st.text(min_size=1, max_size=40) | st.integers(-2**70, 2**70).map(str))
@example(raw=str(MAX_ID))
@example(raw=str(MAX_ID + 1))
def test_any_user_id_in_the_path_is_a_user_or_a_404(api_url, raw):
    tick("http: ids in the path")
    with Plain() as http:
        response = http.get(f"{api_url}/users/{quote(raw, safe='')}", timeout=10)
    assert response.status_code in (200, 404), (raw, response.status_code, response.text[:200])
    if response.status_code == 404:
        assert response.headers["Content-Type"].startswith("application/problem+json")


@HTTP
@given(raw=st.text(max_size=60) | st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_any_cursor_over_http_is_a_page_or_a_400_naming_it(api_url, author, raw):
    tick("http: cursors")
    user_id = author[0]
    with Plain() as http:
        for path in ("/users", f"/users/{user_id}/posts"):
            response = http.get(f"{api_url}{path}", params={"cursor": raw, "limit": 2}, timeout=10)
            if response.status_code != 200:
                _refusal(response, "cursor")


def _bound(data, posts):
    """None, any time at all, or a post's own created_at (or a microsecond either side), in some offset."""
    near = st.sampled_from([datetime.fromisoformat(p["created_at"]) for p in posts]).flatmap(
        lambda moment: st.sampled_from([moment - timedelta(microseconds=1), moment, moment + timedelta(microseconds=1)]))
    zone = st.sampled_from([timezone.utc, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
    return data.draw(st.none() | AWARE | st.tuples(near, zone).map(lambda t: t[0].astimezone(t[1])))


@HTTP
@given(data=st.data())
def test_a_time_range_returns_exactly_the_posts_inside_it(api_url, author, data):
    tick("http: time ranges")
    user_id, _, posts = author
    since, until = _bound(data, posts), _bound(data, posts)
    params = {k: v.isoformat() for k, v in (("since", since), ("until", until)) if v is not None}
    with Plain() as http:
        response = http.get(f"{api_url}/users/{user_id}/posts", params={**params, "limit": 100}, timeout=10)
    if since and until and since > until:
        _refusal(response, "since")
        return
    assert response.status_code == 200, response.text[:300]
    inside = [p["id"] for p in posts
              if (since is None or datetime.fromisoformat(p["created_at"]) >= since)
              and (until is None or datetime.fromisoformat(p["created_at"]) <= until)]
    assert [p["id"] for p in response.json()["data"]["results"]] == inside[::-1], params


@HTTP
@given(body=st.dictionaries(st.sampled_from(["title", "body", "extra", "user_id"]), JSON, max_size=3)
       | st.fixed_dictionaries({"title": st.text(min_size=1, max_size=200), "body": st.text(max_size=300)}))
def test_a_post_payload_is_stored_as_sent_or_refused_naming_a_field(api_url, author, body):
    tick("http: post payloads")
    user_id, token, _ = author
    with Plain() as http:
        response = http.post(f"{api_url}/users/{user_id}/posts", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json", **token}, timeout=10)
        if response.status_code == 201:
            made = response.json()["data"]
            shown = http.get(f"{api_url}/users/{user_id}/posts/{made['id']}", timeout=10).json()["data"]
            # The title is trimmed (DRF's CharField default), the body kept as sent.
            assert (shown["title"], shown["body"]) == (body["title"].strip(), body.get("body", ""))
            assert set(body) <= {"title", "body"} and isinstance(body["title"], str)
            assert http.delete(f"{api_url}/users/{user_id}/posts/{made['id']}", headers=token,
                               timeout=10).status_code == 204
            return
    assert response.status_code == 400, (body, response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/problem+json")
    named = {e["field"] for e in response.json()["errors"]}
    assert named and named <= set(body) | {"title", "(body)"} | {n for n in named if "." in n}, (body, named)


def test_zz_record_the_counts():
    """Last in the module (pytest runs a module's tests in order): the examples each property ran."""
    assert COUNTS, "no property ran"
    record("hypothesis properties", **{k.replace(": ", "_").replace(" ", "_"): v for k, v in sorted(COUNTS.items())},
           total=sum(COUNTS.values()))
