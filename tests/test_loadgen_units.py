"""Pure logic of the load generator: Zipf sampling, key popularity, the arrival schedule and its split
over processes, merging recorders across processes, the validity rule, workload validation and the
loopback-only target check. No stack, no network."""
import collections
import json
import math
import random

import pytest

from workbench.loadgen.recorder import LATE_US, Recorder
from workbench.loadgen.workload import Keys, Workload, WorkloadError, Zipf, arrivals, check_target, next_request

# --- Zipf sampling ---------------------------------------------------------------------------------

N, S, SAMPLES, TOP = 1000, 1.1, 100_000, 20


def zipf_probabilities(n: int, s: float) -> list[float]:
    weights = [1.0 / k ** s for k in range(1, n + 1)]
    h = sum(weights)
    return [w / h for w in weights]


@pytest.fixture(scope="module")
def zipf_counts():
    zipf = Zipf(N, S)
    rng = random.Random(12345)
    return collections.Counter(zipf.sample(rng) for _ in range(SAMPLES))


def test_zipf_ranks_stay_in_range(zipf_counts):
    assert min(zipf_counts) >= 0
    assert max(zipf_counts) <= N - 1
    assert sum(zipf_counts.values()) == SAMPLES


def test_zipf_chi_squared_over_top_ranks_and_tail(zipf_counts):
    p = zipf_probabilities(N, S)
    observed = [zipf_counts.get(k, 0) for k in range(TOP)] + [sum(c for k, c in zipf_counts.items() if k >= TOP)]
    expected = [SAMPLES * p[k] for k in range(TOP)] + [SAMPLES * sum(p[TOP:])]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    # 20 degrees of freedom: the 99.9th percentile is 45.3; 60 is generous for a seeded sample, yet
    # an off-by-one rank (1/k^s for k from 0 or 2) or a wrong exponent gives thousands.
    assert chi2 < 60, (chi2, observed[:6], [round(e) for e in expected[:6]])


def test_zipf_top_five_frequencies_match_theory(zipf_counts):
    p = zipf_probabilities(N, S)
    for k in range(5):
        expected = SAMPLES * p[k]
        sigma = math.sqrt(SAMPLES * p[k] * (1 - p[k]))
        observed = zipf_counts.get(k, 0)
        assert abs(observed - expected) <= max(4 * sigma, 0.01 * expected), (k, observed, expected)
        assert abs(observed - expected) / expected < 0.08, (k, observed, expected)
    # The hottest rank is about 18% of all draws for n=1000, s=1.1.
    assert 0.17 < zipf_counts[0] / SAMPLES < 0.19


def test_zipf_exponent_changes_the_skew():
    rng = random.Random(7)
    z_steep, z_flat = Zipf(N, 2.0), Zipf(N, 0.5)
    steep = collections.Counter(z_steep.sample(rng) for _ in range(20_000))
    flat = collections.Counter(z_flat.sample(rng) for _ in range(20_000))
    p2, p05 = zipf_probabilities(N, 2.0)[0], zipf_probabilities(N, 0.5)[0]
    assert abs(steep[0] / 20_000 - p2) < 0.02      # about 0.61
    assert abs(flat[0] / 20_000 - p05) < 0.005     # about 0.016
    assert steep[0] > 10 * flat[0]


# --- Keys: uniform vs zipf -------------------------------------------------------------------------

USERS = list(range(5001, 6001))                  # 1000 seeded ids
POSTS = [(u, 100_000 + u) for u in USERS]


def draw_users(popularity: str, n: int = 20_000):
    keys = Keys(USERS, POSTS, Workload(popularity=popularity, zipf_s=S, seed=3))
    rng = random.Random(99)
    return keys, collections.Counter(keys.user(rng) for _ in range(n))


def test_uniform_keys_spread_evenly_over_the_seeded_ids():
    _, counts = draw_users("uniform")
    assert set(counts) <= set(USERS)
    assert len(counts) >= 990                       # practically every id is drawn
    expected = 20_000 / len(USERS)                  # 20 per id
    assert max(counts.values()) < 3 * expected
    chi2 = sum((counts.get(u, 0) - expected) ** 2 / expected for u in USERS)
    assert chi2 < 1300, chi2                        # 999 dof: mean 999, sd ~45


def test_zipf_keys_are_skewed_and_the_hot_key_is_not_the_oldest_row():
    keys, counts = draw_users("zipf")
    assert set(counts) <= set(USERS)
    hottest, hot_count = counts.most_common(1)[0]
    assert 0.16 < hot_count / 20_000 < 0.20
    assert hottest == keys.users[0]                 # rank 0 through the fixed shuffle
    assert keys.users != USERS and sorted(keys.users) == USERS
    # Top 10 ranks take about half the draws under Zipf(1.1); about 1% under uniform.
    top10 = sum(c for _, c in counts.most_common(10))
    assert top10 / 20_000 > 0.4


def test_keys_posts_follow_the_same_popularity_and_are_real_pairs():
    keys = Keys(USERS, POSTS, Workload(popularity="zipf", zipf_s=S, seed=3))
    rng = random.Random(5)
    drawn = collections.Counter(keys.post(rng) for _ in range(10_000))
    assert set(drawn) <= set(POSTS)
    assert drawn.most_common(1)[0][0] == keys.posts[0]


def test_keys_without_users_is_an_error_naming_keys():
    with pytest.raises(WorkloadError) as info:
        Keys([], [], Workload())
    assert info.value.field == "keys"


# --- arrivals --------------------------------------------------------------------------------------

def test_constant_rate_gives_exact_count_and_spacing():
    w = Workload(rate=100, duration_s=2)
    times = list(arrivals(w))
    assert len(times) == 200
    assert times[0] == 0.0
    assert max(times) < 2.0
    gaps = {round(b - a, 9) for a, b in zip(times, times[1:])}
    assert gaps == {0.01}


def test_non_integer_rate_count():
    times = list(arrivals(Workload(rate=7.5, duration_s=4)))
    assert len(times) == 30


def test_spike_profile_multiplies_the_rate_for_its_window():
    w = Workload(rate=100, duration_s=10, spike={"at_s": 2, "for_s": 3, "factor": 10})
    times = list(arrivals(w))
    assert len(times) == 2 * 100 + 3 * 1000 + 5 * 100
    per_second = collections.Counter(int(t) for t in times)
    assert [per_second[s] for s in range(10)] == [100, 100, 1000, 1000, 1000, 100, 100, 100, 100, 100]
    assert times == sorted(times)


def test_spike_running_past_the_end_is_clipped():
    w = Workload(rate=100, duration_s=10, spike={"at_s": 8, "for_s": 5, "factor": 10})
    assert len(list(arrivals(w))) == 8 * 100 + 2 * 1000
    w0 = Workload(rate=100, duration_s=3, spike={"at_s": 1, "for_s": 0, "factor": 10})
    assert len(list(arrivals(w0))) == 300


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_parts_split_the_single_schedule_exactly(parts):
    w = Workload(rate=333, duration_s=3, spike={"at_s": 1, "for_s": 1, "factor": 4})
    single = list(arrivals(w))
    shares = [list(arrivals(w, p, parts)) for p in range(parts)]
    merged = sorted(t for share in shares for t in share)
    assert merged == single
    assert sum(len(s) for s in shares) == len(single)
    seen = collections.Counter(t for share in shares for t in share)
    assert all(c == 1 for c in seen.values())         # each arrival in exactly one part
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(share == sorted(share) for share in shares)


def test_max_requests_bounds_the_whole_schedule_not_each_part():
    w = Workload(rate=100, duration_s=10, max_requests=150)
    assert len(list(arrivals(w))) == 150
    assert list(arrivals(w)) == list(arrivals(Workload(rate=100, duration_s=10)))[:150]
    shares = [list(arrivals(w, p, 4)) for p in range(4)]
    assert sum(map(len, shares)) == 150
    assert sorted(t for s in shares for t in s) == list(arrivals(w))


# --- Recorder merge --------------------------------------------------------------------------------

def _feed(recorders, n=2000):
    """Deterministic values spread over several recorders (round robin), as processes would."""
    rng = random.Random(42)
    for i in range(n):
        r = recorders[i % len(recorders)]
        second = i * 5 // n                                   # seconds 0..4
        r.scheduled += 1
        r.on_send(second, rng.choice([0, 10, 200, 900, 1500, 4000]))
        latency = int(rng.lognormvariate(math.log(5000), 1.0)) + 1
        outcome = "ok" if i % 17 else ("503" if i % 2 else "timeout")
        headers = None if outcome == "timeout" else {"X-App-Server": f"app-{1 + i % 2}",
                                                     "X-Cache": "hit" if i % 3 == 0 else ""}
        r.on_done(second, "user" if i % 4 else "create_post", latency, latency // 2, outcome, headers)
    recorders[0].dropped += 3
    recorders[-1].dropped += 2
    recorders[-1].on_send(4, 50)          # sent but never answered: dropped
    recorders[-1].scheduled += 1


def test_merging_recorders_equals_one_recorder_fed_everything():
    one = Recorder()
    _feed([one])
    a, b = Recorder(), Recorder()
    _feed([a, b])
    # Across a process boundary the parts travel as JSON-able dicts.
    parts = [json.loads(json.dumps(r.to_dict())) for r in (a, b)]
    merged = Recorder.merge(parts)

    for name in ("scheduled", "sent", "ok", "dropped", "late"):
        assert getattr(merged, name) == getattr(one, name), name
    assert merged.sent == a.sent + b.sent == 2001
    assert merged.ok + sum(merged.errors.values()) + merged.dropped == 2000 + 5
    assert merged.errors == one.errors and merged.by_kind == one.by_kind
    assert merged.attribution == one.attribution
    assert set(merged.attribution["X-App-Server"]) == {"app-1", "app-2"}
    assert sum(merged.attribution["X-App-Server"].values()) == merged.ok + merged.errors["503"]
    assert "" not in merged.attribution["X-Cache"]

    for hist in ("histogram", "service", "lag"):
        h1, h2 = getattr(merged, hist), getattr(one, hist)
        assert h1.get_total_count() == h2.get_total_count(), hist
        for q in (1, 50, 90, 95, 99, 99.9, 100):
            assert h1.get_value_at_percentile(q) == h2.get_value_at_percentile(q), (hist, q)
        assert h1.get_max_value() == h2.get_max_value()
        assert h1.get_min_value() == h2.get_min_value()

    assert sorted(merged.seconds) == sorted(one.seconds) == [0, 1, 2, 3, 4]
    for s in one.seconds:
        m, o = merged.seconds[s], one.seconds[s]
        assert (m.sent, m.ok, dict(m.errors)) == (o.sent, o.ok, dict(o.errors)), s
        assert m.sent == a.seconds[s].sent + b.seconds[s].sent
        assert m.histogram.get_total_count() == o.histogram.get_total_count()
        for q in (50, 95, 99, 100):
            assert m.histogram.get_value_at_percentile(q) == o.histogram.get_value_at_percentile(q)

    assert merged.summary(5.0) == one.summary(5.0)
    assert merged.timeseries() == one.timeseries()
    # Percentiles survive the merge near the known distribution: lognormal median 5 ms.
    assert 4.0 < merged.summary(5.0)["latency"]["p50_ms"] < 6.0


def test_merge_of_many_parts_and_of_an_empty_part():
    parts = [Recorder() for _ in range(5)]
    _feed(parts, n=1000)
    dicts = [r.to_dict() for r in parts] + [Recorder().to_dict()]
    merged = Recorder.merge(dicts)
    assert merged.sent == sum(r.sent for r in parts)
    assert merged.histogram.get_total_count() == sum(r.histogram.get_total_count() for r in parts)
    assert merged.histogram.get_max_value() == max(r.histogram.get_max_value() for r in parts)
    totals = merged.timeseries()
    assert sum(row["sent"] for row in totals) == merged.sent
    assert sum(row["ok"] for row in totals) == merged.ok
    assert sum(sum(row["errors"].values()) for row in totals) == sum(merged.errors.values())


def test_summary_of_known_values():
    r = Recorder()
    for ms in range(1, 101):                          # 1..100 ms, one each
        r.on_send(0, 0)
        r.on_done(0, "fixed", ms * 1000, ms * 1000, "ok")
    s = r.summary(1.0)
    assert s["latency"]["p50_ms"] == pytest.approx(50, rel=0.002)
    assert s["latency"]["p95_ms"] == pytest.approx(95, rel=0.002)
    assert s["latency"]["p99_ms"] == pytest.approx(99, rel=0.002)
    assert s["latency"]["max_ms"] == pytest.approx(100, rel=0.002)
    assert s["achieved_rps"] == 100.0 and s["error_count"] == 0


# --- validity --------------------------------------------------------------------------------------

def _with_lags(total: int, late: int, late_us: int = LATE_US + 1) -> Recorder:
    r = Recorder()
    for i in range(total):
        r.on_send(0, late_us if i < late else 200)
    return r


def test_more_than_one_percent_late_sends_make_the_run_invalid():
    r = _with_lags(1000, 11)
    assert r.late == 11
    valid, why = r.valid()
    assert not valid and "late" in why
    assert r.summary(1.0)["valid"] is False
    assert r.summary(1.0)["invalid_reason"]


def test_one_percent_or_fewer_late_sends_is_valid():
    for late in (0, 5, 10):
        r = _with_lags(1000, late)
        assert r.valid() == (True, ""), late
        assert r.summary(1.0)["valid"] is True
        assert r.summary(1.0)["generator_lag"]["late_share"] == late / 1000


def test_late_means_more_than_one_millisecond():
    assert _with_lags(100, 50, late_us=LATE_US).late == 0          # exactly 1 ms is on time
    assert _with_lags(100, 50, late_us=LATE_US + 1).late == 50
    assert _with_lags(100, 50, late_us=LATE_US).valid()[0] is True
    assert _with_lags(100, 50, late_us=5000).valid()[0] is False


# --- workload validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("data, field", [
    ({"rate": -1}, "rate"),
    ({"rate": 0}, "rate"),
    ({"rate": 10 ** 9}, "rate"),
    ({"rate": "fast"}, "rate"),
    ({"mode": "half-open"}, "mode"),
    ({"bogus": 1}, "bogus"),
    ({"duration_s": 0}, "duration_s"),
    ({"duration_s": 10_000}, "duration_s"),
    ({"read_ratio": 1.5}, "read_ratio"),
    ({"popularity": "pareto"}, "popularity"),
    ({"connections": 0}, "connections"),
    ({"reads": {"nope": 1}}, "reads"),
    ({"spike": {"at_s": 1, "for_s": 2, "factor": -3}}, "spike.factor"),
    ({"spike": {"at_s": 1, "for_s": 2}}, "spike.factor"),
    ({"rate": 1000, "spike": {"at_s": 1, "for_s": 2, "factor": 1000}}, "spike.factor"),
    ({"spike": 5}, "spike"),
    ({"path": "healthz"}, "path"),
    ({"path": 5}, "path"),
    ({"user_header": "X User"}, "user_header"),
    ({"user_header": 7}, "user_header"),
    ({"timeout_s": -1}, "timeout_s"),
    ({"timeout_s": 10 ** 9}, "timeout_s"),
    ({"max_requests": 0}, "max_requests"),
    ({"connections": 4.5}, "connections"),
    ({"seed": "x"}, "seed"),
    ({"reads": ["user"]}, "reads"),
    ({"writes": {"create_post": "1"}}, "writes"),
    ({"spike": {"at_s": 1, "for_s": 2, "factor": float("nan")}}, "spike.factor"),
])
def test_from_dict_errors_name_the_field(data, field):
    with pytest.raises(WorkloadError) as info:
        Workload.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_from_dict_accepts_a_full_valid_workload():
    data = {"rate": 250, "duration_s": 3, "mode": "closed", "connections": 8, "read_ratio": 0.7,
            "popularity": "zipf", "zipf_s": 1.2, "spike": {"at_s": 1, "for_s": 1, "factor": 10},
            "source_ips": 4, "path": None, "seed": 9, "user_header": "X-User-Id"}
    w = Workload.from_dict(data)
    assert w.to_dict()["spike"] == data["spike"]
    assert Workload.from_dict(w.to_dict()) == w
    assert Workload.from_dict({}) == Workload()


# --- target check ----------------------------------------------------------------------------------

REFUSED = ["http://10.0.0.1:8000/", "http://example.com/", "https://93.184.216.34/", "http://0.0.0.0:8000/",
           "http://127.0.0.1@example.com/", "http://localhost.example.com/", "http://[2001:db8::1]:80/",
           "http:///nohost", "ftp://127.0.0.1/"]
ACCEPTED = ["http://127.0.0.1:8000", "http://127.0.0.5:1234/x", "http://[::1]:8000/", "http://localhost:8000",
            "http://LOCALHOST/", "https://127.0.0.1:8443/"]


@pytest.fixture
def no_allowed_hosts(monkeypatch):
    monkeypatch.delenv("WORKBENCH_LOADGEN_ALLOWED_HOSTS", raising=False)


@pytest.mark.parametrize("url", REFUSED)
def test_check_target_refuses_anything_not_loopback(url, no_allowed_hosts):
    for allowed in ([], None):
        with pytest.raises(WorkloadError) as info:
            check_target(url, allowed)
        assert info.value.field == "target"


@pytest.mark.parametrize("url", ACCEPTED)
def test_check_target_accepts_loopback(url, no_allowed_hosts):
    check_target(url, [])
    check_target(url)


def test_check_target_accepts_an_explicitly_allowed_host_only(monkeypatch):
    check_target("http://10.0.0.1:8000/", ["10.0.0.1"])
    check_target("http://bench.internal/", ["bench.internal"])
    with pytest.raises(WorkloadError):
        check_target("http://10.0.0.2:8000/", ["10.0.0.1"])
    with pytest.raises(WorkloadError):
        check_target("http://example.com/", ["bench.internal"])
    # The stack's configuration (environment) lists the external hosts.
    monkeypatch.setenv("WORKBENCH_LOADGEN_ALLOWED_HOSTS", "10.0.0.1,bench.internal")
    check_target("http://10.0.0.1:8000/")
    check_target("http://bench.internal/")
    with pytest.raises(WorkloadError):
        check_target("http://10.0.0.2:8000/")


def test_workload_target_is_checked(no_allowed_hosts):
    with pytest.raises(WorkloadError) as info:
        Workload.from_dict({"target": "http://example.com:8000"})
    assert info.value.field == "target"
    assert Workload.from_dict({"target": "http://127.0.0.1:9/"}).target == "http://127.0.0.1:9/"


def test_server_timing_parts_are_parsed_and_averaged_across_merged_recorders():
    from workbench.loadgen.recorder import Recorder, server_timing

    assert server_timing("app;dur=1.20, cache;dur=0.31, db;desc=x;dur=2") == {"app": 1.2, "cache": 0.31, "db": 2.0}
    assert server_timing("app;dur=oops, miss") == {}
    a, b = Recorder(), Recorder()
    a.on_done(0, "user", 1000, 1000, "ok", {"Server-Timing": "app;dur=2.00, db;dur=1.00"})
    b.on_done(0, "user", 1000, 1000, "ok", {"Server-Timing": "app;dur=4.00"})
    b.on_done(0, "user", 1000, 1000, "ok", {})  # no header: not part of the means
    merged = Recorder.merge([a.to_dict(), b.to_dict()])
    assert merged.summary(1.0)["server_timing_ms"] == {"app": 3.0, "db": 0.5}


def test_hot_keys_limits_the_keys_a_workload_draws_from():
    w = Workload(hot_keys=3).validate()
    keys = Keys(list(range(100)), [(u, u * 10) for u in range(100)], w)
    rng = random.Random(7)
    assert len({keys.user(rng) for _ in range(500)}) == 3
    assert len({keys.post(rng) for _ in range(500)}) == 3
    with pytest.raises(WorkloadError):
        Workload(hot_keys=-1).validate()


def test_the_mixed_workload_sends_slow_reads_beside_point_reads():
    """The least-connections lesson's mix: searches and 100-row pages among point reads."""
    w = Workload(read_ratio=1.0, reads={"user": 0.8, "search": 0.1, "large_page": 0.1}).validate()
    keys = Keys(list(range(1, 101)), [(u, u * 10) for u in range(1, 101)], w)
    rng = random.Random(3)
    sent = [next_request(w, keys, rng, seq) for seq in range(2000)]
    kinds = collections.Counter(kind for kind, *_ in sent)
    assert set(kinds) == {"user", "search", "large_page"} and 100 < kinds["search"] < 300, kinds
    paths = {kind: path for kind, _, path, _ in sent}
    assert paths["search"].startswith("/api/v1/search/posts?q=") and paths["search"].count("+") == 7
    assert paths["large_page"] == "/api/v1/users?limit=100"
    assert all(method == "GET" and body is None for _, method, _, body in sent)


def test_the_stale_read_probe_counts_a_read_that_lacks_an_acknowledged_write():
    from workbench.loadgen.staleprobe import Acks

    acks = Acks()
    acks.add(1.0, 1)
    acks.add(2.0, 3)
    acks.add(3.0, 5)
    assert acks.missed(0.5, lambda v: v <= 0) is None          # nothing acknowledged yet
    assert acks.missed(2.5, lambda v: v <= 3) is None          # shows the newest acknowledged write
    assert acks.missed(2.5, lambda v: v <= 1) == 0.5           # lacks version 3, acknowledged at 2.0
    assert acks.missed(3.5, lambda v: v <= 0) == 2.5           # lacks all three: aged from the first
    assert acks.missed(3.0, lambda v: v <= 3) is None          # version 5 was not acknowledged before the send


def test_the_run_list_skips_files_that_are_not_runs(tmp_path):
    """A stray JSON file in the results folder (once, the stale-read probe's tables) must not break
    the controller's GET /runs for every later caller."""
    from workbench.loadgen.runs import list_results, results_dir
    from workbench.stack import config

    cfg = config.load({"WORKBENCH_DATA_DIR": str(tmp_path)})
    run = {"id": "20261128T000000Z-abcdef", "label": "x", "workload": {"mode": "open", "rate": 5},
           "summary": {"valid": True, "achieved_rps": 5.0, "latency": {"p95_ms": 1.0}}}
    (results_dir(cfg) / f"{run['id']}.json").write_text(json.dumps(run))
    (results_dir(cfg) / "stale-probe-20261128T000001Z.json").write_text(json.dumps({"rows": []}))
    (results_dir(cfg) / "broken.json").write_text("{")
    assert [r["id"] for r in list_results(cfg)] == [run["id"]]
