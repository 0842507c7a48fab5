"""The Follow-ups page's data experiments on the real test stack (lessons/followups/failure.py and
shards.py), through Streamlit's AppTest: each experiment started from its button runs in a process
of its own (lessons/followups/child.py), and the page then shows each fault run's id, its p95 and
its ledger (writes lost) exactly as saved in the run's results JSON, read back through the
controller (RunClient.get). The topology and the chaos state are checked, and if need be put
back, after each experiment; the model answers stay hidden until their toggle is on."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lessons.followups import failure, shards
from lessons.measured import ms
from workbench.loadgen.client import RunClient
from workbench.stack import launcher

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from {module} import render
render()
"""
TIMEOUT_S = 420   # two fault runs, replicas added and removed, a shard started and retired


def manage(*args):
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())


def page(module: str) -> AppTest:
    at = AppTest.from_string(SCRIPT.format(root=str(ROOT), module=module), default_timeout=TIMEOUT_S).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def shown_text(at: AppTest) -> str:
    return "\n".join(x.value for x in [*at.markdown, *at.caption, *at.error, *at.success, *at.warning])


def check_runs(at: AppTest, stack_config, messages: list[dict], steps: tuple) -> list[dict]:
    """Each step's saved run: its id on the page, its p95 (valid runs) and its ledger exactly as saved."""
    done = {m["step"]: m for m in messages if m.get("state") == "done"}
    assert list(done) == list(steps), messages
    saved = [RunClient(stack_config).get(done[s]["run_id"]) for s in steps]
    text = shown_text(at)
    metrics = {}
    for m in at.metric:
        metrics.setdefault(m.label, []).append(m.value)
    for run in saved:
        assert f"run `{run['id']}`" in text
        assert run["fault"]["requests"] >= run["workload"]["rate"] * run["workload"]["duration_s"] * 0.9, "the load ran"
        assert run["fault"]["acknowledged_writes"] > 0, "writes were acknowledged"
    # A valid run's p95 in its card; an invalid one's said to be invalid, with its figures in the
    # collapsed section that says they are not the server's latency (as the Load test page does).
    assert metrics.get("p95", []) == [ms(r["summary"]["latency"]["p95_ms"]) for r in saved if r["summary"]["valid"]]
    invalid = [r for r in saved if not r["summary"]["valid"]]
    assert len([e for e in at.error if e.value.startswith("**INVALID**")]) == len(invalid)
    assert metrics.get("p95 latency", []) == [ms(r["summary"]["latency"]["p95_ms"]) for r in invalid]
    assert len([e for e in at.expander if e.label.startswith("Latency figures of this INVALID run")]) == len(invalid)
    for r in invalid:
        assert r["summary"]["invalid_reason"] in text
    assert metrics["Writes lost"] == [f"{r['fault']['writes_lost']:,} of {r['fault']['acknowledged_writes']:,}"
                                      for r in saved]
    return saved


@pytest.fixture
def topology_as_found(stack_config, topology_admin):
    """The topology document and the chaos state before; after the test, both must be the same (put back
    here if the experiment did not, and the test fails)."""
    before = topology_admin.settled()["topology"]
    held = failure.status(stack_config)["chaos"]["held"]
    yield before
    problems = []
    for name in set(failure.status(stack_config)["chaos"]["held"]) - set(held):
        launcher.chaos(stack_config, "start", name)
        problems.append(f"{name} left held")
    after = topology_admin.settled(timeout=300)["topology"]
    if (after["sharding"], after["shards"], after["reshard_shards"]) != (before["sharding"], before["shards"], 0):
        if after["reshard_shards"]:
            manage("reshard", "--rollback")
        manage("reshard", "--to", str(before["shards"]), "--strategy", before["sharding"])
        problems.append(f"placement left {after['sharding']} x {after['shards']}")
    after = topology_admin.settled(timeout=300)["topology"]
    if after != before:
        problems.append(f"topology left changed: {[k for k in before if before[k] != after.get(k)]}")
        topology_admin.apply(before, replace=True, timeout=300)
    assert not problems, problems


def test_the_model_answers_stay_hidden_until_revealed(stack):
    at = AppTest.from_string(SCRIPT.format(root=str(ROOT), module="lessons.app_pages.followups"),
                             default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    for module in (failure, shards):
        answer = module.ANSWER.strip().splitlines()[0]
        assert module.TITLE in [s.value for s in at.subheader]
        assert not any(answer in md.value for md in at.markdown), module.KEY
        at.toggle(key=f"fu_reveal_{module.KEY}").set_value(True).run()
        assert any(answer in md.value for md in at.markdown), module.KEY
        at.toggle(key=f"fu_reveal_{module.KEY}").set_value(False).run()
        assert not any(answer in md.value for md in at.markdown), module.KEY
    # Nothing was measured or changed by rendering: no experiment ran.
    assert "fu_failure_messages" not in at.session_state and "fu_shards_messages" not in at.session_state


def test_database_failure_shows_each_fault_run_as_saved_and_puts_the_stack_back(stack_config, topology_as_found,
                                                                                  controller):
    since = time.time()
    at = page("lessons.followups.failure")
    at.number_input(key="fu_failure_rate").set_value(30)
    at.number_input(key="fu_failure_duration").set_value(6)
    at.number_input(key="fu_failure_fault_at").set_value(1)
    at.checkbox(key="fu_failure_add_replicas").check()
    at.button(key="fu_failure_run").click().run(timeout=TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    messages = at.session_state["fu_failure_messages"]
    assert not [m for m in messages if "error" in m], messages
    replica, primary = check_runs(at, stack_config, messages, failure.STEPS)

    # What each fault did, as saved: a replica's death costs no read; the primary's costs writes,
    # each a prompt 503 (with Retry-After, as the probe sent during the window shows), never a 500
    # or a timeout. (Reads can fail too while the one replica left rejoins the promoted primary's
    # timeline; tests/test_faults.py holds the targets, this page shows what happened.)
    assert replica["fault"]["failed_reads"] == 0, replica["fault"]["errors"]
    assert set(primary["fault"]["errors"]) <= {"503"} and primary["fault"]["failed_writes"] > 0
    # The failover happened (perhaps after the short run's end, when the run's own events miss it).
    assert [e for e in controller.events() if e["ts"] >= since and e["event"] == "failover_done"]
    probe = next(m for m in messages if m.get("step") == "primary" and m.get("state") == "done")["probe"]
    assert probe["write"]["status"] == 503 and probe["write"]["retry_after"], probe
    assert probe["write"]["content_type"].startswith("application/problem+json"), probe
    assert probe["read"]["status"] == 200, probe
    assert [m.value for m in at.metric if m.label == "Availability"] == [
        f"{r['fault']['availability']:.2%}" for r in (replica, primary)]

    # The experiment put the stack back itself, and says so.
    restored = next(m["restored"] for m in messages if "restored" in m)
    assert restored["same"] and restored["replicas"] == topology_as_found["replicas"], restored
    assert any(s.value.startswith("Put back: the topology as found") for s in at.success)


def test_sharding_shows_the_reshard_under_writes_as_saved_and_uniqueness_across_shards(stack_config,
                                                                                        topology_as_found):
    at = page("lessons.followups.shards")
    at.number_input(key="fu_shards_to").set_value(topology_as_found["shards"] + 1)
    at.number_input(key="fu_shards_rate").set_value(30)
    at.number_input(key="fu_shards_duration").set_value(5)
    at.number_input(key="fu_shards_start_at").set_value(1)
    at.button(key="fu_shards_run").click().run(timeout=TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    messages = at.session_state["fu_shards_messages"]
    assert not [m for m in messages if "error" in m], messages
    [run] = check_runs(at, stack_config, messages, ("reshard",))
    assert run["fault"]["writes_lost"] == 0 and run["fault"]["lost_ids"] == [], run["fault"]
    assert run["fault"]["failed"] == 0, run["fault"]["errors"]     # the move cost no request

    # The reshard ran to its end, and its progress was relayed.
    moves = [m["reshard"] for m in messages if "reshard" in m and m["reshard"]["phase"] == "grow"]
    assert moves[-1]["done"] and moves[-1]["ok"] and " done:" in moves[-1]["text"], moves[-1]
    assert any("fraction" in m for m in moves), "no reshard progress was relayed"

    # Uniqueness across shards: the same username twice, and one email on two shards, each a 409
    # problem+json naming the field, shown on the page.
    u = next(m["unique"] for m in messages if "unique" in m)
    assert u["first"]["status"] == 201
    assert u["other"]["status"] == 201 and shards.shard_of(u["other"]) != shards.shard_of(u["first"]), u["other"]
    assert shards.shard_of(u["first"]).startswith("shard-"), u["first"]
    for key, field in (("again", "username"), ("take_email", "email")):
        assert u[key]["status"] == 409 and u[key]["content_type"].startswith("application/problem+json"), u[key]
        assert field in str(u[key]["body"]), u[key]
        assert any(json.loads(j.value) == u[key]["body"] for j in at.json), key
    assert shown_text(at).count("**HTTP 409**") == 2

    restored = next(m["restored"] for m in messages if "restored" in m)
    assert restored["same"], restored
    assert any(s.value.startswith("Put back:") and "as found" in s.value for s in at.success)
