"""Queries per database node, counted in each worker and added up in the `state` Valkey
(the mechanism is api.counters: no round trip per query, one pipelined flush at most every FLUSH_S).
"""
from __future__ import annotations

from api.counters import FLUSH_S, Counters  # noqa: F401 - FLUSH_S is part of this module's interface

KEY = "workbench:db:queries"

_queries = Counters(KEY)


def count_query(node: str) -> None:
    _queries.count(node)


def flush(force: bool = False) -> None:
    _queries.flush(force)


def totals(client) -> dict[str, int]:
    return _queries.totals(client)
