"""The Trade-offs page against the real test stack, in-process with Streamlit's AppTest.

Each measured experiment is started through the page's button, as a learner would, with short runs:
the page shows each run's id and its p95 exactly as the controller saved them (read back with
RunClient.get), the runs ran under the topology the experiment set (saved with each run), what it
measured behaves as the mechanism says it must (the writer's own reads on the primary with
read-your-writes, no stale read under remote_apply and every write waiting out the replica's apply
delay; no stale read with event invalidation, stale ones with TTL only; profile documents answered
from the read model), and the topology is exactly as before afterwards. Whether a read is stale
depends on timing (a read slower than the apply delay sees the write), so "some reads are stale" is
asserted only once the probe made ENOUGH_READS; "none is" always.

Time: about 52 s of calls on a quiet machine, 85 s at a load average near 20 (2 cores shared with
other engineers' stacks), beyond the session stack's start. `manage.py write_behind_loss` (the
page's SIGKILL of the state Valkey) is left to tests/test_write_behind.py. The stale-read table is the
one `manage.py stale_probe` saved, as the admin cache API serves it. The p95-vs-cost curve is the
capacity model's for the Clarify answers, budget included, and labelled modelled. An unreachable
stack gets a message that says what to do.
"""
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from conftest import free_port_base
from lessons import interview, measured, tradeoffs as experiments
from lessons.client import StackClient
from workbench import topology
from workbench.capacity import calibration, cost, costs
from workbench.loadgen.client import RunClient

ROOT = Path(__file__).resolve().parents[1]
PAGE_SCRIPT = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from lessons.app_pages import tradeoffs
tradeoffs.render()
"""
TIMEOUT_S = 300         # a few 1-2 s runs, each with the generator's start, plus topology changes
DELAY_MS = 300          # stale_probe's lagging replica: about half the reads of it are stale
SECONDS = 1             # per case: the probe, and each measured run
# The probe's 10 users have 20 keys (a profile and a posts page each): with twice as many reads,
# most are not a key's first read, so some must meet an older copy (a TTL-only entry, a lagging replica).
ENOUGH_READS = 40


@pytest.fixture(scope="module")
def runs(stack_config, stack):
    return RunClient(stack_config)


@pytest.fixture
def kept(topology_admin):
    """The topology before the test; put back in teardown if the page did not (the test itself asserts
    that the page did)."""
    before = topology_admin.data()["topology"]
    yield before
    if topology_admin.data()["topology"] != before:
        topology_admin.apply({k: v for k, v in before.items() if k not in topology.PLACEMENT_FIELDS}, replace=True)
    assert topology_admin.settled()["topology"] == before


def new_page() -> AppTest:
    at = AppTest.from_string(PAGE_SCRIPT, default_timeout=TIMEOUT_S).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Trade-offs"]
    return at


def press(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run(timeout=TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    # Only an INVALID run's banner may be an error: it is a measurement, not a failure.
    assert not [e.value for e in at.error if not e.value.startswith("**INVALID**")]
    return at


def table(at: AppTest, index: str):
    [found] = [t.value for t in at.table if t.value.index.name == index]
    return found


def assert_restored(at: AppTest, topology_admin, before: dict) -> None:
    assert any(s.value.startswith("Topology restored") for s in at.success), [s.value for s in at.success]
    assert topology_admin.data()["topology"] == before


def assert_shown_as_saved(at: AppTest, shown_id: str, shown_p95: str, saved: dict) -> None:
    """The run's id and p95 on the page are the saved run's; an INVALID run's p95 is not shown."""
    s = saved["summary"]
    assert shown_id == saved["id"]
    assert shown_p95 == (measured.ms(s["latency"]["p95_ms"]) if s["valid"] else "INVALID")
    assert any(f"run `{saved['id']}`" in m.value for m in at.markdown)   # its run card
    if s["valid"]:
        assert measured.ms(s["latency"]["p95_ms"]) in [m.value for m in at.metric if m.label == "p95"]
    else:
        assert any(s["invalid_reason"] in e.value for e in at.error)


def test_consistency_stale_reads_and_the_write_cost_of_sync_replication(runs, kept, topology_admin):
    at = new_page()
    known = {r["id"] for r in runs.list()["runs"]}
    cases = ["async, read-your-writes on", "sync remote_apply"]
    at.multiselect(key="to_cons_cases").set_value(cases)
    at.number_input(key="to_cons_delay").set_value(DELAY_MS)
    at.number_input(key="to_cons_duration").set_value(SECONDS)
    at.number_input(key="to_cons_rate").set_value(40)
    press(at, "to_cons_start")

    shown = table(at, "case")
    assert list(shown.index) == cases
    for case in cases:
        run_id = shown.loc[case, "write run"]
        assert run_id not in known
        saved = runs.get(run_id)
        assert_shown_as_saved(at, run_id, shown.loc[case, "write p95"], saved)
        w, t = saved["workload"], saved["topology"]
        assert (w["mode"], w["read_ratio"], w["duration_s"], w["writes"]) == ("open", 0.0, SECONDS, {"create_post": 1})
        # The run ran under the experiment's topology: one replica applying late, and the case's settings.
        assert (t["replicas"], t["emulation"]["stale_replica"], t["emulation"]["apply_delay_ms"]) == (1, 1, DELAY_MS)
        assert (t["replication"], t["read_your_writes_s"]) == (
            experiments.CONSISTENCY_CASES[case]["replication"], experiments.CONSISTENCY_CASES[case]["read_your_writes_s"])

    pairs = experiments.OWN_PAIRS
    ryw, sync = (at.session_state["to_cons"]["rows"][i] for i in (0, 1))
    said = {row["case"]: {k: row[k] for k in ("version", "probe", "own", "lag_ms")} for row in (ryw, sync)}
    # Read-your-writes: the writer's own reads go to the primary and see its writes...
    assert ryw["own"]["nodes"] == {"primary": pairs - ryw["own"]["errors"]} and ryw["own"]["stale"] == 0, said
    assert shown.loc[cases[0], "own reads answered by"] == f"primary {pairs - ryw['own']['errors']}"
    # ...and protects nobody else: other clients reading the lagging replica still miss writes. (How
    # many depends on timing: a read slower than the apply delay sees the write. With enough reads,
    # some are quicker on any machine this suite runs on.)
    a = ryw["probe"]["all"]
    assert a["reads"] > 0, said
    if a["reads"] >= ENOUGH_READS:
        assert a["stale"] > 0, said
    assert shown.loc[cases[0], "stale reads (other clients)"] == f"{a['stale']:,} of {a['reads']:,}"
    # remote_apply: a commit returns once the replica applied it, so nobody reads the past...
    assert sync["probe"]["all"]["reads"] > 0 and sync["probe"]["all"]["stale"] == 0 and sync["own"]["stale"] == 0, said
    assert shown.loc[cases[1], "stale share"] == "0.00%"
    # ...and every write waited out the replica's apply delay.
    if sync["run"]["summary"]["valid"]:
        assert sync["run"]["summary"]["latency"]["p95_ms"] >= DELAY_MS
    assert_restored(at, topology_admin, kept)


def test_the_stale_read_table_is_the_probes(kept, topology_admin, stack_config):
    at = new_page()
    at.multiselect(key="to_inv_groups").set_value(["cache-aside, event invalidation", "cache-aside, TTL only"])
    at.multiselect(key="to_inv_ttls").set_value([5])
    at.number_input(key="to_inv_duration").set_value(2)
    press(at, "to_inv_start")

    saved = StackClient(stack_config).cache()["stale_probe"]   # what `manage.py stale_probe` saved
    assert saved["options"]["duration"] == 2 and saved["options"]["ttl"] == [5]
    rows = {r["case"]: r["all"] for r in saved["rows"]}
    assert list(rows) == ["cache-aside, event invalidation", "cache-aside, TTL only, TTL 5 s"]
    [text] = [m.value for m in at.markdown if "| case | reads |" in m.value]
    for case, a in rows.items():
        assert f"| {case} | {a['reads']:,} | {a['stale']:,} | {(a['stale_fraction'] or 0):.2%} |" in text
    assert rows["cache-aside, event invalidation"]["reads"] > 0
    assert rows["cache-aside, event invalidation"]["stale"] == 0       # invalidated before the write's answer
    if rows["cache-aside, TTL only, TTL 5 s"]["reads"] >= ENOUGH_READS:  # most reads of a key after its first
        assert rows["cache-aside, TTL only, TTL 5 s"]["stale"] > 0     # left until the entry expires
    assert any(s.value.startswith("Topology restored by `manage.py stale_probe`") for s in at.success)
    assert topology_admin.data()["topology"] == kept


def _clarify(client: StackClient, token: str) -> dict:
    return client.workspace("clarify", token)


def test_the_cost_curve_is_the_models_for_the_clarify_answers_and_budget(stack_config, stack):
    client = StackClient(stack_config)
    token = client.sign_in_demo()
    held = _clarify(client, token)
    answers, _ = interview.answers_from(held["data"])
    budget = 50_000_000
    client.save_workspace("clarify", {**answers, "budget_month": budget}, token)
    try:
        at = new_page()
    finally:
        client.save_workspace("clarify", held["data"], token)   # the learner's answers as they were
    [chart] = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
               if "p95 vs cost" in json.loads(c.proto.spec)["layout"]["title"]["text"]]
    assert chart["layout"]["title"]["text"] == "p95 vs cost (modelled)"
    assert "modelled" in chart["layout"]["xaxis"]["title"]["text"]
    per_request = costs.from_calibration(calibration.load(stack_config.data_dir, "calibration"))
    curve = cost.curve(experiments.design_from(answers, 16), per_request, utils=experiments.CURVE_UTILS)
    assert chart["data"][0]["x"] == [r["month"] for r in curve]
    assert chart["data"][0]["y"] == [r["p95_ms"] for r in curve]
    assert any(s.get("x0") == budget for s in chart["layout"]["shapes"])   # the budget line
    shown = table(at, "utilisation ceiling")
    assert list(shown["within budget"]) == ["yes" if r["month"] <= budget else "OVER" for r in curve]
    assert any(f"${budget:,} a month" in c.value for c in at.caption)


def test_the_read_model_against_the_sql_path(runs, kept, topology_admin):
    at = new_page()
    at.number_input(key="to_rm_duration").set_value(SECONDS)
    at.number_input(key="to_rm_connections").set_value(4)
    press(at, "to_rm_start")

    shown = table(at, "path")
    assert list(shown.index) == list(experiments.READ_MODEL_CASES)
    saved = {}
    for path, on in experiments.READ_MODEL_CASES.items():
        run = saved[on] = runs.get(shown.loc[path, "run"])
        assert_shown_as_saved(at, shown.loc[path, "run"], shown.loc[path, "p95"], run)
        assert shown.loc[path, "throughput (ok/s)"] == f"{run['summary']['achieved_rps']:,.1f}"
        assert (run["topology"]["read_model"], run["topology"]["cache"]["mode"]) == (on, "off")
        assert run["workload"]["reads"] == {"user_profile": 1} and run["workload"]["mode"] == "closed"
    # Each path really answered: the SQL path built every profile from SQL, the other read documents.
    assert set(saved[False]["summary"]["attribution"]["X-Read-Model"]) == {"off"}
    assert saved[True]["summary"]["attribution"]["X-Read-Model"].get("hit", 0) > 0
    doc = at.session_state["to_rm"]["rows"][1]["readmodel"]
    stale = doc["staleness_ms"]
    if stale["samples"]:
        assert shown.iloc[1]["staleness p50 / p95 / max (ms)"] == \
            f"{stale['p50']:,.1f} / {stale['p95']:,.1f} / {stale['max']:,.1f}"
    assert_restored(at, topology_admin, kept)


def test_an_unreachable_stack_is_explained(monkeypatch, tmp_path):
    base = free_port_base()
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    at = new_page()
    at.button(key="to_cons_start").click().run(timeout=TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    messages = [e.value for e in at.error]
    assert any("python manage.py up" in m and f"127.0.0.1:{base}" in m for m in messages), messages
    assert "to_cons" not in at.session_state
