"""Where one request's milliseconds went, for its `Server-Timing` header (DESIGN.md section 2).

Parts: `gateway` (the in-process gateway's own work before and after the view, the rate limiter's
one Valkey round trip included), `cache` (calls to the caching layers, api.caching.request), `db`
(database queries, including any emulated round trip), `render` (turning data into JSON bytes), and
`app`, the whole time in the app server. `queue` (api.gateway.shedding) is not part of `app`: the
time the request waited between Caddy's stamp and a worker picking it up. What `app` has beyond the parts is Python in the view:
routing, serializers, the framework.
"""
from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager

PARTS = ("queue", "gateway", "db", "render")

_spent: contextvars.ContextVar[dict | None] = contextvars.ContextVar("timing", default=None)


def begin():
    return _spent.set({})


def end(token) -> dict:
    spent = _spent.get() or {}
    _spent.reset(token)
    return spent


def add(part: str, seconds: float) -> None:
    spent = _spent.get()
    if spent is not None:
        spent[part] = spent.get(part, 0.0) + seconds


@contextmanager
def timed(part: str):
    started = time.perf_counter()
    try:
        yield
    finally:
        add(part, time.perf_counter() - started)


def header_parts(spent: dict) -> str:
    """`, db;dur=1.23, render;dur=0.10` for the parts this request spent time on."""
    return "".join(f", {part};dur={spent[part] * 1000:.2f}" for part in PARTS if part in spent)
