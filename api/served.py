"""Requests each app server answered since the stack started: the load balancer's distribution as
the servers saw it (Caddy's own upstream stats count only requests in flight now). Counted in each
worker and added up in the `state` Valkey by api.counters, so it costs no round trip per request."""
from __future__ import annotations

from api.counters import Counters

KEY = "workbench:app:requests"

_served = Counters(KEY)


def count(app_server: str) -> None:
    _served.count(app_server)


def totals(client) -> dict[str, int]:
    return _served.totals(client)
