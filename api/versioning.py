"""API versions: v2's representation, made from v1's in this one place, and v1's lifecycle headers.

v2 (api/views/v2.py) runs v1's views, services and selectors unchanged; each v2 handler passes
v1's answer through `respond` below on its way out. What differs; everything else (request bodies,
validation, status codes, problem documents, the other headers) is the same:

| | v1 | v2 |
|---|---|---|
| `created_at`, `updated_at`, `meta.timestamp` | RFC 3339 strings in UTC with microseconds (`2026-01-31T12:00:00.123456Z`) | Unix epoch milliseconds, integers (`1769860800123`): below 2^53, so exact as a JavaScript number |
| a post's owner | `user_id` | `author`: `{id, username, name}` |
| `since`, `until` (query) | RFC 3339 | RFC 3339, or epoch milliseconds |
| `ETag` | `"<hash of data>"` | `"v2-<hash of data>"`: never equal to a v1 tag, not even for equal `data` (an empty page) |
| `Location`, `next` | `/api/v1/...` | `/api/v2/...` |

v2's timestamps drop the microseconds (floor to the millisecond). So that a v2 client can hand a
post's `created_at` back as `until` and get that post, an `until` in milliseconds covers its whole
millisecond (up to .999999 s within it); a `since` starts at its first microsecond.

Why only v1's form is cached. The cache (api/caching) holds v1's rendered `data`, and every v2
response is made from it on the way out. v2 embeds a post's author, so caching v2's bytes would
make every cached page or post that embeds a user stale when that user changes: the user's own
posts pages (which writes.py rightly leaves alone on a user update, since v1 pages do not embed the
user) and any search page that shows one of their posts (search pages are not per user at all).
Instead, each author is read through the entry GET /users/{id} uses (reads.user_entry, with the
L1 in front of it). A user update already invalidates that entry on every app server
(writes.user_changed; the L1 by pub/sub), or replaces it in write-through and write-behind, so a
v2 response never embeds an older author than GET /api/v1/users/{id} would show, with no new key
and no new invalidation to get wrong. The price: a v2 response parses v1's bytes, transforms and
renders them again, and looks up each distinct author (an L1 hit or a Valkey round trip; those
that miss are read in one query per shard and fill their users' entries for the next reader). v2 posts pages are stored under their
own keys (a page's key is its URL, and its `next` link differs), holding v1's form.

v1's lifecycle: with the topology's `versioning.v1_deprecation` set, v1 responses of the routes
v2 also serves carry `Deprecation` (RFC 9745: a structured-field date, `@<Unix seconds>`), a
`Link` to the v2 twin (rel="successor-version", RFC 5829) and to the API docs (rel="deprecation",
RFC 9745), and with `versioning.v1_sunset` also `Sunset` (RFC 8594: an HTTP-date).
"""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone

from django.urls import Resolver404, resolve
from django.utils.http import http_date
from rest_framework.response import Response

from api import timing
from api.caching import reads, request as cache_request
from api.gateway.envelope import etag_for, render_data
from api.gateway.errors import FieldError, NotFound
from workbench import topology

V1, V2 = "/api/v1/", "/api/v2/"
DOCS = "/api/docs"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MILLISECOND = timedelta(milliseconds=1)
TIMES = ("created_at", "updated_at")
# Shapes of a response's `data`, as v1 makes it; v2's views name theirs (api/views/v2.py).
SHAPES = ("user", "user_page", "post", "post_page", "search_page", "profile")


# --- timestamps ----------------------------------------------------------------------------------
def millis(moment: datetime) -> int:
    """Unix epoch milliseconds, floored (integer arithmetic: no float rounding)."""
    return (moment - EPOCH) // MILLISECOND


def _millis_of(text: str | None) -> int | None:
    """A v1 timestamp (RFC 3339, as DRF renders it) in epoch milliseconds."""
    return None if text is None else millis(datetime.fromisoformat(text))


def meta_timestamp(moment: datetime) -> int:
    """v2's `meta.timestamp` (the envelope asks the view: api/gateway/envelope.py)."""
    return millis(moment)


def query_times(request) -> None:
    """v2's `since` and `until` given in epoch milliseconds, rewritten to RFC 3339 for v1's parser
    (api/pagination.py) before the view reads them. Anything else is left for that parser to
    accept or refuse, so both versions refuse the same bad values the same way."""
    query, changed = request.query_params, None
    for name, extra_us in (("since", 0), ("until", 999)):
        raw = query.get(name, "")
        if not (raw.isascii() and raw.isdigit()) or len(query.getlist(name)) != 1:
            continue
        moment = None
        if len(raw) <= 16:
            try:
                moment = EPOCH + timedelta(microseconds=int(raw) * 1000 + extra_us)
            except OverflowError:  # past the year 9999
                pass
        if moment is None:
            raise FieldError(name, "Out of range: epoch milliseconds up to the year 9998, or an RFC 3339 "
                                   "date-time with an offset.")
        changed = changed if changed is not None else query.copy()
        changed[name] = moment.isoformat()
    if changed is not None:
        request._request.GET = changed  # what request.query_params reads


# --- the representation --------------------------------------------------------------------------
def user(data: dict) -> dict:
    return {key: _millis_of(value) if key in TIMES else value for key, value in data.items()}


def post(data: dict, author: dict) -> dict:
    """v1's post with `author` in place of `user_id` (where `user_id` was: after `id`)."""
    out = {}
    for key, value in data.items():
        if key == "user_id":
            out["author"] = author
        else:
            out[key] = _millis_of(value) if key in TIMES else value
    return out


def author_of(user_data: dict) -> dict:
    return {"id": user_data["id"], "username": user_data["username"], "name": user_data["name"]}


def to_v2(shape: str, data: dict, authors: dict[str, dict]) -> dict:
    """v1's `data` of this shape as v2's; `authors` by user id (`fetch_authors`). Pure."""
    if shape == "user":
        return user(data)
    if shape == "user_page":
        return {**data, "results": [user(u) for u in data["results"]]}
    if shape == "post":
        return post(data, authors[data["user_id"]])
    if shape in ("post_page", "search_page"):
        return {**data, "results": [post(p, authors[p["user_id"]]) for p in data["results"]]}
    if shape == "profile":  # the read model's document: the posts' author is its own user
        author = author_of(data["user"])
        return {**data, "user": user(data["user"]), "latest_posts": [post(p, author) for p in data["latest_posts"]]}
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _owners(shape: str, data: dict) -> list[str]:
    if shape == "post":
        return [data["user_id"]]
    if shape in ("post_page", "search_page"):
        return list(dict.fromkeys(p["user_id"] for p in data["results"]))
    return []


def fetch_authors(user_ids: list[str]) -> dict[str, dict]:
    """Each author as GET /users/{id} would show the user: through the user's cache entry when the
    cache is on, and from the database for the rest, filling their entries as GET /users/{id}
    does (same key, bytes and ETag). One author (a page, a post) is read like GET /users/{id}
    reads it, query cache included; several (a search page) in one query per shard. X-Cache keeps
    describing the response's own entry, made worse (never better) by an author that missed."""
    from api import selectors
    from api.serializers import UserSerializer
    found, missing = {}, {}
    with _x_cache_kept():
        for user_id in user_ids:
            entry = reads.user_entry(int(user_id))
            hit = reads.lookup(entry) if entry is not None else None
            if hit is not None:
                found[user_id] = author_of(json.loads(hit.data))
            else:
                missing[user_id] = entry
        rows = selectors.users_by_id(user_ids=[int(u) for u in missing]) if len(missing) > 1 else {}
        users = {}
        for user_id in missing:
            try:
                users[user_id] = rows.get(int(user_id)) or selectors.user_get(user_id=int(user_id))
            except NotFound:  # deleted while this response was being made
                found[user_id] = {"id": user_id, "username": None, "name": None}
        # One serializer for them all: each instance of one costs a deep copy of its fields.
        for user_id, data in zip(users, UserSerializer(list(users.values()), many=True).data):
            entry = missing[user_id]
            if entry is not None:
                with timing.timed("render"):
                    rendered, tag = render_data(data), etag_for(data)
                reads.fill(entry, rendered, tag)
            found[user_id] = author_of(data)
    return found


_WORSE = {"hit-l1": 0, "hit": 1, "miss": 2}


@contextlib.contextmanager
def _x_cache_kept():
    state = cache_request.current()
    before = state.status if state is not None else None
    try:
        yield
    finally:
        if state is not None and state.status != "down":
            after = state.status
            worse = before in _WORSE and after in _WORSE and _WORSE[after] > _WORSE[before]
            state.status = after if worse else before


def etag(data) -> str:
    """v2's ETag: v1's hash of v2's data, marked, so no v2 tag ever equals a v1 tag."""
    return '"v2-' + etag_for(data)[1:]


def respond(view, request, response, shape: str | None):
    """v1's answer to this request, as v2's. A GET's v1 form goes into the cache first, exactly as
    v1 would store it (ApiView.fill_cache)."""
    location = response.get("Location", "")
    if location.startswith(V1):
        response["Location"] = V2 + location[len(V1):]
    if shape is None or not isinstance(response, Response) or response.status_code not in (200, 201):
        return response  # 204, a redirect, an avatar: nothing versioned in it
    safe = request.method in ("GET", "HEAD")
    if safe and response.status_code == 200:
        view.fill_cache(response)
    rendered = getattr(response, "rendered_data", None)
    with timing.timed("render"):
        data = json.loads(rendered) if rendered is not None else response.data
    authors = fetch_authors(_owners(shape, data))
    with timing.timed("render"):
        response.data = to_v2(shape, data, authors)
        response.rendered_data = response.cache_entry = None
        response.etag = etag(response.data) if safe else None
    return response


# --- v1's lifecycle headers ----------------------------------------------------------------------
def v1_lifecycle(request, response) -> None:
    """Deprecation, Sunset and Link on a v1 response whose route v2 serves too, when the topology
    says so (workbench.topology.Versioning). Routes only v1 has (admin/) get none."""
    settings = topology.current().topology.versioning
    if settings.v1_deprecation is None or not request.path.startswith(V1):
        return
    successor = V2 + request.path[len(V1):]
    try:
        resolve(successor)
    except Resolver404:
        return
    response["Deprecation"] = f"@{_seconds(settings.v1_deprecation)}"
    if settings.v1_sunset is not None:
        response["Sunset"] = http_date(_seconds(settings.v1_sunset))
    response["Link"] = (f'<{request.build_absolute_uri(successor)}>; rel="successor-version", '
                        f'<{request.build_absolute_uri(DOCS)}>; rel="deprecation"; type="text/html"')


def _seconds(stored: str) -> int:
    return int(datetime.fromisoformat(stored).timestamp())
