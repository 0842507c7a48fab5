"""The Design page. Pure tests of the DOT builder (lessons/design_diagram.py) and of the page's small
helpers; then, in-process with Streamlit's AppTest against the real test stack: the diagram is drawn
from the live topology with the figures the stack reports, a change made through the page's form
changes the live topology (checked through the admin API) and the diagram, a bad value is refused
with its field named, a form sent after someone else changed the topology is not applied blindly,
and a page facing no stack says so. Every test that changes the topology restores it exactly.

With WORKBENCH_SOAK=1 (the suite's flag for longer runs) also an online reshard from 1 to 2 shards
started from the page (the controller runs it: lessons/reshard.py) and followed to its end, then moved
back through the controller."""
import os
import re
from pathlib import Path

import pytest
import requests
from streamlit.testing.v1 import AppTest

from conftest import free_port_base, wait_for
from lessons import design_diagram
from lessons.app_pages import design
from lessons.client import StackClient
from workbench import topology
from workbench.loadgen.client import TopologyClient

ROOT = Path(__file__).resolve().parents[1]
PAGE = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom lessons.app_pages import design\ndesign.render()\n"
APPLY_TIMEOUT_S = 180  # an app server started, or drained, on a shared machine


# --- the DOT builder, pure ----------------------------------------------------------------------
def doc(**changes) -> dict:
    """An admin topology answer for the default topology with `changes` merged in."""
    return {"version": 7, "topology": topology.merge(topology.Topology().to_dict(), changes), "pending": []}


def proc(name: str, role: str, pid: int, cpu=12.5, rss=100 * 2**20, healthy=True) -> dict:
    return {"name": name, "role": role, "pid": pid, "port": 1000 + pid, "healthy": healthy, "uptime_s": 5.0,
            "rss_bytes": rss, "restarts": 0, "cpu_percent": cpu}


def label(dot: str, node_id: str) -> str:
    """The label (and attributes) of one node statement in the DOT text."""
    found = re.search(rf"^\s*{re.escape(node_id)} \[label=(.*)\];$", dot, re.M)
    assert found, f"no node {node_id} in:\n{dot}"
    return found.group(1)


def lit(dot: str, node_id: str) -> bool:
    attrs = label(dot, node_id)
    return "dashed" not in attrs.split("shape=")[-1]


def app_nodes(dot: str) -> list[str]:
    return re.findall(r"^\s*(app_\d+) \[label=", dot, re.M)


def test_the_diagram_lights_what_the_topology_switches_on():
    off = design_diagram.build(doc(app_servers=2))
    assert app_nodes(off) == ["app_1", "app_2"]
    for node_id in ("cache_l1", "cache_app", "cache_query", "valkey_cache", "pgbouncer", "readmodel",
                    "s1_replica_none", "shard_more"):
        assert not lit(off, node_id), node_id
    for node_id in ("caddy", "s1_primary", "meta", "state"):
        assert lit(off, node_id), node_id
    assert "rate limit<BR/>off" in label(off, "app_1") and "shedding<BR/>off" in label(off, "app_1")
    assert "lb_policy round_robin" in label(off, "caddy")

    on = design_diagram.build(doc(app_servers=3, replicas=2, pgbouncer=True, read_model=True, cache_nodes=3,
                                  lb_policy="header", cache={"mode": "cache-aside", "l1": True, "query_cache": True},
                                  rate_limit={"enabled": True}, shedding={"enabled": True, "queue_budget_ms": 80}))
    assert app_nodes(on) == ["app_1", "app_2", "app_3"]
    for node_id in ("cache_l1", "cache_app", "cache_query", "valkey_cache_1", "valkey_cache_3", "pgbouncer",
                    "readmodel", "s1_replica_1", "s1_replica_2"):
        assert lit(on, node_id), node_id
    assert not lit(on, "valkey_cache")  # the single node keeps running, unused while the cluster serves
    assert "s1_replica_none" not in on
    assert "lb_policy header:X-User-Id" in label(on, "caddy")
    assert "shedding<BR/>on, 80 ms" in label(on, "app_3")
    assert "pgbouncer -> s1_primary;" in on
    assert "cache.mode cache-aside" in label(on, "cache_app")


def test_the_diagram_shows_reported_figures_and_a_dash_for_what_was_not_reported():
    status = {"processes": [proc("caddy", "caddy", 1, cpu=3.25), proc("app-1", "app", 2, rss=200 * 2**20),
                            proc("pg-primary", "postgres", 3, cpu=None), proc("valkey-state", "valkey", 4, healthy=False),
                            proc("app-3", "app", 5)],
              "upstreams": [{"app_server": "app-1", "in_flight": 4, "fails": 0, "healthy": True}],
              "served": {"app-1": 1234},
              "data_nodes": {"nodes": {
                  "primary": {"healthy": True, "state": "primary", "pid": 3, "shard": 1, "connections": 5,
                              "users": 300, "posts": 1500, "queries": 42},
                  "replica-1": {"healthy": True, "state": "streaming", "pid": 99, "shard": 1, "lag_ms": 1.5,
                                "lag_bytes": 2048}},
                  "running": {"lb_policy": "least_conn"}}}
    cache = {"layers": {"valkey": {"hit_ratio": 0.875, "server": {"nodes": [{"node": "valkey-cache", "keys": 12,
                                                                              "hit_ratio": 0.5}]}}}}
    dot = design_diagram.build(doc(replicas=1, cache={"mode": "cache-aside"}), status, cache)
    assert "CPU 3.2% \u00b7 RSS 100 MiB" in label(dot, "caddy")
    assert "(Caddy runs least_conn)" in label(dot, "caddy")  # the topology asks for round_robin
    assert "RSS 200 MiB" in label(dot, "app_1") and "in flight 4 (Caddy) \u00b7 answered 1,234" in label(dot, "app_1")
    assert "in flight \u2014 (Caddy) \u00b7 answered \u2014" in label(dot, "app_2")  # not running: starting
    assert "starting" in label(dot, "app_2") and "draining" in label(dot, "app_3")
    assert "CPU \u2014%" in label(dot, "s1_primary")  # the pid matches pg-primary; no CPU sample yet
    assert "5 connections \u00b7 42 queries" in label(dot, "s1_primary")
    assert "300 users, 1,500 posts" in dot
    assert "replay lag 1.5 ms, 2,048 B" in label(dot, "s1_replica_1")
    assert "no process" in label(dot, "s1_replica_1")  # pid 99 is not among the processes
    assert "DOWN" in label(dot, "state") and "#d62728" in label(dot, "state")
    assert "hit ratio 87.5%" in label(dot, "cache_app")
    assert "keys 12 \u00b7 INFO hit ratio 50.0%" in label(dot, "valkey_cache")

    # Without the controller's status nothing is known of the processes: not "not running".
    unknown = design_diagram.build(doc(replicas=1))
    assert "status unknown \u00b7 CPU \u2014 \u00b7 RSS \u2014" in label(unknown, "caddy")
    assert "not running" not in unknown and "starting" not in label(unknown, "app_1")


def test_a_reshard_under_way_draws_the_old_and_the_new_shards():
    dot = design_diagram.build(doc(shards=1, reshard_shards=2, sharding="hash"))
    assert "new: being filled by the reshard" in dot
    assert "s2_primary" in dot and "shard_more" not in dot
    assert re.search(r"s2_primary -> readmodel \[ltail=cluster_shard_2", dot)


def test_the_page_sends_only_what_changed():
    current = topology.Topology().to_dict()
    assert design.changes(current, {"cache.mode": "off", "app_servers": current["app_servers"]}) == {}
    assert design.changes(current, {"cache.mode": "cache-aside", "cache.l1": True, "replicas": 1}) == {
        "cache": {"mode": "cache-aside", "l1": True}, "replicas": 1}
    # Every field of the form exists in the schema, with the kind its widget needs.
    for dotted in design.FIELDS:
        assert design.field_meta(dotted)["kind"] in ("bool", "choice", "int", "text"), dotted


# --- the page on the real stack -----------------------------------------------------------------
@pytest.fixture(scope="module")
def admin(stack, stack_config) -> TopologyClient:
    return TopologyClient(stack_config)


@pytest.fixture
def restored(admin):
    """The topology as found, put back exactly (PUT: the placement fields stay) and carried out."""
    before = admin.settled()
    yield before
    admin.apply(before["topology"], replace=True, timeout=APPLY_TIMEOUT_S)
    assert admin.settled()["topology"] == before["topology"]


def page() -> AppTest:
    at = AppTest.from_string(PAGE, default_timeout=APPLY_TIMEOUT_S).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Design"]
    return at


def dot_of(at: AppTest) -> str:
    charts = at.get("graphviz_chart")
    assert len(charts) == 1
    return charts[0].proto.spec


def apply(at: AppTest) -> AppTest:
    at.button(key="design_apply").click().run(timeout=APPLY_TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    return at


def admin_get(admin: TopologyClient, name: str) -> dict:
    """Another admin endpoint (nodes, cache...), with the same token as the topology client."""
    answer = requests.get(admin.url.rsplit("/", 1)[0] + f"/{name}", headers=admin.headers, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["data"]


def test_the_diagram_is_the_live_topology_with_the_figures_the_stack_reports(admin):
    live = admin.settled()
    t = live["topology"]

    def primary_users():
        return admin_get(admin, "nodes")["nodes"]["primary"].get("users")

    # The users estimate moves only when rows change: read it on both sides of the page's own read.
    for _ in range(5):
        before = primary_users()
        at = page()
        if primary_users() == before:
            break
    else:
        pytest.fail("the primary's users estimate kept changing")
    dot = dot_of(at)
    assert len(app_nodes(dot)) == t["app_servers"]
    assert f"cache.mode {t['cache']['mode']}" in label(dot, "cache_app")
    assert lit(dot, "cache_app") == (t["cache"]["mode"] != "off")
    assert f"{before:,} users" in dot, (before, dot)
    assert f"Topology version {live['version']}." in [c.value for c in at.caption if c.value.startswith("Topology")][0]
    # The form shows the live topology.
    assert at.selectbox(key="design_cache.mode").value == t["cache"]["mode"]
    assert at.number_input(key="design_app_servers").value == t["app_servers"]
    assert at.selectbox(key="design_lb_policy").value == t["lb_policy"]


def test_a_change_through_the_page_changes_the_live_topology_and_the_diagram(admin, stack_config, restored):
    """The cache mode (read by every app server) and the LB policy (which the controller carries out
    in Caddy, so the page follows it until what runs matches): cheap to switch and to switch back,
    unlike an app server, which takes half a minute to start and drain on a busy shared machine."""
    t = restored["topology"]
    mode = "cache-aside" if t["cache"]["mode"] == "off" else "off"
    policy = "least_conn" if t["lb_policy"] != "least_conn" else "round_robin"
    at = page()
    at.selectbox(key="design_cache.mode").set_value(mode)
    at.selectbox(key="design_lb_policy").set_value(policy)
    apply(at)
    assert not at.error, [e.value for e in at.error]
    done = [s.value for s in at.success if s.value.startswith("Applied")]
    assert len(done) == 1, [s.value for s in at.success]

    live = admin.data()
    assert live["topology"]["cache"]["mode"] == mode and live["topology"]["lb_policy"] == policy
    assert not topology.still_applying(live["pending"])
    assert done[0] == f"Applied: topology version {live['version']} runs."
    assert live["version"] == restored["version"] + 1  # one PATCH for both fields
    # What runs: the controller reports the policy Caddy now runs.
    status = wait_for(StackClient(stack_config).status, timeout=60, what="the controller's status")
    assert status["data_nodes"]["running"]["lb_policy"] == policy

    dot = dot_of(at)  # the same run, redrawn after the change
    assert f"cache.mode {mode}" in label(dot, "cache_app") and lit(dot, "cache_app") == (mode != "off")
    assert f"lb_policy {policy}" in label(dot, "caddy") and "Caddy runs" not in label(dot, "caddy")
    assert f"Topology version {live['version']}." in " ".join(c.value for c in at.caption)


def test_a_bad_value_is_refused_and_names_its_field(admin, restored):
    at = page()
    at.text_input(key="design_lb_header").set_value("X User")
    apply(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "field `lb_header`" in errors[0] and "Nothing was changed" in errors[0], errors
    # A value each field allows alone, refused together: ttl-only invalidation with write-through.
    at.text_input(key="design_lb_header").set_value(restored["topology"]["lb_header"])
    at.selectbox(key="design_cache.mode").set_value("write-through")
    at.selectbox(key="design_cache.invalidation").set_value("ttl")
    apply(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "field `cache.invalidation`" in errors[0], errors
    assert admin.data()["version"] == restored["version"]  # nothing was written


def test_a_form_sent_after_the_topology_changed_elsewhere_is_not_applied(admin, restored):
    at = page()
    at.toggle(key="design_cache.query_cache").set_value(not restored["topology"]["cache"]["query_cache"])
    other = not restored["topology"]["read_model"]
    admin.apply({"read_model": other})  # someone else, meanwhile
    apply(at)
    warned = [w.value for w in at.warning if "before this form was sent" in w.value]
    assert len(warned) == 1
    live = admin.data()
    assert live["topology"]["cache"]["query_cache"] == restored["topology"]["cache"]["query_cache"]
    assert live["version"] == restored["version"] + 1
    # The form now shows the other change, ready to be applied on top of it.
    assert at.toggle(key="design_read_model").value == other
    wait_for(lambda: not topology.still_applying(admin.data()["pending"]), what="the read model toggle")


@pytest.mark.skipif(os.environ.get("WORKBENCH_SOAK") != "1", reason="a reshard round trip: WORKBENCH_SOAK=1")
def test_a_reshard_started_from_the_page_moves_the_data_and_redraws(admin, restored, stack_config):
    t = restored["topology"]
    assert (t["shards"], t["reshard_shards"]) == (1, 0), "this test starts from one shard"
    at = page()
    at.number_input(key="design_shards").set_value(2)
    try:
        at.button(key="design_reshard").click().run(timeout=300)
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, [e.value for e in at.error]
        done = [s.value for s in at.success if s.value.startswith("Resharded")]
        assert len(done) == 1 and f"{t['sharding']} x 1 -> {t['sharding']} x 2" in done[0], done
        shards = admin_get(admin, "shards")
        assert (shards["shards"], shards["last_reshard"]["state"]) == (2, "done")
        assert f"Reshard #{shards['last_reshard']['id']} (done)" in done[0]
        dot = dot_of(at)
        assert lit(dot, "s2_primary") and "shard_more" not in dot
        users = [s["users"] for s in shards["per_shard"]]
        assert len(users) == 2 and all(users), users  # both shards hold users now
    finally:
        client = StackClient(stack_config)
        client.reshard(1, t["sharding"])   # back through the controller, as the page does
        back = wait_for(lambda: (lambda s: not s["running"] and s)(client.reshard_state()), timeout=300,
                        what="the reshard back to 1 shard")
        assert back["returncode"] == 0 or "already on 1 shard" in back["last_line"], back
        wait_for(lambda: admin_get(admin, "nodes")["running"]["shard_groups"] == 1, timeout=120,
                 what="shard-2 to be retired")


def test_a_page_facing_no_stack_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(free_port_base()))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    at = AppTest.from_string(PAGE, default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "did not answer" in errors[0] and "python manage.py up" in errors[0]
    assert not at.get("graphviz_chart")
