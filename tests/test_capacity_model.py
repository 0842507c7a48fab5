"""The capacity model's pure logic, no stack: calibration from log lines and CPU samples, the machine
model against M/M/c, fleet sizing, availability, multi-region, cost, the phases, the fleet
simulator against the model, and the CLI's sizing. Each should take well under a second."""
import json
import math
import random

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from workbench.capacity import (availability, calibration, cost, costs, fleet, machine, queueing, regions,
                                simulate, validation)
from workbench.capacity.plan import plan, text

P = {"node_failures_a_year": 0.55, "node_repair_h": 1.0, "region_availability": 0.9999, "db_failover_s": 60.0,
     "cache_failover_s": 30.0, "region_failover_s": 90.0, "region_rtt_ms": 65.0, "user_rtt_ms": 20.0,
     "local_lag_ms": 0.2}


# --- calibration ---------------------------------------------------------------------------------
def _line(ts, method, uri, duration_s, timing, node="primary", status=200):
    return json.dumps({"ts": ts, "status": status, "duration": duration_s,
                       "request": {"method": method, "uri": uri},
                       "resp_headers": {"Server-Timing": [timing], "X-Db-Node": [node], "X-Cache": ["off"]}})


def test_access_records_classify_and_cost_each_request():
    lines = [
        _line(100.0, "GET", "/api/v1/users/12", 0.006, "app;dur=5.00, queue;dur=0.50, db;dur=1.00"),
        _line(100.1, "GET", "/api/v1/users/12/posts?limit=20", 0.009, "app;dur=8.00, db;dur=3.00, cache;dur=0.40"),
        _line(100.2, "POST", "/api/v1/users/12/posts", 0.012, "app;dur=11.00, db;dur=4.00", node="primary"),
        _line(100.3, "GET", "/healthz", 0.001, "app;dur=0.10"),                 # not API traffic
        _line(99.0, "GET", "/api/v1/users/13", 0.006, "app;dur=5.00"),          # outside the window
        "not json",
    ]
    records = calibration.access_records(lines, 100.0, 101.0)
    assert [r["kind"] for r in records] == ["user", "user_posts", "create_post"]
    out = calibration.request_costs(records)
    assert out["requests"] == 3
    assert out["app_ms"]["user"]["mean"] == pytest.approx(5.0)
    # The app's own time: app - db - cache - qcache.
    assert out["app_own_ms"]["read"]["mean"] == pytest.approx(((5 - 1) + (8 - 3 - 0.4)) / 2, abs=1e-3)
    assert out["app_own_ms"]["write"]["mean"] == pytest.approx(7.0)
    assert out["db_ms"]["primary"]["n"] == 3
    assert out["cache_rtt_ms"]["mean"] == pytest.approx(0.4)
    # LB: Caddy's duration minus the app server's time (app + queue).
    assert out["lb_ms"]["mean"] == pytest.approx(((6 - 5.5) + (9 - 8) + (12 - 11)) / 3, abs=1e-3)


def test_spread_is_the_10th_to_90th_percentile():
    s = calibration.Spread.of(range(1, 102))  # 1..101
    assert (s.mean, s.low, s.high, s.n) == (51, 11, 91, 101)
    assert calibration.Spread.of([]) is None


def _samples(rate, per_request_cores, fixed, seconds=10, noise=0.0, seed=1):
    rng = random.Random(seed)
    cum, out = {"app": 0.0, "generator": 0.0}, []
    for k in range(seconds + 1):
        out.append({"t": float(k), "machine": sum(cum.values()) + 0.1 * k, "tiers": dict(cum)})
        cum["app"] += rate * per_request_cores * (1 + rng.uniform(-noise, noise))
        cum["generator"] += fixed
    return out


def test_cpu_fit_separates_cost_per_request_from_cost_per_second():
    # The app spends 4 ms per request; the generator 0.2 cores whatever the rate.
    windows = []
    for rate in (40.0, 80.0):
        costs_ = calibration.cpu_costs(_samples(rate, 0.004, 0.2, noise=0.1), rate, 0.0, 10.0)
        assert costs_["background_cores"]["mean"] == pytest.approx(0.1, abs=1e-6)
        windows += costs_["windows"]
    fit = calibration.cpu_fit(windows)
    assert fit["app"]["per_request_ms"] == pytest.approx(4.0, rel=0.1)
    assert fit["app"]["fixed_cores"] == pytest.approx(0.0, abs=0.03)
    assert fit["generator"]["per_request_ms"] == pytest.approx(0.0, abs=1e-6)
    assert fit["generator"]["fixed_cores"] == pytest.approx(0.2)
    assert fit["total"]["low"] <= fit["total"]["per_request_ms"] <= fit["total"]["high"]
    assert calibration.cpu_fit(windows[:5]) is None  # one rate: no fit


def test_read_and_write_costs_are_solved_from_two_mixes():
    a, b = calibration._fit_two([(1.0, 4.0), (0.0, 6.0), (0.5, 5.0)])
    assert (a, b) == (pytest.approx(4.0), pytest.approx(6.0))


# --- the machine model ---------------------------------------------------------------------------
def test_machine_model_is_mmc_when_unloaded_latency_is_the_exponential_service():
    """T = U + W with U exponential (mean s) and cs^2 = 1 is exactly M/M/c; tolerance 5% (sampling)."""
    rng = random.Random(2)
    s_ms = 10.0
    m = machine.Machine(cores=2, per_request_ms=s_ms, fixed_cores=0.0,
                        unloaded_ms=[rng.expovariate(1 / s_ms) for _ in range(4000)], cv2=1.0)
    lam = 150.0  # rho = 0.75
    exact = queueing.MMc(lam, 1000 / s_ms, 2).percentile(0.95) * 1000
    assert m.percentile(lam) == pytest.approx(exact, rel=0.05)
    assert m.saturation_rps == pytest.approx(200.0)
    assert m.percentile(250.0) == math.inf
    slo = m.throughput_at(100.0)
    assert 150 < slo < 200 and m.percentile(slo) <= 100.0


def test_fixed_cores_lower_the_saturation_rate():
    m = machine.Machine(cores=2, per_request_ms=10.0, fixed_cores=0.5, unloaded_ms=[5.0] * 100)
    assert m.saturation_rps == pytest.approx(150.0)
    assert m.percentile(10.0) == pytest.approx(5.0, abs=0.5)


def test_validation_compares_within_the_tolerance():
    cal = {"machine": {"cores": 2}, "cpu_fit": {"total": {"per_request_ms": 10.0, "fixed_cores": 0.0, "low": 9.0,
                                                          "high": 11.0, "n": 20}},
           "unloaded": {"samples_ms": [8.0] * 200, "cv2": 0.5, "p95_ms": 8.0}}
    p = {"slo_p95_ms": 100.0, "tolerance": 0.25}
    row = validation.compare(cal, 190.0, {0.5: {"rate": 95.0, "p95_ms": 30.0, "valid": True},
                                          0.8: {"rate": 152.0, "p95_ms": 40.0, "valid": True}}, p)
    assert row["rps_ok"] is True  # the model says just under 200
    lo, hi = row["loads"][0.8]["interval_ms"]
    assert lo < row["loads"][0.8]["predicted_p95_ms"] < hi
    assert validation.within(100, 130, 0.25) is True and validation.within(100, 140, 0.25) is False


# --- fleet, availability, regions, cost, phases ------------------------------------------------------
def test_fleet_sizing_respects_the_ceiling_and_the_slo():
    c = costs.Costs()
    f = fleet.size(fleet.Design(rps=1_000_000, regions=1), c)
    for t in f["tiers"]:
        assert t["utilisation"] <= 0.7 + 1e-9, t
    app = next(t for t in f["tiers"] if t["name"] == "app servers")
    assert app["cores"] * 0.7 >= 1_000_000 * app["service_ms"] / 1000
    assert f["meets_p95"] and f["latency_ms"]["p50"] < f["latency_ms"]["p95"] < f["latency_ms"]["p99"]
    double = fleet.size(fleet.Design(rps=2_000_000, regions=1), c)
    assert double["total"]["app servers"] == pytest.approx(2 * f["total"]["app servers"], rel=0.02)
    # A region must carry a failed region's share: 3 regions provision 1.5x.
    three = fleet.size(fleet.Design(rps=1_000_000, regions=3), c)
    assert three["headroom"] == 1.5
    with pytest.raises(ValueError):
        fleet.size(fleet.Design(read_ratio=1.5), c)


def test_phases_check_the_seeds_figures():
    rows = {r["phase"]: r for r in fleet.phases(fleet.Design(), costs.Costs())}
    start = rows["Start small"]
    # One 16-core app server at 70%: 16 x 0.7 x 1000 / (0.9 x 4.48 + 0.1 x 6.39) ms.
    assert start["model_max_rps"] == pytest.approx(16 * 0.7 * 1000 / (0.9 * 4.48 + 0.1 * 6.39))
    assert start["holds"] is True
    assert rows["Phase 1: caching"]["holds"] is False  # one server cannot carry 10K at these costs
    assert rows["Phase 4: multi-region"]["model_max_rps"] is None


def test_k_of_n_and_nines_closed_forms():
    a = 0.99
    assert availability.at_least(1, 2, a) == pytest.approx(1 - (1 - a) ** 2)
    assert availability.at_least(2, 2, a) == pytest.approx(a * a)
    assert availability.at_least(2, 3, a) == pytest.approx(a ** 3 + 3 * a * a * (1 - a))
    assert availability.nines(0.9999) == pytest.approx(4.0)
    assert availability.at_least(9000, 10000, 0.9999) == pytest.approx(1.0)


def test_one_region_cannot_beat_its_region():
    c = costs.Costs()
    one = availability.design(fleet.size(fleet.Design(rps=100_000, regions=1), c), P)
    three = availability.design(fleet.size(fleet.Design(rps=100_000, regions=3), c), P)
    assert one["availability"] <= P["region_availability"] and not one["meets"]
    assert three["meets"] and three["nines"] > one["nines"]


def test_replication_modes_and_geo_routing():
    assert regions.replication("async", P)["rpo_ms"] > 0
    assert regions.replication("remote_write", P)["rpo_ms"] == 0
    assert regions.replication("remote_apply", P)["lag_ms"] == 0
    assert regions.replication("remote_apply", P)["write_added_ms"] >= P["region_rtt_ms"]
    server = [10.0] * 2000
    on = regions.user_latency(server, 3, 0.9, P, geo_routing=True)
    off = regions.user_latency(server, 3, 0.9, P, geo_routing=False)
    # Without geo-routing two users in three cross regions: the median pays the round trip.
    assert on["p50"] == pytest.approx(30.0) and off["p50"] == pytest.approx(30.0 + P["region_rtt_ms"])


def test_cost_lines_add_up_and_the_curve_trades_cost_for_headroom():
    c = costs.Costs()
    d = fleet.Design(rps=100_000, regions=1)
    bill = cost.monthly(fleet.size(d, c))
    assert bill["month"] == pytest.approx(sum(bill["lines"].values()), abs=0.1)
    assert bill["per_million"] == pytest.approx(bill["month"] / (100_000 * cost.SECONDS_A_MONTH / 1e6), rel=1e-3)
    curve = cost.curve(d, c, utils=(0.4, 0.6, 0.9))
    assert curve[0]["month"] > curve[1]["month"] > curve[2]["month"]
    assert cost.budget_check(bill, bill["month"] / 2)["within"] is False


def test_plan_and_cli_print_the_same_modelled_sizing(capsys):
    r = plan(fleet.Design(rps=10_000, regions=1), costs.Costs(), curve=False)
    assert "MODELLED" in text(r)
    call_command("capacity", "--defaults", "--rps", "10000", "--regions", "1")
    out = capsys.readouterr().out
    assert out.startswith("MODELLED sizing for 10,000 req/s") and "availability" in out
    with pytest.raises(CommandError):
        call_command("capacity", "--defaults", "--read-ratio", "1.5")


# --- the fleet simulator -------------------------------------------------------------------------
def test_fleet_simulator_agrees_with_mmc_in_a_steady_state():
    """No spike, no shedding: the p95 of one cell within 10% of M/M/c's (about 60k requests)."""
    f = simulate.Fleet(rate=1200.0, spike=1.0, service_ms=5.0, cores_per_node=4, nodes=2, max_nodes=2,
                       shed_ms=None, horizon_s=50.0, seed=4)
    r = simulate.run_fleet(f)
    exact = queueing.MMc(1200.0, 200.0, 8).percentile(0.95) * 1000
    assert r["total"]["p95_ms"] == pytest.approx(exact, rel=0.10)
    assert r["total"]["limited"] == r["total"]["shed"] == 0


def test_a_spike_is_limited_shed_and_scaled_out_after_the_boot_delay():
    f = simulate.Fleet(rate=200.0, spike=10.0, spike_at_s=5.0, spike_for_s=20.0, horizon_s=40.0, service_ms=5.0,
                       cores_per_node=2, nodes=1, max_nodes=20, boot_s=10.0, scale_every_s=2.0,
                       rate_limit=1500.0, shed_ms=50.0, seed=2)
    r = simulate.run_fleet(f)
    rows = r["seconds"]
    assert r["total"]["limited"] > 0 and r["total"]["shed"] > 0
    assert max(x["p95_ms"] or 0 for x in rows) < 50.0 + 5.0 * 8  # the shed budget, plus a service tail
    first = next(x["t"] for x in rows if x["nodes"] > 1)
    assert first >= 5 + 10  # no node before the spike plus the boot delay
    assert rows[-1]["shed"] == 0 and rows[-1]["limited"] == 0
