"""The status page run in-process with Streamlit's AppTest: fast, no browser. Some cases read the
real test stack (lessons/client.py finds it through the env vars conftest sets); one points the
page at a port base where no controller runs; two feed the page a controller report with replicas
and pending changes (the test stack runs no replicas). The shaping of the data-node rows
(lessons/data_nodes.py) is unit-tested at the end, without a stack."""
import copy
from pathlib import Path

import pytest
import requests
from streamlit.testing.v1 import AppTest

from lessons import data_nodes, loadbalancing
from lessons.client import StackClient
from lessons.data_nodes import DASH
from lessons.app_pages.stack_status import UNREACHABLE
from workbench.stack import launcher
from conftest import free_port_base

APP = Path(__file__).resolve().parents[1] / "lessons" / "app.py"
METRICS = ["Processes healthy", "Phase", "GET /api/v1/users (measured now)", "Answered by",
           "Policy (Caddy runs)", "App servers", "Autoscaler", "HTTPS",
           "Replicas running", "Replication", "Held down", "Slowed", "Automatic failover", "Strategy", "Shards", "Shards running",
           "Application cache", "Invalidation", "L1", "Query cache",
           "Queued, not yet flushed", "Oldest waiting (s)", "State Valkey fsync", "Flusher",
           "Read model", "Documents", "Outbox pending", "Oldest pending", "Staleness p95",
           "Rate limiter", "Valkey down", "Allowed", "Limited (429)",
           "Load shedding", "Queue budget", "Admitted", "Shed (503)"]
LAG = "replay lag (ms, 100 ms resolution)"  # [lag] sample_interval_s = 0.1 in workbench/parameters.toml

# A controller report as GET /status carries it (shape taken from a running stack with two
# replicas, in remote_apply mode), plus a replica being started (not streaming yet), one retired
# after it answered queries, and meta.
REPORT = {
    "at": 1795818252.247796,
    "nodes": {
        "replica-2": {"healthy": True, "state": "streaming", "sync_state": "quorum", "port": 41503,
                      "lag_bytes": 0, "lag_ms": 0.0, "connections": 1, "queries": 7},
        "primary": {"healthy": True, "lag_ms": 0.0, "lag_bytes": 0, "connections": 3, "queries": 1234},
        "replica-3": {"healthy": False, "state": "down", "sync_state": None, "port": 41504,
                      "lag_bytes": None, "lag_ms": None},
        "replica-1": {"healthy": True, "state": "streaming", "sync_state": "quorum", "port": 41502,
                      "lag_bytes": 98304, "lag_ms": 3012.5, "connections": 2, "queries": 40},
        "replica-4": {"healthy": False, "queries": 5},  # retired; `running` may still list it a moment
        "meta": {"healthy": True, "queries": 88},
    },
    "running": {"replicas": 2, "replication": "remote_apply",
                "replica_delays_ms": {"replica-1": 3000, "replica-2": 0, "replica-4": 0},
                "indexes.post_user_time": True, "app_servers": 2},
    "progress": "starting replica-3",
    "version": 4,
}
PENDING = [{"field": "replicas", "wanted": 3, "running": 2},
           {"field": "replica_delays_ms", "wanted": {"replica-1": 0}, "running": None}]


def run_page() -> AppTest:
    # The page makes a few real HTTP calls (controller, a probe through Caddy, /readyz).
    at = AppTest.from_file(str(APP), default_timeout=30)
    return at.run()


def test_status_page_renders_the_live_stack(stack, stack_config, controller):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Stack status"]
    assert not at.error, [e.value for e in at.error]

    metrics = {m.label: m.value for m in at.metric}
    assert list(metrics) == METRICS
    status = controller.status()
    procs = status["processes"]
    assert metrics["Processes healthy"] == f"{sum(p['healthy'] for p in procs)} / {len(procs)}"
    assert metrics["Phase"] == status["phase"] == "ready"
    assert metrics["GET /api/v1/users (measured now)"].endswith(" ms")
    assert metrics["Answered by"] in {f"app-{i}" for i in range(1, len(status["direct_urls"]) + 1)}
    shards = requests.get(f"{status['api_url']}/api/v1/admin/shards", timeout=10,
                          headers={"Authorization": f"Bearer {stack_config.controller_token()}"}).json()["data"]
    assert (metrics["Strategy"], metrics["Shards"]) == (shards["sharding"], str(shards["shards"]))

    shown = at.table[0].value  # the process table; the readiness table follows it
    assert sorted(shown.index) == sorted(p["name"] for p in procs)
    for p in procs:
        assert shown.loc[p["name"], "health"] == ("healthy" if p["healthy"] else "DOWN"), p
        assert shown.loc[p["name"], "role"] == p["role"]


def test_the_chaos_form_slows_a_node_and_the_timeline_shows_it(stack, stack_config, controller):
    at = run_page()
    at.selectbox(key="chaos_role").set_value("primary")
    at.selectbox(key="chaos_action").set_value("slow")
    at.number_input(key="chaos_ms").set_value(150)
    next(b for b in at.button if b.label == "Inject").click()
    at.run()
    try:
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any("action=slow" in s.value and "ms=150" in s.value for s in at.success), [s.value for s in at.success]
        assert controller.status()["chaos"]["slow_ms"] == {"primary": 150}
        at.run()  # the next refresh shows it in the state and on the timeline
        metrics = {m.label: m.value for m in at.metric}
        assert metrics["Slowed"] == "primary +150 ms"
        timeline = next(df.value for df in at.dataframe if "event" in df.value.columns
                        and (df.value["event"] == "chaos_slow").any())
        assert "ms=150" in timeline[timeline["event"] == "chaos_slow"].iloc[0]["details"]
    finally:
        launcher.chaos(stack_config, "slow", "primary", ms=0)
    assert controller.status()["chaos"]["slow_ms"] == {}


def test_status_page_explains_an_unreachable_controller(monkeypatch, tmp_path):
    base = free_port_base()
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))  # no token file either

    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Stack status"]
    [error] = at.error
    assert UNREACHABLE in error.value
    assert f"http://127.0.0.1:{base + 99}/status" in error.value
    assert "python manage.py up" in error.value
    assert not at.metric  # nothing half-rendered below the error
    assert not at.table


def test_status_page_shows_the_live_stacks_data_nodes(stack, controller):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert "Data nodes" in [h.value for h in at.subheader]
    report = controller.status()["data_nodes"]
    assert report, "the test stack's controller reports its data nodes"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Replicas running"] == str(report["running"]["replicas"])
    assert metrics["Replication"] == report["running"]["replication"]
    shown = table_of(at, "node")
    assert list(shown.columns) == ["health", "replication", "sync", "port", "apply delay (ms)", LAG,
                                   "lag (WAL bytes)", "connections", "queries"]
    assert shown.loc["primary", "health"] == "healthy"
    assert shown.index[0] == "primary"
    assert set(shown.index) <= set(report["nodes"]) | {"meta"}
    assert not at.warning, [w.value for w in at.warning]  # the admin topology API answered
    assert any(c.value.startswith("Controller: ") for c in at.caption)


@pytest.fixture
def fake_stack(monkeypatch):
    """The page's client answering from REPORT and PENDING instead of a stack; returns a setter for
    what the admin topology API answers."""
    status = {"phase": "ready", "error": None, "api_url": "http://127.0.0.1:1", "direct_urls": [],
              "processes": [{"role": "controller", "name": "controller", "pid": 1, "port": 1, "healthy": True,
                             "uptime_s": 1.0, "rss_bytes": 2**20, "restarts": 0}],
              "data_nodes": copy.deepcopy(REPORT)}
    topo = {"version": 5, "pending": PENDING, "progress": "copying the primary into replica-3"}
    monkeypatch.setattr(StackClient, "status", lambda self: status)
    monkeypatch.setattr(StackClient, "events", lambda self: [])
    monkeypatch.setattr(StackClient, "probe",
                        lambda self: {"ok": True, "status": 200, "ms": 1.0, "app_server": "app-1"})
    monkeypatch.setattr(StackClient, "readiness", lambda self: {"status": "ready", "checks": {}})
    monkeypatch.setattr(StackClient, "topology", lambda self: topo)
    # The admin API answers the shards section too, or fails with the topology.
    monkeypatch.setattr(StackClient, "shards", lambda self, n=None: {"error": topo["error"]} if "error" in topo
                        else copy.deepcopy(SHARDS))
    monkeypatch.setattr(StackClient, "cache", lambda self: {"error": topo["error"]} if "error" in topo
                        else copy.deepcopy(CACHE))
    monkeypatch.setattr(StackClient, "readmodel", lambda self: {"error": topo["error"]} if "error" in topo
                        else copy.deepcopy(READ_MODEL))
    monkeypatch.setattr(StackClient, "ratelimit", lambda self: {"error": topo["error"]} if "error" in topo
                        else copy.deepcopy(RATE_LIMIT))
    return topo


SHARDS = {"sharding": "hash", "shards": 1, "shard_groups": 1,
          "per_shard": [{"shard": 1, "nodes": ["primary"], "healthy": True, "users": 10, "posts": 50,
                         "queries": 1234}],
          "key_distribution": {"n": 1, "sample": 10, "degrees_of_freedom": 0, "strategies": {
              name: {"counts": [10], "chi_squared": 0.0, "moved_to_n_plus_1": 0.5}
              for name in ("hash", "consistent", "modulo", "range")}},
          "last_reshard": None}


CACHE = {"cache": {"mode": "cache-aside", "invalidation": "events", "l1": True, "query_cache": False},
         "layers": {"l1": {"title": "per-process L1", "counters": {"hits": 30, "misses": 10, "evictions": 2},
                           "hit_ratio": 0.75, "this_process": {"app_server": "app-2", "pid": 42, "size": 5,
                                                                "capacity": 2000, "connected": True}},
                    "valkey": {"title": "application cache", "counters": {"hits": 6, "misses": 4, "fills": 4},
                               "hit_ratio": 0.6, "server": {
                                   "keys": 12, "used_memory": 2**21, "maxmemory": 2**28, "evicted_keys": 7,
                                   "expired_keys": 3, "keyspace_hits": 9, "keyspace_misses": 3, "cache_nodes": 3,
                                   "nodes_down": 1, "nodes": [
                                       {"node": "valkey-cache-1", "port": 41611, "keys": 5, "used_memory": 2**20,
                                        "maxmemory": 2**27, "evicted_keys": 3, "expired_keys": 1,
                                        "keyspace_hits": 6, "keyspace_misses": 2, "hit_ratio": 0.75},
                                       {"node": "valkey-cache-2", "port": 41612, "keys": 7, "used_memory": 2**20,
                                        "maxmemory": 2**27, "evicted_keys": 4, "expired_keys": 2,
                                        "keyspace_hits": 3, "keyspace_misses": 1, "hit_ratio": 0.75},
                                       {"node": "valkey-cache-3", "port": 41613,
                                        "error": "ConnectionError: refused"}]}},
                    "query": {"title": "query cache", "counters": {}, "hit_ratio": None}},
         "write_behind": {"mode": "write-behind", "state_fsync": "always", "queued": 12, "flushed": 9,
                          "rejected": 1, "fallback": 0, "depth": 2, "pending": 1, "lag_s": 0.25, "paused": False,
                          "flusher": {"state": "running"}, "recent_rejections": []},
         "stale_probe": {"at": "2026-11-28T04:00:00+00:00", "rows": [
             {"case": "cache-aside, TTL only, TTL 5 s", "writes": 40,
              "all": {"reads": 200, "stale": 50, "stale_fraction": 0.25, "age_p50_ms": 900.0, "age_max_ms": 4800.0}}]}}


def test_status_page_shows_the_caching_layers(fake_stack):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Application cache"], metrics["L1"], metrics["Query cache"]) == ("cache-aside", "on", "off")
    assert (metrics["Queued, not yet flushed"], metrics["State Valkey fsync"], metrics["Flusher"]) == (
        "2", "always", "running")
    layers = next(t.value for t in at.table if "hit ratio" in t.value.columns)
    assert layers.loc["per-process L1", "hit ratio"] == "75.0%"
    assert layers.loc["application cache", "evictions"] == 7  # the cache Valkey's evicted_keys
    assert layers.loc["query cache", "hit ratio"] == DASH
    stale = next(t.value for t in at.table if "stale share" in t.value.columns)
    assert stale.loc["cache-aside, TTL only, TTL 5 s", "stale share"] == "25.00%"
    assert stale.loc["cache-aside, TTL only, TTL 5 s", "age max (ms)"] == "4,800.0"
    assert any("7 evicted" in c.value for c in at.caption)
    assert any("app-2, pid 42): 5 of 2,000 entries" in c.value for c in at.caption)
    assert any("Cluster (3 nodes)" in c.value for c in at.caption)
    cluster = next(t.value for t in at.table if "memory (MiB)" in t.value.columns)
    assert cluster.loc["valkey-cache-1", "hit ratio"] == "75.0%" and cluster.loc["valkey-cache-2", "keys"] == "7"
    assert cluster.loc["valkey-cache-3", "health"] == "DOWN"


READ_MODEL = {"read_model": True, "built": True, "documents": 1234, "latest_posts": 10,
              "outbox": {"pending": 3, "oldest_pending_s": 0.25, "shards": [
                  {"shard": 1, "pending": 3, "oldest_pending_s": 0.25}]},
              "staleness_ms": {"samples": 500, "p50": 40.0, "p95": 120.5, "max": 900.0},
              "relay": {"state": "running", "pid": "7"}, "counters": {"hit": 90, "miss": 10, "off": 0}}


def test_status_page_shows_the_read_model(fake_stack):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert "Read model" in [h.value for h in at.subheader]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Read model"], metrics["Documents"], metrics["Outbox pending"]) == ("on", "1,234", "3")
    assert (metrics["Oldest pending"], metrics["Staleness p95"]) == ("0.25 s", "120.5 ms")
    assert any("p50 40.0 ms" in c.value and "Relay: running" in c.value and "90 hits" in c.value
               for c in at.caption)


RATE_LIMIT = {"enabled": True, "on_error": "closed", "draft": "draft-ietf-httpapi-ratelimit-headers-09",
              "trusted_proxies": ["127.0.0.1/32"],
              "rules": [{"name": "signup-per-ip", "per": ["ip"], "endpoints": ["POST /api/v*/users"], "capacity": 5,
                         "refill_per_s": 0.1, "policy": '"signup-per-ip";q=5;w=50', "limited": 3},
                        {"name": "quota", "per": [], "endpoints": [], "capacity": 1000, "refill_per_s": 0,
                         "policy": '"quota";q=1000;w=3600', "limited": 0}],
              "counters": {"allowed": 1234, "limited": 3, "fail_open": 0, "fail_closed": 2}}


def test_status_page_shows_the_rate_limiter(fake_stack):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert "Rate limiting" in [h.value for h in at.subheader]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Rate limiter"], metrics["Valkey down"], metrics["Allowed"], metrics["Limited (429)"]) == (
        "on", "fail closed", "1,234", "3")
    rules = next(t.value for t in at.table if "RateLimit-Policy" in t.value.columns)
    assert rules.loc["signup-per-ip", "refused"] == "3" and rules.loc["signup-per-ip", "refill / s"] == "0.1"
    assert rules.loc["quota", "per"] == "(one bucket for all)" and rules.loc["quota", "endpoints"] == "every API request"
    assert rules.loc["signup-per-ip", "endpoints"] == "`POST /api/v*/users`"  # a bare * would be Markdown emphasis
    assert any("2 refused with 503 (fail-closed)" in c.value and "127.0.0.1/32" in c.value for c in at.caption)


def table_of(at, index: str):
    """The page's first table whose rows are indexed by `index` (node, field, ...): sections come
    and go, so a position would not do (the cache section's node table comes after the data nodes')."""
    tables = [t.value for t in at.table if t.value.index.name == index]
    assert tables, [t.value.index.name for t in at.table]
    return tables[0]


def test_status_page_shows_replicas_and_pending_changes(fake_stack):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error and not at.warning, [e.value for e in [*at.error, *at.warning]]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Replicas running"] == "2" and metrics["Replication"] == "remote_apply"

    nodes = table_of(at, "node")
    assert list(nodes.index) == ["primary", "replica-1", "replica-2", "replica-3", "replica-4", "meta"]
    assert nodes.loc["replica-1"].to_dict() == {
        "health": "healthy", "replication": "streaming", "sync": "quorum", "port": "41502",
        "apply delay (ms)": "3,000", LAG: "3012.5", "lag (WAL bytes)": "98,304", "connections": "2", "queries": "40"}
    assert nodes.loc["replica-3", "health"] == "DOWN" and nodes.loc["replica-3", LAG] == DASH
    assert nodes.loc["primary", LAG] == DASH  # the primary is the source: no replay lag

    pending = table_of(at, "field")
    assert pending.to_dict("index") == {"replicas": {"wanted": "3", "running": "2"},
                                        "replica_delays_ms": {"wanted": '{"replica-1": 0}', "running": DASH}}
    captions = " ".join(c.value for c in at.caption)
    assert "Controller: copying the primary into replica-3" in captions
    assert "sampled every 0.1 s" in captions and "shows as 0" in captions
    assert at.button[-1].label == "Refresh"


def test_status_page_falls_back_to_the_controllers_progress(fake_stack):
    """The admin API does not answer (Caddy down, say): pending changes are unknown, but the
    controller's own progress text is still in its status report."""
    fake_stack.clear()
    fake_stack["error"] = "HTTP 502"
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert [w.value for w in at.warning] == ["The admin topology API did not answer: HTTP 502",
                                             "The admin shards API did not answer: HTTP 502",
                                             "The admin cache API did not answer: HTTP 502"]
    assert len(at.table) == 2  # processes and data nodes; no pending table, no shards
    assert "Controller: starting replica-3" in " ".join(c.value for c in at.caption)


# --- lessons/data_nodes.py: pure shaping, no stack -----------------------------------------------
def test_node_rows_orders_and_shows_only_what_was_reported():
    rows = {r["node"]: r for r in data_nodes.node_rows(REPORT, "lag")}
    assert list(rows) == ["primary", "replica-1", "replica-2", "replica-3", "replica-4", "meta"]
    assert rows["primary"] == {"node": "primary", "health": "healthy", "replication": DASH, "sync": DASH,
                               "port": DASH, "apply delay (ms)": DASH, "lag": DASH, "lag (WAL bytes)": DASH,
                               "connections": "3", "queries": "1,234"}
    assert rows["replica-2"]["lag"] == "0.0" and rows["replica-2"]["lag (WAL bytes)"] == "0"
    assert rows["replica-2"]["apply delay (ms)"] == "0"
    assert rows["replica-3"] == {"node": "replica-3", "health": "DOWN", "replication": "down", "sync": DASH,
                                  "port": "41504", "apply delay (ms)": DASH, "lag": DASH, "lag (WAL bytes)": DASH,
                                  "connections": DASH, "queries": "0"}
    assert rows["replica-4"]["health"] == "not running"  # only its query counter is left
    assert rows["replica-4"]["apply delay (ms)"] == DASH
    assert rows["meta"]["health"] == DASH and rows["meta"]["queries"] == "88"  # meta is not sampled


def test_node_rows_of_no_report_and_a_down_primary():
    assert data_nodes.node_rows(None) == data_nodes.node_rows({"nodes": {}}) == []
    [row] = data_nodes.node_rows({"nodes": {"primary": {"healthy": False, "lag_ms": 0.0, "lag_bytes": 0}}})
    assert row["health"] == "DOWN" and row["replay lag (ms)"] == DASH


def test_pending_rows():
    assert data_nodes.pending_rows(None) == data_nodes.pending_rows([]) == []
    assert data_nodes.pending_rows(PENDING + [{"field": "replication", "wanted": "remote_write", "running": "async"},
                                              {"field": "indexes.post_user_time", "wanted": True,
                                               "running": False}]) == [
        {"field": "replicas", "wanted": "3", "running": "2"},
        {"field": "replica_delays_ms", "wanted": '{"replica-1": 0}', "running": DASH},
        {"field": "replication", "wanted": "remote_write", "running": "async"},
        {"field": "indexes.post_user_time", "wanted": "true", "running": "false"},
    ]


# --- the load-balancing section's rows (lessons/loadbalancing.py), without a stack -----------------
def test_server_rows_join_the_processes_caddys_stats_and_the_served_counts():
    state = {"processes": [
        {"name": "app-1", "role": "app", "healthy": True, "port": 8101},
        {"name": "app-2", "role": "app", "healthy": False, "port": 8102},
        {"name": "app-10", "role": "app", "healthy": True, "port": 8110},
        {"name": "caddy", "role": "caddy", "healthy": True, "port": 8000}],
        "upstreams": [{"app_server": "app-1", "in_flight": 3, "fails": 0},
                      {"app_server": "app-2", "in_flight": 0, "fails": 2},
                      {"app_server": "app-10", "in_flight": 0, "fails": 0, "healthy": False},
                      {"app_server": "app-3", "in_flight": 0, "fails": 1}],
        "served": {"app-1": 300, "app-2": 100}}
    rows = {r["app server"]: r for r in loadbalancing.server_rows(state)}
    assert list(rows) == ["app-1", "app-2", "app-3", "app-10"]
    assert (rows["app-1"]["state"], rows["app-1"]["in flight (Caddy)"], rows["app-1"]["share"]) == ("healthy", 3, "75%")
    assert rows["app-2"]["state"] == "DOWN" and rows["app-2"]["fails (Caddy)"] == 2
    assert rows["app-3"]["state"] == "stopped" and rows["app-3"]["requests answered"] == 0
    assert rows["app-10"]["state"] == "out of rotation"


def test_the_scaling_timeline_keeps_scaling_and_app_server_events_newest_first():
    events = [{"ts": 1, "event": "scaled", "app_servers": 3}, {"ts": 2, "event": "died", "name": "replica-1"},
              {"ts": 3, "event": "died", "name": "app-2"}, {"ts": 4, "event": "phase", "phase": "ready"},
              {"ts": 5, "event": "autoscale", "decision": "out"}]
    assert [e["ts"] for e in loadbalancing.scaling_events(events)] == [5, 3, 1]
