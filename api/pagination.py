"""Keyset (cursor) pagination and the query parameters of lists, validated strictly.

A cursor is an opaque base64url token of the last row's sort key. Unlike OFFSET, each page costs
one index range scan however deep the reader goes, and rows written meanwhile do not shift pages.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from django.utils.dateparse import parse_datetime

from api.gateway.errors import FieldError
from api.routing.ids import MAX_ID

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
# Years PostgreSQL's timestamptz and Python's datetime both hold without overflow.
MIN_YEAR, MAX_YEAR = 1, 9999


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: tuple | None  # the sort key of the last row of the previous page


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit():
        raise FieldError("limit", f"Must be an integer from 1 to {MAX_LIMIT}.")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise FieldError("limit", f"Must be an integer from 1 to {MAX_LIMIT}; got {value}.")
    return value


def encode_cursor(key: tuple) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key), separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(raw: str, kinds: tuple[str, ...]) -> tuple:
    """Decode and type-check a cursor; `kinds` names each element: "id" or "time"."""
    bad = FieldError("cursor", "Not a cursor this API issued; use the `next` URL of a previous page.")
    if len(raw) > 200 or not raw.isascii():
        raise bad
    try:
        values = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(kinds):
        raise bad
    key = []
    for kind, value in zip(kinds, values):
        if kind == "id":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
                raise bad
            key.append(value)
        else:
            # ASCII only: parse_datetime's \d would take other scripts' digits (２０２６) too.
            text = value if isinstance(value, str) and value.isascii() and "\x00" not in value else None
            try:
                moment = parse_datetime(text) if text else None
            except ValueError:  # well-formed but impossible, like month 13 or offset +25:00
                moment = None
            if moment is None or moment.tzinfo is None:
                raise bad
            key.append(moment)
    return tuple(key)


def page_params(query, kinds: tuple[str, ...], extra: set[str] = frozenset()) -> PageParams:
    _reject_unknown(query, {"limit", "cursor", *extra})
    cursor = query.get("cursor")
    return PageParams(limit=parse_limit(query.get("limit")),
                      after=decode_cursor(cursor, kinds) if cursor not in (None, "") else None)


def parse_time(query, name: str) -> datetime | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    detail = "Must be an ISO 8601 date-time with a UTC offset, e.g. 2026-01-31T12:00:00Z."
    if len(raw) > 64 or "\x00" in raw or not raw.isascii():  # not `２０２６`: parse_datetime's \d takes it
        raise FieldError(name, detail)
    try:
        moment = parse_datetime(raw)
    except ValueError:  # well-formed but impossible, like month 13
        raise FieldError(name, detail) from None
    if moment is None or moment.tzinfo is None:
        raise FieldError(name, detail)
    if not MIN_YEAR < moment.year < MAX_YEAR:
        raise FieldError(name, f"Out of range: years {MIN_YEAR + 1} to {MAX_YEAR - 1} only.")
    return moment


def time_range(query) -> tuple[datetime | None, datetime | None]:
    since, until = parse_time(query, "since"), parse_time(query, "until")
    if since and until and since > until:
        raise FieldError("since", "`since` must not be later than `until`.")
    return since, until


def _reject_unknown(query, allowed: set[str]) -> None:
    """Unknown parameters are refused, and so is a parameter given twice (`limit=1&limit=500`):
    which copy counts differs between frameworks and proxies, as with duplicate JSON keys."""
    for name in query:
        if name not in allowed:
            raise FieldError(name, f"Unknown query parameter; this list takes {', '.join(sorted(allowed))}.")
        if len(query.getlist(name)) > 1:
            raise FieldError(name, "Given more than once; give each query parameter once.")


def next_url(request, rows: list, limit: int, key) -> str | None:
    """The next page's URL if there may be more rows (we fetch limit+1 to know)."""
    if len(rows) <= limit:
        return None
    params = request.query_params.copy()
    params["cursor"] = encode_cursor(key(rows[limit - 1]))
    return request.build_absolute_uri(request.path) + "?" + params.urlencode()
