"""Load shedding: an admission limit on queue time, set live by the topology's `shedding` group
(workbench/topology.py: Shedding).

Caddy stamps every request it forwards with the moment it handed it to an app server
(`X-Request-Start: t=<Unix ms>`, workbench/stack/caddy.py, Caddy's `{time.now.unix_ms}`). When a
worker thread picks the request up, the gateway runs this check first: the request waited
now - stamp, in the socket's accept queue, in gunicorn's queue of accepted connections and for a
free thread. Past `shedding.queue_budget_ms`, the request is answered at once with 503 problem+json,
`Retry-After` and `X-Shed: queue-time=<ms>ms`, before any database or cache work: by the time it
would be answered its client has likely given up (or is about to time out), so serving it would
only spend capacity on a dead request and make every request behind it wait longer too.

Why queue time, not CPU or concurrency: queue time is what the client feels and what grows without
bound in a spike (arrivals above capacity pile up in the queue; service time barely moves), it
needs no notion of what "busy" means for this server, and it is measured per request, with no
shared state. The admin endpoints are never shed, so an operator can always reach the topology.
CPU saturates long before latency does and says nothing about a request blocked on
the database; a concurrency cap needs the right number, which changes with the workload.

The stamp is believed only from a trusted proxy (api.gateway.ratelimit.from_trusted_proxy, the
same rule as X-Forwarded-For): anyone could otherwise send an old stamp straight to an app server
and have requests shed, or a future one to skip the check. A missing or garbled stamp means no
shedding for that request. Caddy and the app servers share this machine's clock; across machines
the budget would have to allow for clock skew (or the proxy would shed itself: Caddy's own limits).
"""
from __future__ import annotations

import re
import time

from api import timing
from api.counters import Counters
from workbench import topology

from .problems import problem, problem_response
from .ratelimit import from_trusted_proxy

HEADER = "X-Request-Start"                    # set by Caddy: t=<Unix ms when it forwarded the request>
META = "HTTP_X_REQUEST_START"
SHED_HEADER = "X-Shed"
COUNTS_KEY = "workbench:shed:counts"          # shed, admitted (while shedding is on), no_stamp
EXEMPT = re.compile(r"^/api/v[0-9]+/admin/")  # the operator must always reach the topology, to switch it off
STAMP = re.compile(r"^t=(\d{10,16})(?:\.\d+)?$")
COUNTERS = Counters(COUNTS_KEY)


def queue_ms(meta: dict, now_s: float | None = None) -> float | None:
    """How long the request waited between the trusted proxy's stamp and now (ms, never below 0);
    None without a believable stamp."""
    match = STAMP.match(meta.get(META, "").strip())
    if match is None or not from_trusted_proxy(meta):
        return None
    digits = match.group(1)
    stamp_ms = int(digits) / 1000 if len(digits) > 13 else int(digits)  # microseconds, as some proxies send
    now_ms = (time.time() if now_s is None else now_s) * 1000
    return max(now_ms - stamp_ms, 0.0)


def check(request):
    """None to admit the request; else the 503 that sheds it."""
    waited = queue_ms(request.META)
    if waited is not None:
        timing.add("queue", waited / 1000)  # the `queue` Server-Timing part, shedding on or off
    settings_ = topology.current().topology.shedding
    if not settings_.enabled or EXEMPT.match(request.path_info):
        return None
    if waited is None:
        COUNTERS.count("no_stamp")
        return None
    if waited <= settings_.queue_budget_ms:
        COUNTERS.count("admitted")
        return None
    COUNTERS.count("shed")
    retry_after = settings_.retry_after_s
    headers = {"Retry-After": str(retry_after), SHED_HEADER: f"queue-time={waited:.0f}ms"}
    body = problem(503, "Service Unavailable",
                   f"The request waited {waited:.0f} ms for a worker; the budget is {settings_.queue_budget_ms} ms. "
                   f"The server is overloaded and shed it unprocessed; retry after {retry_after} s.",
                   kind="load-shed", queue_ms=round(waited, 1), budget_ms=settings_.queue_budget_ms,
                   retry_after_s=retry_after)
    return problem_response(body, request.request_id, headers)


def status(client) -> dict:
    """For the admin API and the dashboard: the live settings and the counters of every app server."""
    settings_ = topology.current().topology.shedding
    counts = COUNTERS.totals(client)
    return {"enabled": settings_.enabled, "queue_budget_ms": settings_.queue_budget_ms,
            "retry_after_s": settings_.retry_after_s, "stamp_header": HEADER,
            "counters": {name: counts.get(name, 0) for name in ("admitted", "shed", "no_stamp")}}
