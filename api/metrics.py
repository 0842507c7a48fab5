"""The app server's Prometheus metrics at `/metrics` (issue 11): request latency per route, method and
status; queries per database node; the caching layers' hits and misses; rate-limited and shed
requests; the topology version the workers run.

prometheus_client directly, not django-prometheus: django-prometheus would add two middlewares and
its own per-route and per-model series (more work per request, and a second latency histogram
beside this one) while the workbench's own counters (api.counters) are what the lessons need.

A gunicorn app server runs several worker processes, and any one of them answers a scrape. So under
the stack (WORKBENCH_APP_SERVER set by workbench/stack/apps.py) the client runs in its multiprocess
mode: each worker writes its values to memory-mapped files in one directory per app server, and the
worker that answers /metrics adds them all up. The directory is named after the gunicorn master's
pid, so a restarted app server starts from zero; directories of masters that are gone are removed
when a worker starts. Nothing here costs a network round trip: a few memory writes per request.

Caddy does not route /metrics (workbench/stack/caddy.py); a direct request needs the controller
token. The controller adds the app servers up into one view (workbench/stack/metrics.py).
"""
from __future__ import annotations

import os
import shutil

from django.conf import settings

_MULTIPROC_ROOT = None
if os.environ.get("WORKBENCH_APP_SERVER") and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _MULTIPROC_ROOT = settings.STACK.run_dir / "metrics" / settings.APP_SERVER_NAME
    _master = os.getppid()
    _MULTIPROC_ROOT.mkdir(parents=True, exist_ok=True)
    for _old in _MULTIPROC_ROOT.iterdir():  # a previous run of this app server (its master is gone)
        if _old.name.isdigit() and int(_old.name) != _master:
            try:
                os.kill(int(_old.name), 0)
            except ProcessLookupError:
                shutil.rmtree(_old, ignore_errors=True)
            except PermissionError:
                pass
    (_MULTIPROC_ROOT / str(_master)).mkdir(exist_ok=True)
    # Read once, when prometheus_client.values is first imported (just below).
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_MULTIPROC_ROOT / str(_master))

from django.http import HttpResponse  # noqa: E402
from django.urls import Resolver404, resolve  # noqa: E402
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge,  # noqa: E402
                               Histogram, generate_latest, multiprocess)
from prometheus_client import REGISTRY  # noqa: E402

from api import counters  # noqa: E402
from workbench import topology  # noqa: E402
from workbench.stack.config import bearer_matches  # noqa: E402

# Up to the 10 s the load tests' timeouts allow; the fine end is where the cached reads sit.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "(unmatched)"

REQUEST_SECONDS = Histogram(
    "workbench_http_request_duration_seconds",
    "Time in the app server per request (the gateway middleware's view), by Django URL route, method and status.",
    ["route", "method", "status"], buckets=BUCKETS)
DB_QUERIES = Counter("workbench_db_queries", "Queries per database node (alias: primary, replica-N, "
                     "shard-K-..., meta).", ["node"])
CACHE_HITS = Counter("workbench_cache_hits", "Cache hits per layer (valkey, l1, query).", ["layer"])
CACHE_MISSES = Counter("workbench_cache_misses", "Cache misses per layer (valkey, l1, query).", ["layer"])
CACHE_EVENTS = Counter("workbench_cache_events", "Every counter of the caching layers (api/caching/metrics.py).",
                       ["layer", "event"])
RATELIMIT = Counter("workbench_ratelimit_decisions", "The rate limiter's decisions: allowed, limited, "
                    "fail_open, fail_closed, limited_by:<rule>.", ["decision"])
SHED = Counter("workbench_shed_decisions", "Load shedding: shed, admitted (while shedding is on), no_stamp.",
               ["decision"])
# Queries: from a tenth of a millisecond (a cached plan on loopback) to the emulated cross-region trip.
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0)
DB_SECONDS = Histogram("workbench_db_query_duration_seconds", "Time per database query by node (alias), "
                       "the emulated round trip included: api/routing/backend/base.py.", ["node"], buckets=DB_BUCKETS)
TOPOLOGY_VERSION = Gauge("workbench_topology_version", "The topology version the workers run (the most "
                         "recently reported by any worker).", multiprocess_mode="mostrecent")


def _mirrors() -> dict:
    """api.counters key -> what one count adds here. Imported late: these modules import much."""
    from api.caching import metrics as cache
    from api.gateway import ratelimit, shedding
    from api.routing import stats

    def cache_layer(layer):
        hits, misses = CACHE_HITS.labels(layer), CACHE_MISSES.labels(layer)

        def add(name, n):
            CACHE_EVENTS.labels(layer, name).inc(n)
            if name == "hits":
                hits.inc(n)
            elif name == "misses":
                misses.inc(n)
        return add

    return {
        stats.KEY: lambda name, n: DB_QUERIES.labels(name).inc(n),
        cache.KEY: cache_layer("valkey"),
        cache.L1_KEY: cache_layer("l1"),
        cache.QUERY_KEY: cache_layer("query"),
        ratelimit.COUNTS_KEY: lambda name, n: RATELIMIT.labels(name).inc(n),
        shedding.COUNTS_KEY: lambda name, n: SHED.labels(name).inc(n),
    }


_by_key: dict | None = None


def enabled() -> bool:
    """The topology's `observability.metrics`: off, nothing is recorded (the overhead benchmark's off arm)."""
    return topology.current().topology.observability.metrics


def _mirror(key: str, name: str, n: int) -> None:
    global _by_key
    if not enabled():
        return
    if _by_key is None:
        _by_key = _mirrors()
    add = _by_key.get(key)
    if add is not None:
        add(name, n)


counters.mirror = _mirror


def route_of(request) -> str:
    """The Django URL pattern (`api/v1/users/<id64:user_id>/posts`), never the raw path: bounded
    label values. A request refused before its view (401, 429, 503 shed) is resolved here."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return UNMATCHED
    return match.route or UNMATCHED


def observe(request, status: int, seconds: float, topology_version: int) -> None:
    """One request, from the gateway middleware: a few memory writes, no I/O."""
    if not enabled():
        return
    method = request.method if request.method in METHODS else "other"
    REQUEST_SECONDS.labels(route_of(request), method, str(status)).observe(seconds)
    global _version_set
    if topology_version != _version_set:  # written when it changes, not per request
        TOPOLOGY_VERSION.set(topology_version)
        _version_set = topology_version


_version_set = None


def observe_db(node: str, seconds: float) -> None:
    """One query's time on `node` (api/routing/backend/base.py)."""
    if enabled():
        DB_SECONDS.labels(node).observe(seconds)


def registry() -> CollectorRegistry:
    if _MULTIPROC_ROOT is None:
        return REGISTRY
    collected = CollectorRegistry()
    multiprocess.MultiProcessCollector(collected)
    return collected


def metrics_view(request):
    """GET /metrics: the Prometheus text of every worker of this app server; the controller token."""
    if not bearer_matches(request.headers.get("Authorization", ""), settings.STACK.controller_token()):
        from api.gateway.problems import problem, problem_response
        return problem_response(problem(401, "Unauthorized", "Send `Authorization: Bearer <controller token>` "
                                        "for /metrics.", kind="metrics-token"),
                                getattr(request, "request_id", None), headers={"WWW-Authenticate": "Bearer"})
    return HttpResponse(generate_latest(registry()), content_type=CONTENT_TYPE_LATEST)
