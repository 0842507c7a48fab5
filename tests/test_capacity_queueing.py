"""The queueing model (workbench/capacity/queueing.py) against closed-form values, and the
simulator (workbench/capacity/simulate.py) against the model in a steady state. Pure: no stack."""
import math

import pytest

from workbench.capacity import queueing, simulate


def test_erlang_c_matches_textbook_values():
    # M/M/1: P(wait) = rho.
    assert queueing.erlang_c(1, 0.7) == pytest.approx(0.7)
    # M/M/2 with a = 1 (rho 0.5): C = (1/2 * 1/(1-0.5)) / (1 + 1 + 1) = 1/3.
    assert queueing.erlang_c(2, 1.0) == pytest.approx(1 / 3)
    # A widely tabulated case: 10 agents, 8 erlangs -> C = 0.4092 (to 4 places).
    assert queueing.erlang_c(10, 8.0) == pytest.approx(0.40918, abs=5e-5)
    # Large fleets stay finite (a^c / c! alone would overflow).
    assert 0 < queueing.erlang_c(5000, 4900.0) < 1


def test_mm1_closed_forms():
    q = queueing.MMc(lam=80, mu=100, c=1)
    assert q.utilisation == pytest.approx(0.8)
    assert q.mean_response == pytest.approx(1 / (100 - 80))           # 1 / (mu - lam)
    # For M/M/1 the response time is exponential with rate mu - lam: p95 = ln(20) / (mu - lam).
    assert q.percentile(0.95) == pytest.approx(math.log(20) / 20, rel=1e-9)
    assert q.percentile(0.5) == pytest.approx(math.log(2) / 20, rel=1e-9)


def test_theta_equal_to_mu_uses_the_limit():
    q = queueing.MMc(lam=100, mu=100, c=2)  # theta = 2*100 - 100 = mu
    near = queueing.MMc(lam=100.0001, mu=100, c=2)
    assert q.survival(0.01) == pytest.approx(near.survival(0.01), rel=1e-4)


def test_unstable_and_bad_inputs_are_refused():
    with pytest.raises(queueing.Unstable):
        queueing.MMc(lam=200, mu=100, c=2)
    with pytest.raises(ValueError):
        queueing.MMc(lam=1, mu=0, c=1)
    with pytest.raises(ValueError):
        queueing.servers_for(lam=100, mu=10, p95_s=0.1)  # ln(20)/10 = 0.3 s alone


def test_servers_for_is_the_smallest_fleet_that_meets_the_target():
    lam, mu, target = 10_000, 250, 0.02  # 4 ms service, p95 within 20 ms
    c = queueing.servers_for(lam, mu, target)
    assert queueing.MMc(lam, mu, c).percentile(0.95) <= target
    assert c == math.floor(lam / mu) + 1 or queueing.MMc(lam, mu, c - 1).percentile(0.95) > target
    # At 10M req/s the search still ends quickly and the fleet is just above lam / mu.
    big = queueing.servers_for(10_000_000, 250, 0.1)
    assert 40_000 < big < 40_500


@pytest.mark.parametrize("c,rho", [(1, 0.5), (4, 0.8), (16, 0.9)])
def test_the_simulator_agrees_with_the_model_in_a_steady_state(c, rho):
    """Tolerance: 5% on the mean and the p95 after a warm-up, with ~200k requests."""
    mu = 100.0
    lam = rho * c * mu
    horizon = 200_000 / lam
    result = simulate.run(lam, mu, c, horizon, seed=3)
    model = queueing.MMc(lam, mu, c)
    served = [t for at, t in result.latencies if at > horizon * 0.1]
    assert sum(served) / len(served) == pytest.approx(model.mean_response, rel=0.05)
    assert result.percentile(0.95, after=horizon * 0.1) == pytest.approx(model.percentile(0.95), rel=0.05)
    assert result.utilisation == pytest.approx(rho, rel=0.03)


def test_a_spike_with_a_bounded_queue_sheds_and_recovers():
    mu, c = 100.0, 4

    def schedule(t):  # 200 req/s, 10x for a second at t = 5 s
        return 2000.0 if 5 <= t < 6 else 200.0

    result = simulate.run(schedule, mu, c, 12.0, queue_limit=50, seed=5)
    assert result.shed and all(5 <= t < 6.6 for t in result.shed)
    calm_after = [lat for at, lat in result.latencies if at > 8]
    assert max(calm_after) < 0.2  # the queue drained: back to an idle tier's latencies
