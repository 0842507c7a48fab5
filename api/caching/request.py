"""The cache's part of one request: what X-Cache says and how long the cache took (Server-Timing).

X-Cache values: `hit-l1` (served from this process's L1, api.caching.local), `hit` (served from the
cache), `miss` (looked, not there: read from the database),
`bypass` (nothing to cache: writes, lists, errors before a view), `off` (`cache.mode` is off),
`down` (a cache call failed, or failed moments ago; the request was served from the database).

X-Query-Cache (the query cache, api.caching.querycache, toggled by `cache.query_cache` on its own):
`off`, `bypass` (on, but no query of this request was cacheable: writes, lists), `hit` (every
cacheable query hit), `miss` (one or more missed), `down`; its time is the `qcache` part.
"""
from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager
from dataclasses import dataclass

from workbench import topology


@dataclass
class RequestCache:
    mode: str           # the topology's cache.mode when the request began: one mode for the whole request
    status: str         # what X-Cache will say
    spent_s: float = 0.0
    touched: bool = False  # whether the request spent time on the cache (Server-Timing gets a part)
    lock: tuple[str, str] | None = None  # a single-flight lock this request holds: (lock key, token)
    query: str = "off"         # what X-Query-Cache will say
    query_reads: bool = False  # this request's reads may use the query cache (it is on; GET or HEAD)
    query_spent_s: float = 0.0
    query_touched: bool = False


_current: contextvars.ContextVar[RequestCache | None] = contextvars.ContextVar("cache_request", default=None)


def begin(method: str = "GET"):
    mode = topology.current().topology.cache.mode
    state = RequestCache(mode, "off" if mode == "off" else "bypass")
    if topology.current().topology.cache.query_cache:
        state.query, state.query_reads = "bypass", method in ("GET", "HEAD")
    return _current.set(state)


def end(token) -> RequestCache:
    state = _current.get()
    _current.reset(token)
    return state


def mode() -> str:
    """This request's mode; outside a request (the reconciler, commands) the topology's."""
    state = _current.get()
    return state.mode if state is not None else topology.current().topology.cache.mode


def mark(status: str) -> None:
    """`down` sticks for the rest of the request; with the mode off, X-Cache stays `off`."""
    state = _current.get()
    if state is not None and state.mode != "off" and state.status != "down":
        state.status = status


def current() -> RequestCache | None:
    return _current.get()


@contextmanager
def timed():
    started = time.perf_counter()
    try:
        yield
    finally:
        state = _current.get()
        if state is not None:
            state.spent_s += time.perf_counter() - started
            state.touched = True


def headers(response, state: RequestCache, server_timing: str) -> str:
    """Set X-Cache; return Server-Timing with a `cache` part when the request touched the cache."""
    response["X-Cache"] = state.status
    response["X-Query-Cache"] = state.query
    if state.touched:
        server_timing += f", cache;dur={state.spent_s * 1000:.2f}"
    if state.query_touched:
        server_timing += f", qcache;dur={state.query_spent_s * 1000:.2f}"
    return server_timing
