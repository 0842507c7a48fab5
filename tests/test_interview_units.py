"""Pure logic of the interview pages: the phases scaled to an exercise's length, the Clarify answers'
reading and validation, the Markdown export, and the back-of-envelope arithmetic
(workbench/capacity/envelope.py) checked against figures worked out by hand."""
import math

import pytest

from lessons import interview
from workbench.capacity import envelope


@pytest.mark.parametrize("minutes, lengths", [
    (45, [5, 10, 15, 10, 5]),                  # the seed's shortest phases add up to 45
    (60, [8.75, 13.75, 18.75, 13.75, 5]),      # three quarters of the way to the longest
    (30, [10 / 3, 20 / 3, 10, 20 / 3, 10 / 3]),  # under 45: the shortest, in proportion
])
def test_the_phases_scale_to_the_length(minutes, lengths):
    plan = interview.plan(minutes)
    assert [p["key"] for p in plan] == ["clarify", "high_level", "detailed", "scaling", "tradeoffs"]
    assert plan[0]["start_s"] == 0 and plan[-1]["end_s"] == minutes * 60
    assert all(a["end_s"] == b["start_s"] for a, b in zip(plan, plan[1:]))
    for phase, length in zip(plan, lengths):
        assert abs((phase["end_s"] - phase["start_s"]) - length * 60) <= 1, phase
    assert interview.phase_at(plan, 0) == 0
    assert interview.phase_at(plan, plan[1]["start_s"]) == 1
    assert interview.phase_at(plan, minutes * 60) is None


def test_stored_answers_are_checked_before_use():
    answers, ignored = interview.answers_from({"qps_avg": "ten", "regions": 2, "compliance": ["GDPR"],
                                               "availability": 42.0, "read_percent": True, "unknown": 1})
    assert sorted(ignored) == ["availability", "qps_avg", "read_percent"]
    assert answers["regions"] == 2 and answers["compliance"] == ["GDPR"]
    assert answers["qps_avg"] == interview.DEFAULTS["qps_avg"]
    assert interview.check(interview.DEFAULTS) == ([], [])

    bad = {**interview.DEFAULTS, "qps_peak": 5, "p99_ms": 50, "compliance": ["none", "GDPR"], "regions": 1,
           "region_mode": "active-passive", "functions": []}
    errors, _ = interview.check(bad)
    assert {field for field, _ in errors} == {"qps_peak", "p95_ms", "compliance", "regions", "functions"}
    _, warnings = interview.check({**interview.DEFAULTS, "regions": 1})
    assert [field for field, _ in warnings] == ["regions"]


def test_notes_export_as_markdown_in_the_phases_order():
    text = interview.notes_markdown({"scaling": "shard by user id", "clarify": "10M req/s"}, 45, "ada")
    assert text.index("## Clarify requirements (00:00-05:00)") < text.index("10M req/s") \
        < text.index("## Scaling and optimization (30:00-40:00)") < text.index("shard by user id")
    assert text.count("_No notes._") == 3 and "by ada" in text


def test_the_envelope_matches_the_arithmetic_by_hand():
    a = envelope.Answers(qps_avg=1e6, qps_peak=5e6, read_share=0.8, records_now=1e9, record_bytes=500,
                         new_record_share=0.5, horizon_years=2, availability=99.9, regions=2)
    s = envelope.Assumptions()
    f = {x.key: x.value for x in envelope.estimate(a, s)}
    assert f["qps_region"] == 5e6                         # two regions: either carries it all
    assert f["writes_peak"] == pytest.approx(1e6)
    growth = 0.2 * 1e6 * 0.5 * 500 * 86_400               # 4.32 TB a day
    assert f["growth_day"] == pytest.approx(growth)
    assert f["storage"] == pytest.approx(1e9 * 500 + 365 * 2 * growth)
    assert f["bandwidth_out"] == pytest.approx(5e6 * 1000 * 8)
    assert f["cache_bytes"] == pytest.approx(0.2 * 1e9 * 500 * 1.5)
    assert f["cache_nodes"] == 2 * math.ceil(0.2 * 1e9 * 500 * 1.5 / 64e9)
    assert f["app_servers"] == 2 * math.ceil(5e6 / 5600)
    assert f["shards"] == max(math.ceil(1e6 / 5000), math.ceil(f["storage"] / 2e12))
    assert f["replicas"] == 1                             # three nines: one for failover is enough here
    assert f["db_nodes"] == f["shards"] * (1 + 1 * 2)
    assert f["downtime"] == pytest.approx(0.001 * 30.44 * 24 * 60)
    assert envelope.estimate(envelope.Answers(availability=99.99), s)[-1].value < f["downtime"]


def test_a_run_is_read_and_compared_with_its_labels():
    run = {"id": "r1", "label": "x", "workload": {"mode": "closed", "rate": 50.0, "read_ratio": 0.9},
           "summary": {"valid": True, "achieved_rps": 300.0, "sent": 1000, "error_count": 10,
                       "latency": {"p50_ms": 5.0, "p95_ms": 40.0, "p99_ms": 80.0},
                       "attribution": {"X-Cache": {"hit": 60, "hit-l1": 20, "miss": 20, "off": 0}}},
           "topology": {"shards": 2, "replicas": 1, "cache": {"mode": "cache-aside"},
                        "processes": {"app_servers_running": 3}},
           "machine": {"cores": 2, "cpu": {"max_percent": 99.0}}}
    m = envelope.measured(run)
    assert (m["per_server_rps"], m["cache_hit"], m["error_share"], m["shards"]) == (100.0, 0.8, 0.01, 2)
    a, s = envelope.Answers(), envelope.Assumptions()
    rows = {r["figure"]: r for r in envelope.compare(envelope.estimate(a, s), a, s, m)}
    assert rows["p95 latency"]["measured"] == "40.00 ms"
    assert "shared-CPU" in rows["Requests/s per app server"]["kind"]
    assert rows["App servers for your peak"]["measured"] == f"{3 * math.ceil(1e8 / 2 / 100):,}"
    invalid = envelope.measured({**run, "summary": {**run["summary"], "valid": False, "invalid_reason": "late"}})
    rows = {r["figure"]: r for r in envelope.compare(envelope.estimate(a, s), a, s, invalid)}
    assert rows["p95 latency"]["measured"] == "INVALID run: not shown"


def test_human_figures():
    assert envelope.human((1 - 0.8) * 5e6, "writes/s") == "1 M writes/s"
    assert envelope.human(69.12e12, "B/day") == "69.1 TB/day"
    assert envelope.human(26787, "servers") == "26,787 servers"
    assert envelope.human(None) == "\u2014"
