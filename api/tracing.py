"""Tracing (issue 11, part 2): OpenTelemetry spans along one request's path through an app server.

Spans: `gateway` (the whole gateway middleware, the root), `view` (Django's view, under it),
`cache.lookup` / `cache.fill` (api/caching/reads.py), `router.choose` (the read's node,
api/routing/db.py), `db.query` (each query, with its node, api/routing/backend/base.py) and `render`
(JSON rendering, api/gateway/envelope.py).

Trace context: the app accepts a W3C `traceparent` header. Caddy forwards the client's, and stamps
one of its own (from its per-request uuid, flags 00: "not sampled yet") when the client sent none or
a malformed one (workbench/stack/caddy.py); so a trace id is the Caddy request id without dashes
when Caddy made both. Caddy's own `tracing` handler is not used: it exports to an OTLP collector
(localhost:4317 by default) that nothing here runs.

Head-based sampling, decided once when the request arrives: traced when it carries
`X-Workbench-Trace: 1` (tests, the dashboard's "trace one request"), or a `traceparent` whose
sampled flag is set (the caller traces it), or else with probability `observability.
trace_sample_rate` (the topology). A request not sampled creates no span at all: every hook costs
one context-variable read (`_active`), the decision one random number.

Storage: when a sampled request ends, its finished spans become one JSON document, pushed onto a
capped list in the `state` Valkey (LPUSH + LTRIM in one MULTI: one round trip, after the response
is built), the latest `observability.trace_store` traces. GET /api/v1/admin/traces reads them.
With OTEL_EXPORTER_OTLP_ENDPOINT set (the standard variable) and the package
opentelemetry-exporter-otlp-proto-http installed, the spans also go to that collector in the
background (BatchSpanProcessor); without it, nothing here touches the network but Valkey.
"""
from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import random
import re
import time

import redis
from django.conf import settings
from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from workbench import topology

log = logging.getLogger(__name__)

KEY = "workbench:traces"        # a list of JSON documents, newest first, capped at trace_store
FORCE_HEADER = "X-Workbench-Trace"
TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-([0-9a-f]{2})$")
# Caddy's health probes (several a second) and the scrapes are not traffic: never sampled by rate.
UNSAMPLED = frozenset({"/healthz", "/metrics"})
STATEMENT_CHARS = 300           # a query's SQL kept on its span: enough to recognize it

_active: contextvars.ContextVar["_Trace | None"] = contextvars.ContextVar("trace", default=None)
_propagator = TraceContextTextMapPropagator()


class _Trace:
    """One sampled request: why it was sampled, its root span and the spans finished so far."""
    __slots__ = ("why", "root", "token", "spans")

    def __init__(self, why: str):
        self.why, self.root, self.token, self.spans = why, None, None, []


class _Collect(SpanProcessor):
    """Keeps each finished span with its request's trace (on_end runs in the request's thread)."""

    def on_end(self, span) -> None:
        active = _active.get()
        if active is not None:
            active.spans.append(span)


def _provider() -> TracerProvider:
    # ALWAYS_ON: spans exist only for requests already sampled here; a parent-based sampler would
    # drop the children of Caddy's not-yet-sampled traceparent.
    provider = TracerProvider(sampler=ALWAYS_ON, resource=Resource.create(
        {"service.name": "workbench-api", "service.instance.id": settings.APP_SERVER_NAME}))
    provider.add_span_processor(_Collect())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        try:  # optional: the exporter reads its endpoint, headers and timeout from the standard env vars
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        except ImportError:
            log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http is "
                        "not installed: traces stay in the local store only")
    return provider


_tracer = _provider().get_tracer("workbench")


class _Noop:
    """The hooks' answer for a request not sampled: nothing started, nothing recorded."""
    __slots__ = ()

    def __enter__(self):
        return trace.INVALID_SPAN  # its set_attribute does nothing

    def __exit__(self, *exc):
        return None


_NOOP = _Noop()


def sampled() -> bool:
    return _active.get() is not None


def _decide(request) -> str | None:
    """Why this request is traced, or None (most requests: the cheap path)."""
    if request.META.get("HTTP_X_WORKBENCH_TRACE") == "1":
        return "forced"
    parent = request.META.get("HTTP_TRACEPARENT")
    if parent:
        match = TRACEPARENT.match(parent)
        if match and int(match.group(1), 16) & 1:
            return "parent"
    if request.path in UNSAMPLED:
        return None
    rate = topology.current().topology.observability.trace_sample_rate
    if rate > 0 and random.random() < rate:
        return "rate"
    return None


def begin(request) -> _Trace | None:
    """From the gateway middleware, first thing: decide, and for a sampled request open its root
    span, a child of the incoming traceparent when there is a valid one. Always sets this thread's
    state, so nothing of an earlier request that died midway carries over."""
    why = _decide(request)
    if why is None:
        _active.set(None)
        return None
    active = _Trace(why)
    _active.set(active)
    parent = request.META.get("HTTP_TRACEPARENT")
    incoming = _propagator.extract({"traceparent": parent}) if parent else context.Context()
    active.root = _tracer.start_span("gateway", context=incoming, kind=trace.SpanKind.SERVER, attributes={
        "http.request.method": request.method, "url.path": request.path[:200],
        "workbench.request_id": request.request_id, "workbench.sampled_by": why})
    active.token = context.attach(trace.set_span_in_context(active.root, incoming))
    return active


def span(name: str, attributes: dict | None = None):
    """`with tracing.span("x") as s:` a child of the current span; a no-op when not sampled."""
    if _active.get() is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def query(node: str, sql: str):
    """A database query's span, with its node (the alias the metrics use) and the SQL's start."""
    if _active.get() is None:
        return _NOOP
    return _tracer.start_as_current_span("db.query", attributes={
        "db.node": node, "db.system": "postgresql", "db.statement": str(sql)[:STATEMENT_CHARS]})


def wrapped(name: str, fn):
    """fn, whose calls are spans `name` when sampled (the middleware's get_response: `view`)."""
    def inner(*args):
        if _active.get() is None:
            return fn(*args)
        with _tracer.start_as_current_span(name):
            return fn(*args)
    return inner


def traced(name: str, hit: str | None = None):
    """Decorator: the function's calls are spans `name`; `hit` names a boolean attribute set to
    whether it returned something (a cache lookup: a hit)."""
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            if _active.get() is None:
                return fn(*args, **kwargs)
            with _tracer.start_as_current_span(name) as current:
                out = fn(*args, **kwargs)
                if hit:
                    current.set_attribute(hit, out is not None)
                return out
        return inner
    return wrap


def end(active: _Trace | None, request, response) -> None:
    """From the gateway middleware, last thing: close the root span (with what the response says
    about the path taken), stamp X-Trace-Id, and store the trace (one Valkey round trip)."""
    if active is None:
        return
    try:
        root = active.root
        match = getattr(request, "resolver_match", None)
        root.set_attributes({
            "http.response.status_code": response.status_code, "http.route": (match.route if match else "") or "",
            "workbench.app_server": settings.APP_SERVER_NAME, "workbench.cache": response.get("X-Cache", ""),
            "workbench.db_node": response.get("X-DB-Node", "")})
        response["X-Trace-Id"] = trace.format_trace_id(root.get_span_context().trace_id)
        context.detach(active.token)
        root.end()
    finally:
        _active.set(None)
    try:
        _store(document(active))
    except Exception as exc:  # noqa: BLE001 - a trace is never worth failing the request
        log.warning("trace not stored: %s", exc)


def document(active: _Trace) -> dict:
    """The stored form: the root's summary and every span, offsets in ms from the root's start."""
    root = active.root
    start = root.start_time
    attrs = dict(root.attributes or {})
    parent = root.parent
    spans = sorted(active.spans, key=lambda s: (s.start_time, s.end_time is None or -s.end_time))
    return {
        "trace_id": trace.format_trace_id(root.get_span_context().trace_id),
        "at": start / 1e9, "sampled_by": active.why,
        "remote_parent": trace.format_span_id(parent.span_id) if parent is not None else None,
        "method": attrs.get("http.request.method"), "path": attrs.get("url.path"),
        "route": attrs.get("http.route"), "status": attrs.get("http.response.status_code"),
        "app_server": attrs.get("workbench.app_server"), "request_id": attrs.get("workbench.request_id"),
        "duration_ms": round((root.end_time - start) / 1e6, 3),
        "spans": [{
            "name": s.name, "span_id": trace.format_span_id(s.context.span_id),
            "parent_id": trace.format_span_id(s.parent.span_id) if s.parent is not None else None,
            "start_ms": round((s.start_time - start) / 1e6, 3),
            "duration_ms": round(((s.end_time or s.start_time) - s.start_time) / 1e6, 3),
            "status": s.status.status_code.name.lower(),
            "attributes": {k: v if isinstance(v, (str, int, float, bool)) else str(v)
                           for k, v in (s.attributes or {}).items()},
        } for s in spans],
    }


def _store(doc: dict) -> None:
    from api.state import state_client

    size = topology.current().topology.observability.trace_store
    pipe = state_client().pipeline(transaction=True)
    pipe.lpush(KEY, json.dumps(doc, separators=(",", ":")))
    pipe.ltrim(KEY, 0, size - 1)
    pipe.execute()


# --- reading them back (the admin API) -----------------------------------------------------------
def latest(client: redis.Redis, limit: int) -> list[dict]:
    """Summary rows of the newest `limit` traces, newest first."""
    rows = []
    for raw in client.lrange(KEY, 0, limit - 1):
        doc = json.loads(raw)
        spans = doc.pop("spans")
        db = [s for s in spans if s["name"] == "db.query"]
        rows.append({**doc, "spans": len(spans), "db_queries": len(db),
                     "db_ms": round(sum(s["duration_ms"] for s in db), 3),
                     "age_s": round(time.time() - doc["at"], 3)})
    return rows


def find(client: redis.Redis, trace_id: str) -> dict | None:
    """One stored trace by id (the newest, should a traceparent have been reused), or None."""
    needle = f'"trace_id":"{trace_id}"'.encode()
    for raw in client.lrange(KEY, 0, -1):
        if needle in raw:
            return json.loads(raw)
    return None
