"""The Scale page and the multi-region follow-up, in-process with Streamlit's AppTest against the real
test stack. A preset pressed on the page (Phase 1: it changes app servers and the cache, not the shard
count) applies its topology and makes two runs through the controller, emulation off then on; the
page shows both runs' ids and p95s as saved in their results JSON (RunClient.get). A pinned baseline
puts every other run against it. A saved INVALID run shows as INVALID with its reason and no latency.
The reshard progress is drawn from the admin shards API's answer (a reshard itself is left out: it
does not fit this file's time budget; docs/benchmarks.md has the presets' reshards). The follow-up
measures one replica in another region against every node local and puts the topology back.
Everything the tests change is put back exactly (a PUT of the topology found) and waited for."""
import math
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lessons import measured, phases, reshard
from lessons.app_pages import scale
from lessons.followups import regions
from workbench import topology
from workbench.capacity import calibration, costs, fleet
from workbench.loadgen.client import RunClient

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300          # a preset: the topology, two 2 s runs, emulation on and off, on a shared machine


def script(body: str) -> str:
    return f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{body}\n"


SCALE = script("from lessons.app_pages import scale\nscale.render()")
REGIONS = script("from lessons.followups import regions\nregions.render()")
# The reshard progress as the page draws it (lessons/reshard.py), from the admin shards API (a job may
# replace the API's).
RESHARD = script("import streamlit as st\nfrom lessons import reshard\nfrom lessons.client import StackClient\n"
                 "data = StackClient().shards()\nif 'job' in st.session_state:\n"
                 "    data = {**data, 'last_reshard': st.session_state['job']}\n"
                 "reshard.show(st.empty(), data)")


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame(at: AppTest, column: str):
    """The dataframe that has this column."""
    [found] = [d.value for d in at.dataframe if column in d.value.columns]
    return found


def p95_shown(run: dict) -> str:
    s = run["summary"]
    return measured.ms(s["latency"]["p95_ms"]) if s["valid"] else "INVALID: not shown"


@pytest.fixture(scope="module")
def client(stack_config, stack):
    return RunClient(stack_config)


@pytest.fixture(scope="module")
def as_found(topology_admin):
    """The topology as this module found it; put back exactly at the end, and waited for."""
    before = topology_admin.settled()["topology"]
    yield before
    topology_admin.apply(before, replace=True)
    assert topology_admin.settled()["topology"] == before


@pytest.fixture(scope="module")
def phase1(client, as_found):
    """Phase 1 pressed on the page: 20 req/s for 2 s per run. The page is kept for the baseline test."""
    at = ok(AppTest.from_string(SCALE, default_timeout=TIMEOUT_S).run())
    at.number_input(key="scale_rate").set_value(20)
    at.number_input(key="scale_duration").set_value(2)
    ok(at.button(key="scale_preset_phase1").click().run())
    ids = at.session_state[scale.RUNS]["phase1"]
    return at, {arm: client.get(ids[arm]) for arm in phases.ARMS}


def test_a_preset_applies_its_topology_and_shows_both_runs_as_saved(phase1, topology_admin, stack_config):
    at, runs = phase1
    preset = phases.BY_KEY["phase1"]
    assert not [e.value for e in at.error if "stopped" in e.value]
    for arm, run in runs.items():
        assert run["status"] == "done" and run["label"] == preset.label(arm)
        w, t = run["workload"], run["topology"]
        assert (w["mode"], w["rate"], w["duration_s"], w["popularity"], w["seed"]) == ("open", 20, 2, "zipf",
                                                                                      scale.SEEDS[arm])
        assert (t["app_servers"], t["replicas"], t["cache"]["mode"]) == (1, 0, "cache-aside")
        assert t["emulation"]["enabled"] is (arm == "on")
    off, on = runs["off"], runs["on"]

    # Side by side, as saved: ids and p95s (an INVALID run's p95 is not shown).
    side = at.table[0].value
    assert list(side.columns) == ["emulation off", "emulation on"]
    assert list(side.loc["run"]) == [off["id"], on["id"]]
    assert list(side.loc["p95"]) == [p95_shown(off), p95_shown(on)]
    # Each run's card, and the table of every phase's runs with the p95 exactly as saved.
    cards = [m.value for m in at.markdown if "\u00b7 run `" in m.value]
    assert any(f"run `{off['id']}`" in c for c in cards) and any(f"run `{on['id']}`" in c for c in cards)
    shown = {m.value for m in at.metric if m.label == "p95"}
    for run in runs.values():
        assert (measured.ms(run["summary"]["latency"]["p95_ms"]) in shown) is run["summary"]["valid"]
    table = frame(at, "why invalid").set_index("run")
    for run in runs.values():
        p95 = table.loc[run["id"], "p95 (ms)"]
        if run["summary"]["valid"]:
            assert p95 == run["summary"]["latency"]["p95_ms"]
        else:
            assert p95 is None or math.isnan(p95)

    # The seed's figure, the measured one and the modelled one, side by side.
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["The seed's figure"] == "~10,000 req/s"
    assert metrics[f"Achieved ({scale.SHARED})"] == f"{off['summary']['achieved_rps']:,.1f} ok/s"
    rows = {r["phase"]: r for r in fleet.phases(fleet.Design(), costs.from_calibration(
        calibration.load(stack_config.data_dir)))}
    assert metrics["The phase carries (modelled)"] == scale.modelled_text(rows[preset.model_phase])

    # The steps, and the stack left in Phase 1 with emulation off and nothing pending.
    assert [e.label for e in at.expander if e.label.startswith("What Phase 1")]
    data = topology_admin.data()
    assert not data["pending"] and phases.matching(data["topology"]) is preset


def test_a_pinned_baseline_puts_the_other_runs_against_it(phase1):
    at, runs = phase1
    off, on = runs["off"], runs["on"]
    ok(at.button(key="scale_pin_phase1_off").click().run())
    assert at.session_state[scale.BASELINE] == off["id"]
    assert [m.value for m in at.markdown if m.value.startswith(f"**baseline** \u00b7 run `{off['id']}`")]
    assert at.button(key="scale_unpin_phase1_off")
    against = frame(at, "p95 \u0394 (ms)").set_index("run")
    assert off["id"] not in against.index
    delta = against.loc[on["id"], "p95 \u0394 (ms)"]
    if off["summary"]["valid"] and on["summary"]["valid"]:
        assert delta == pytest.approx(on["summary"]["latency"]["p95_ms"] - off["summary"]["latency"]["p95_ms"])
    else:
        assert delta is None or math.isnan(delta)
    # The pin is saved in the member's workspace: a new session starts from it.
    again = ok(AppTest.from_string(SCALE, default_timeout=TIMEOUT_S).run())
    assert again.session_state[scale.BASELINE] == off["id"]
    assert [m.value for m in again.markdown if m.value.startswith(f"**baseline** \u00b7 run `{off['id']}`")]
    ok(at.button(key="scale_unpin_phase1_off").click().run())
    assert not at.session_state[scale.BASELINE]
    assert not ok(AppTest.from_string(SCALE, default_timeout=TIMEOUT_S).run()).session_state[scale.BASELINE]


def test_an_invalid_run_shows_as_invalid_with_its_reason_and_no_latency(client, stack):
    # A rate one generator process cannot keep, for 25 ms (500 sends): a saved INVALID run.
    label = phases.BY_KEY["phase2"].label("off")
    run = client.run({"mode": "open", "rate": 20000, "duration_s": 0.025, "processes": 1, "path": "/healthz",
                      "timeout_s": 1}, label)
    s = run["summary"]
    assert not s["valid"], f"one generator process kept {run['workload']['rate']} req/s: pick a higher rate"
    at = ok(AppTest.from_string(SCALE, default_timeout=TIMEOUT_S).run())   # a new session finds it by its label
    assert at.session_state[scale.RUNS]["phase2"]["off"] == run["id"]
    ok(at.selectbox(key=scale.SHOW).set_value("phase2").run())
    banners = [e.value for e in at.error if e.value.startswith("**INVALID**")]
    assert len(banners) == 1 and s["invalid_reason"] in banners[0]
    side = at.table[0].value
    assert side.loc["run", "emulation off"] == run["id"]
    assert side.loc["valid", "emulation off"] == f"INVALID: {s['invalid_reason']}"
    assert {side.loc[p, "emulation off"] for p in ("p50", "p95", "p99")} == {"INVALID: not shown"}
    row = frame(at, "why invalid").set_index("run").loc[run["id"]]
    assert row["valid"] == "INVALID" and row["why invalid"] == s["invalid_reason"]
    assert all(row[c] is None or math.isnan(row[c]) for c in ("p50 (ms)", "p95 (ms)", "p99 (ms)"))
    seed = frame(at, "seed (req/s)").set_index("phase").loc["Phase 2: horizontal scaling"]
    assert seed["run"] == f"{run['id']} (INVALID)" and (seed["p95 (ms)"] is None or math.isnan(seed["p95 (ms)"]))


def test_reshard_progress_is_drawn_from_the_admin_shards_api(stack, stack_config):
    from lessons.client import StackClient
    api = StackClient(stack_config).shards()
    at = ok(AppTest.from_string(RESHARD, default_timeout=60).run())
    [bar] = at.get("progress")
    job = api["last_reshard"]
    if job is None:
        assert bar.proto.value == 0 and f"runs {api['shard_groups']} shard group(s)" in bar.proto.text
    else:
        assert bar.proto.text == reshard.line(job)
    # A reshard under way, in the shape the API reports it (ids as this stack would number them).
    moving = {"id": (job or {}).get("id", 0) + 1, "state": "moving", "from": [api["sharding"], 1],
              "to": [api["sharding"], 2], "batches": 3, "users_total": 10_002, "users_moved": 770, "posts_moved": 7_700,
              "fraction_moved": 0.077, "seconds": None, "before": {}, "after": {}}
    at.session_state["job"] = moving
    [bar] = ok(at.run()).get("progress")
    assert bar.proto.value == 14   # 3 batches of 500 users of 10,002
    assert f"{api['sharding']} x 1 -> {api['sharding']} x 2: batch 3 of about 21, 770 of 10,002 users moved (7.7%)" \
        in bar.proto.text
    at.session_state["job"] = {**moving, "users_total": 0, "batches": 0, "users_moved": 0, "posts_moved": 0}
    [bar] = ok(at.run()).get("progress")
    assert bar.proto.value == 0 and "starting the new shards' nodes" in bar.proto.text


def test_the_regions_follow_up_measures_a_far_replica_and_puts_the_topology_back(client, topology_admin, as_found):
    before = topology_admin.settled()["topology"]
    listed = len(client.list()["runs"])
    at = ok(AppTest.from_string(REGIONS, default_timeout=TIMEOUT_S).run())
    assert not at.table and len(client.list()["runs"]) == listed   # nothing runs until asked
    at.number_input(key="fu_regions_rate").set_value(20)
    at.number_input(key="fu_regions_duration").set_value(2)
    ok(at.button(key="fu_regions_run").click().run())
    assert not [e.value for e in at.error if "stopped" in e.value], [e.value for e in at.error]
    done = at.session_state[regions.RUNS]
    local, far = (client.get(done["ids"][arm]) for arm in regions.ARMS)
    assert local["topology"]["emulation"]["remote_replica"] == 0
    assert far["topology"]["emulation"]["remote_replica"] == done["far"] >= 1
    side = at.table[0].value
    assert list(side.loc["run"]) == [local["id"], far["id"]]
    assert list(side.loc["p95"]) == [p95_shown(local), p95_shown(far)]
    after = topology_admin.settled()["topology"]
    assert after == before

    ok(at.button(key="fu_regions_model_button").click().run())
    model = frame(at, "geo_routing")
    assert len(model) == 6 and set(model["mode"]) == {"async", "remote_write", "remote_apply"}


def test_phases_pure_logic():
    assert phases.parse_label("scale: phase3 emulation on") == ("phase3", "on")
    assert phases.parse_label("scale: nope emulation on") is None and phases.parse_label(None) is None
    listing = [{"id": "c", "label": "scale: start emulation on"}, {"id": "b", "label": "scale: start emulation on"},
               {"id": "a", "label": "scale: start emulation off"}, {"id": "z", "label": "other"}]
    assert phases.newest_runs(listing) == {"start": {"on": "c", "off": "a"}}
    assert phases.cache_hit_rate({"X-Cache": {"hit": 3, "hit-l1": 1, "miss": 4, "bypass": 9}}) == 0.5
    assert phases.cache_hit_rate({"X-Cache": {"off": 10}}) is None
    assert reshard.fraction({"state": "done"}) == 1.0
    assert reshard.fraction({"state": "moving", "batches": 30, "users_total": 1000}) == 0.99
    for p in phases.PRESETS:   # each preset is a valid topology, and is recognised as itself
        doc = {**topology.merge(topology.Topology().to_dict(), p.topology), "shards": p.shards}
        assert topology.parse(doc, check_machine=False).to_dict() == doc
        assert phases.matching(doc) is p
