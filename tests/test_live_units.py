"""Pure parts of the Live metrics page and of the controller's GET /live: the query's cursor, the
Prometheus text cut down to the page's figures, the events after a cursor, histogram percentiles by
bucket interpolation, rates across counter resets, per-shard rows and the timeline's events."""
import collections
import threading

import pytest

from lessons import live
from workbench.stack import live as controller_live

TEXT = """\
# HELP workbench_http_request_duration_seconds Time in the app server per request.
# TYPE workbench_http_request_duration_seconds histogram
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="0.005",method="GET",route="a",status="200"} 3.0
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="0.01",method="GET",route="a",status="200"} 4.0
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="+Inf",method="GET",route="a",status="200"} 4.0
workbench_http_request_duration_seconds_count{app_server="app-1",method="GET",route="a",status="200"} 4.0
workbench_http_request_duration_seconds_sum{app_server="app-1",method="GET",route="a",status="200"} 0.02
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="0.005",method="POST",route="b",status="503"} 0.0
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="0.01",method="POST",route="b",status="503"} 0.0
workbench_http_request_duration_seconds_bucket{app_server="app-1",le="+Inf",method="POST",route="b",status="503"} 1.0
workbench_http_request_duration_seconds_count{app_server="app-1",method="POST",route="b",status="503"} 1.0
workbench_http_request_duration_seconds_sum{app_server="app-1",method="POST",route="b",status="503"} 12.0
workbench_http_request_duration_seconds_bucket{app_server="app-2",le="0.005",method="GET",route="a",status="429"} 2.0
workbench_http_request_duration_seconds_bucket{app_server="app-2",le="0.01",method="GET",route="a",status="429"} 2.0
workbench_http_request_duration_seconds_bucket{app_server="app-2",le="+Inf",method="GET",route="a",status="429"} 2.0
workbench_http_request_duration_seconds_count{app_server="app-2",method="GET",route="a",status="429"} 2.0
workbench_http_request_duration_seconds_sum{app_server="app-2",method="GET",route="a",status="429"} 0.004
# HELP workbench_cache_hits Cache hits per layer.
# TYPE workbench_cache_hits counter
workbench_cache_hits_total{app_server="app-1",layer="l1"} 5.0
workbench_cache_hits_total{app_server="app-2",layer="l1"} 1.0
# HELP workbench_cache_misses Cache misses per layer.
# TYPE workbench_cache_misses counter
workbench_cache_misses_total{app_server="app-1",layer="l1"} 2.0
# HELP workbench_db_queries Queries per node.
# TYPE workbench_db_queries counter
workbench_db_queries_total{app_server="app-1",node="primary"} 7.0
workbench_db_queries_total{app_server="app-2",node="primary"} 3.0
workbench_db_queries_total{app_server="app-2",node="shard-2-replica-1"} 4.0
# HELP workbench_pg_xact_commit pg_stat_database.xact_commit.
# TYPE workbench_pg_xact_commit counter
workbench_pg_xact_commit_total{node="primary"} 100.0
# HELP workbench_pg_xact_rollback pg_stat_database.xact_rollback.
# TYPE workbench_pg_xact_rollback counter
workbench_pg_xact_rollback_total{node="primary"} 2.0
# HELP workbench_valkey_keyspace_hits Valkey INFO keyspace_hits.
# TYPE workbench_valkey_keyspace_hits counter
workbench_valkey_keyspace_hits_total{node="cache",role="cache"} 9.0
# HELP workbench_caddy_upstream_in_flight In flight.
# TYPE workbench_caddy_upstream_in_flight gauge
workbench_caddy_upstream_in_flight{app_server="app-1"} 2.0
# HELP up Answered.
# TYPE up gauge
up{instance="app-1",job="app"} 1.0
up{instance="primary",job="postgres"} 0.0
"""


def test_summarize_adds_the_histograms_up_per_app_server():
    m = controller_live.summarize(TEXT)
    assert m["bounds"] == [0.005, 0.01]
    one = m["requests"]["app-1"]
    assert (one["count"], one["4xx"], one["5xx"], one["sum"]) == (5.0, 0.0, 1.0, 12.02)
    assert one["buckets"] == [3.0, 4.0]           # the 503 only in the open bucket
    assert m["requests"]["app-2"]["4xx"] == 2.0
    assert m["cache"] == {"l1": {"hits": 6.0, "misses": 2.0}}
    assert m["db_queries"] == {"primary": 10.0, "shard-2-replica-1": 4.0}
    assert m["pg"] == {"primary": {"transactions": 102.0}}
    assert m["valkey"] == {"cache": {"keyspace_hits": 9.0, "role": "cache"}}
    assert m["in_flight"] == {"app-1": 2.0}
    assert m["up"] == {"app/app-1": 1.0, "postgres/primary": 0.0}


@pytest.mark.parametrize("path, since", [("/live", 0), ("/live?since=0", 0), ("/live?since=42", 42)])
def test_the_cursor_is_read_from_the_query(path, since):
    assert controller_live.cursor(path) == since


@pytest.mark.parametrize("path, field", [("/live?since=-1", "since"), ("/live?since=x", "since"),
                                         ("/live?since=1&since=2", "since"), ("/live?since=", "since"),
                                         ("/live?since=\u0661", "since"), ("/live?limit=3", "limit")])
def test_a_bad_query_names_the_parameter(path, field):
    with pytest.raises(controller_live.QueryError) as err:
        controller_live.cursor(path)
    assert err.value.field == field


class _Log:
    """The controller's event log as live.events_since reads it (controller.Controller.log)."""

    def __init__(self, maxlen):
        self.events, self.logged, self.events_lock = collections.deque(maxlen=maxlen), 0, threading.Lock()

    def log(self, event):
        self.logged += 1
        self.events.append({"ts": float(self.logged), "event": event})


def test_events_after_a_cursor_are_numbered_and_missed_ones_counted():
    log = _Log(maxlen=3)
    for name in "abcde":
        log.log(name)
    first = controller_live.events_since(log, 0)
    assert [(e["seq"], e["event"]) for e in first["events"]] == [(3, "c"), (4, "d"), (5, "e")]
    assert first["cursor"] == 5 and first["missed"] == 2
    assert controller_live.events_since(log, 5) == {"events": [], "cursor": 5, "missed": 0}
    log.log("f")
    assert [e["event"] for e in controller_live.events_since(log, 5)["events"]] == ["f"]
    assert controller_live.events_since(log, 4)["missed"] == 0
    # A cursor from an earlier controller (beyond this one's count) gets everything this one has.
    assert [e["seq"] for e in controller_live.events_since(log, 99)["events"]] == [4, 5, 6]


def test_quantile_interpolates_inside_the_bucket_holding_the_rank():
    bounds = [0.001, 0.005, 0.01]
    # 10 requests: 0 under 1 ms, 4 in (1, 5] ms, 6 in (5, 10] ms.
    buckets = [0.0, 4.0, 10.0]
    assert live.quantile(0.5, bounds, buckets, 10) == pytest.approx(0.005 + 0.005 * (5 - 4) / 6)
    assert live.quantile(0.2, bounds, buckets, 10) == pytest.approx(0.001 + 0.004 * 2 / 4)
    assert live.quantile(0.99, bounds, buckets, 10) == pytest.approx(0.005 + 0.005 * (9.9 - 4) / 6)
    # Beyond the last bound (the open bucket): the last bound.
    assert live.quantile(0.95, bounds, buckets, 20) == 0.01
    assert live.quantile(0.5, bounds, [0.0, 0.0, 0.0], 0) is None


def _answer(at, requests, cache=None, db=None, pg=None, processes=(), nodes=None):
    return {"at": at, "processes": list(processes), "data_nodes": {"nodes": nodes or {}},
            "metrics": {"bounds": [0.001, 0.005, 0.01], "requests": requests, "cache": cache or {},
                        "db_queries": db or {}, "pg": pg or {}, "valkey": {}, "in_flight": {}, "up": {}}}


def _server(count, buckets, e4=0.0, e5=0.0):
    return {"count": count, "sum": 0.0, "4xx": e4, "5xx": e5, "buckets": buckets}


def test_sample_takes_deltas_and_counts_a_reset_from_zero():
    before = _answer(100.0, {"app-1": _server(10, [0, 10, 10]), "app-2": _server(50, [0, 0, 50])},
                     cache={"l1": {"hits": 5, "misses": 5}}, db={"primary": 10}, pg={"primary": {"transactions": 40}})
    now = _answer(102.0, {"app-1": _server(20, [0, 14, 20], e5=1), "app-2": _server(4, [0, 4, 4], e4=2)},
                  cache={"l1": {"hits": 11, "misses": 7}}, db={"primary": 30}, pg={"primary": {"transactions": 50}},
                  processes=[{"name": "app-1", "cpu_percent": 12.5, "rss_bytes": 1024}],
                  nodes={"primary": {"shard": 1}, "replica-1": {"shard": 1, "lag_ms": 3.5}})
    p = live.sample(before, now)
    assert p["interval_s"] == 2.0
    assert p["servers"]["app-1"]["requests"] == 10 and p["servers"]["app-1"]["5xx"] == 1
    assert p["servers"]["app-2"]["requests"] == 4          # restarted: 4 since, not -46
    assert p["requests"] == 14 and p["rps"] == 7.0
    assert p["error_rate"] == pytest.approx(1 / 14) and p["client_error_rate"] == pytest.approx(2 / 14)
    # 14 requests: 8 in (1, 5] ms (4 + 4), 6 in (5, 10] ms: p50 at rank 7 is in the first.
    assert p["p50_ms"] == pytest.approx(1 + 4 * 7 / 8)
    assert p["servers"]["app-1"]["p95_ms"] == pytest.approx(5 + 5 * (9.5 - 4) / 6)
    assert p["cache"]["l1"] == {"hits": 6, "misses": 2, "hit_rate": 0.75}
    assert p["nodes"]["primary"] == {"queries_per_s": 10.0, "transactions_per_s": 5.0}
    assert p["lag_ms"] == {"replica-1": 3.5}
    assert p["cpu_percent"] == {"app-1": 12.5}
    first = live.sample(None, now)
    assert first["interval_s"] is None and "requests" not in first and first["lag_ms"] == {"replica-1": 3.5}


def test_shard_rows_add_each_shards_nodes_up():
    now = _answer(1.0, {}, nodes={"primary": {"shard": 1, "connections": 3, "users": 100},
                                  "replica-1": {"shard": 1, "connections": 1},
                                  "shard-2": {"shard": 2, "connections": 2, "users": 50},
                                  "meta": {"connections": 4}})
    point = {"nodes": {"primary": {"queries_per_s": 4.0, "transactions_per_s": 6.0},
                       "replica-1": {"queries_per_s": 1.0, "transactions_per_s": None},
                       "shard-2-replica-1": {"queries_per_s": 2.0, "transactions_per_s": None},
                       "meta": {"queries_per_s": 9.0, "transactions_per_s": 9.0}}}
    rows = live.shard_rows(now, point)
    assert rows == [
        {"shard": "shard-1", "nodes": "primary, replica-1", "queries/s": 5.0, "transactions/s": 6.0,
         "connections": 4, "users": 100},
        {"shard": "shard-2", "nodes": "shard-2, shard-2-replica-1", "queries/s": 2.0, "transactions/s": None,
         "connections": 2, "users": 50}]


def test_the_timeline_keeps_scaling_fault_and_run_events():
    events = [{"event": e} for e in ("phase", "autoscale", "autoscale_failed", "scaled", "chaos_slow", "died",
                                     "failover_done", "topology_progress", "run_started", "replica_started")]
    assert [e["event"] for e in live.timeline(events)] == [
        "autoscale", "autoscale_failed", "scaled", "chaos_slow", "died", "failover_done", "run_started"]
