"""The autoscaler's decisions (workbench/stack/autoscale.py, pure: no stack), its settings'
validation, and one run on the real stack: load makes it scale out, and it says why."""
import pytest

from conftest import Background, assert_problem, wait_for
from workbench import topology
from workbench.stack.autoscale import Signals, decide, in_peak, load

POLICY = topology.Autoscale(enabled=True, min=1, max=4, cooldown_s=30, in_flight=4, cpu_pct=80,
                            memory_pct=0, peak_hours="", peak_min=2)


def run(current, policy=POLICY, since=1000.0, hour=12, **signals):
    return decide(current=current, signals=Signals(**signals), policy=policy, since_change_s=since, hour=hour)


# --- pure decisions ----------------------------------------------------------------------------
def test_scales_out_in_proportion_to_the_load_up_to_max():
    assert (run(1, in_flight=6).target, run(1, in_flight=6).action) == (2, "out")  # at least one more
    assert run(2, in_flight=9).target == 4      # ceil(2 x 9/4) = 5, capped at max 4
    assert run(2, cpu_pct=130).target == 4      # ceil(2 x 1.625)
    decision = run(4, in_flight=20)
    assert (decision.action, decision.kind) == ("hold", "at-max") and "max 4" in decision.reason


def test_the_highest_signal_decides_and_a_zero_target_switches_one_off():
    assert load(Signals(in_flight=2, cpu_pct=72), POLICY) == (0.9, "cpu_pct")
    assert load(Signals(memory_pct=99), POLICY) is None  # memory_pct target 0: off
    assert run(2, memory_pct=99).kind == "no-signal"
    assert run(2, in_flight=None, cpu_pct=None).kind == "no-signal"  # e.g. Caddy did not answer


def test_scales_in_one_at_a_time_only_with_headroom():
    assert (run(3, in_flight=1, cpu_pct=10).target, run(3, in_flight=1).action) == (2, "in")
    # 2 servers at 1.6 in flight each: on one it would be 3.2, 80% of the target: no scale-in (hysteresis).
    assert run(2, in_flight=1.6).kind == "steady"
    assert run(2, in_flight=1.0).target == 1
    assert run(1, in_flight=0).kind == "steady"  # never below min


def test_cooldown_holds_changes_but_not_the_bounds():
    assert run(1, in_flight=10, since=5).kind == "cooldown-out"
    assert run(3, in_flight=0, since=5).kind == "cooldown-in"
    narrow = topology.Autoscale(enabled=True, min=2, max=3, cooldown_s=30)
    assert (run(1, narrow, since=0).target, run(1, narrow, since=0).kind) == (2, "floor")
    assert (run(5, narrow, since=0).target, run(5, narrow, since=0).kind) == (3, "ceiling")


def test_peak_hours_hold_a_floor():
    peak = topology.Autoscale(enabled=True, min=1, max=4, peak_hours="09-17", peak_min=3)
    assert run(1, peak, hour=9, in_flight=0).target == 3
    assert "peak hours 09-17" in run(1, peak, hour=16, in_flight=0).reason
    assert run(3, peak, hour=12, in_flight=0).kind == "steady"  # would scale in, but not below the floor
    assert run(3, peak, hour=17, in_flight=0).target == 2       # the end hour is outside
    assert [h for h in range(24) if in_peak("22-06", h)] == [0, 1, 2, 3, 4, 5, 22, 23]
    assert not in_peak("", 12)


@pytest.mark.parametrize("body,field", [
    ({"min": 3, "max": 2}, "autoscale.min"),
    ({"max": 9}, "autoscale.max"),
    ({"peak_hours": "9-17"}, "autoscale.peak_hours"),
    ({"peak_hours": "10-10"}, "autoscale.peak_hours"),
    ({"peak_hours": "09-17", "peak_min": 5, "max": 4}, "autoscale.peak_min"),
    ({"cooldown_s": -1}, "autoscale.cooldown_s"),
    ({"enabled": "yes"}, "autoscale.enabled"),
])
def test_bad_settings_name_their_field(body, field):
    with pytest.raises(topology.TopologyError) as caught:
        topology.parse({"autoscale": body})
    assert field in {name for name, _ in caught.value.errors}


# --- on the real stack -------------------------------------------------------------------------
def test_load_makes_it_scale_out_and_say_why(topology_admin, controller, api_url):
    bad = topology_admin.patch({"autoscale": {"min": 4, "max": 1}})
    assert_problem(bad, 400, "autoscale.min")
    topology_admin.apply({"app_servers": 1})
    try:
        topology_admin.apply({"autoscale": {"enabled": True, "min": 1, "max": 3, "cooldown_s": 5,
                                            "in_flight": 1, "cpu_pct": 0}})
        seen = len(controller.events())

        def slow_reads(http):
            return http.get(f"{api_url}/users?limit=100", timeout=30)

        def scaled_out():
            new = controller.events()[seen:]  # the deque holds the last 200: enough for this minute
            return [e for e in new if e["event"] == "autoscale" and e["action"] == "out"]

        with Background(slow_reads, threads=6, limit=400):
            decisions = wait_for(scaled_out, timeout=120, interval=1, what="an autoscale scale-out")
        assert decisions[0]["app_servers"] == 1 and decisions[0]["target"] >= 2
        assert "in_flight" in decisions[0]["reason"]
        assert wait_for(lambda: topology_admin.data()["topology"]["app_servers"] >= 2, timeout=30,
                        what="the autoscaler's change in the topology")
    finally:  # the defaults, as a new version: other modules expect them
        topology_admin.apply({}, replace=True)
