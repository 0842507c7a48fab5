"""The Follow-ups page's traffic experiments on the real test stack, in-process with AppTest:

- the 10x spike (lessons/followups/spike.py): the same spike run without and with load shedding and
  a per-client rate limit, started from the page through the controller; the page shows both runs'
  ids, p95s and errors by kind exactly as saved (RunClient.get), the saved runs carry the topology
  of their case, and the topology is back as it was afterwards;
- the token bucket (lessons/followups/ratelimit.py): a small rule set from the page, two bursts from
  one client through Caddy, each response's real RateLimit headers, 429s with Retry-After once the
  bucket is empty, the admin counters before and after;
- the model answers (lessons/app_pages/followups.py) stay hidden until their toggle is on.

Every test that changes the topology puts back what it found and waits for the app workers to run it."""
import json
import time
from pathlib import Path

import pytest
import requests
from streamlit.testing.v1 import AppTest

from api.gateway.ratelimit import partition_key
from lessons import measured
from lessons.followups import ratelimit as rl_followup
from lessons.followups import spike as spike_followup
from workbench import topology
from workbench.loadgen.client import RunClient

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 180      # two 3 s runs, each with the generator's start, a drain and three topology changes


def script(body: str) -> str:
    return f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{body}\n"


SPIKE = script("from lessons.followups import spike\nspike.render()")
RATELIMIT = script("from lessons.followups import ratelimit\nratelimit.render()")
PAGE = script("from lessons.app_pages import followups\nfollowups.render()")


def page(source: str) -> AppTest:
    at = AppTest.from_string(source, default_timeout=RUN_TIMEOUT_S).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def settle() -> None:
    time.sleep(topology.REFRESH_S + 0.3)  # every app worker checks the topology's version this often


@pytest.fixture
def topology_kept(topology_admin):
    """The topology as found; afterwards every group that differs is put back, and the whole document
    must read back the same."""
    before = topology_admin.data()["topology"]
    yield before
    after = topology_admin.data()["topology"]
    changed = {k: v for k, v in before.items() if after.get(k) != v and k not in topology.PLACEMENT_FIELDS}
    if changed:
        topology_admin.apply(changed)
        settle()
    assert topology_admin.data()["topology"] == before


# --- the spike ------------------------------------------------------------------------------------
def test_the_spike_runs_with_and_without_protection_and_shows_both_as_saved(topology_kept, stack_config):
    at = page(SPIKE)
    for key, value in (("rate", 10), ("for", 1), ("length", 3), ("clients", 5), ("limit", 1.0), ("timeout", 2.0)):
        at.number_input(key=f"fu_spike_{key}").set_value(value)
    at.button(key="fu_spike_go").click().run(timeout=RUN_TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "INVALID" not in e.value]

    table = at.table[0].value
    ids = {case: table.loc["run", spike_followup.TITLES[case]] for case in spike_followup.CASES}
    assert len(set(ids.values())) == 2
    client = RunClient(stack_config)
    cards = [m.value for m in at.markdown]
    p95s = [m.value for m in at.metric if m.label == "p95"]
    for case, run_id in ids.items():
        saved = client.get(run_id)
        s, column = saved["summary"], table[spike_followup.TITLES[case]]
        assert saved["label"] == f"follow-up spike: {case} protection"
        assert saved["workload"]["spike"] == {"at_s": 1.0, "for_s": 1.0, "factor": 10.0}
        assert any(f"run `{run_id}`" in text for text in cards), case
        if s["valid"]:
            assert measured.ms(s["latency"]["p95_ms"]) in p95s, case
            assert column["p95, every answer"] == measured.ms(s["latency"]["p95_ms"])
            assert column["p99, every answer"] == measured.ms(s["latency"]["p99_ms"])
        else:  # an invalid run is shown as such, its latencies withheld
            assert any(s["invalid_reason"] in e.value for e in at.error), case
            assert column["p95, every answer"] == measured.DASH
        assert column["429 rate-limited"] == f"{s['errors'].get('429', 0):,}"
        assert column["timeouts (client gave up)"] == f"{s['errors'].get('timeout', 0):,}"
        assert column["sent"] == f"{s['sent']:,}"

        # Each run ran under its case's topology (saved with the run, not the page's intent).
        ran = saved["topology"]
        rules = {r["name"]: r for r in ran["rate_limit"]["rules"]}
        if case == "without":
            assert not ran["shedding"]["enabled"] and not ran["rate_limit"]["enabled"]
        else:
            assert ran["shedding"]["enabled"] and ran["rate_limit"]["enabled"]
            assert rules[spike_followup.RULE]["refill_per_s"] == 2.0  # 10 req/s over 5 clients, x1.0
            assert s["errors"].get("429", 0) == s["attribution"].get("X-RateLimit-Status", {}).get("limited", 0)

    assert len(at.get("vega_lite_chart")) == 1
    after = " and ".join(f"{spike_followup.errors_after_spike(client.get(ids[case])):,} errors "
                         f"{spike_followup.TITLES[case].lower()}" for case in spike_followup.CASES)
    assert any(f"After the spike ended, {after}:" in c.value for c in at.caption)
    assert [x.value.split(":")[0] for x in at.success] == ["Topology restored"]


# --- the token bucket -----------------------------------------------------------------------------
def items(header: str) -> dict:
    return rl_followup.policy_items(header)


def test_a_burst_shows_the_real_ratelimit_headers_and_429s_once_the_bucket_is_empty(topology_kept, topology_admin,
                                                                                     api_url):
    rule = rl_followup.RULE
    at = page(RATELIMIT)
    at.number_input(key="fu_rl_capacity").set_value(3)
    at.number_input(key="fu_rl_refill").set_value(0.5)
    at.button(key="fu_rl_set").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]
    live = topology_admin.data()["topology"]["rate_limit"]
    assert live["enabled"] and {"name": rule, "per": ["ip"], "endpoints": [rl_followup.ENDPOINT], "capacity": 3,
                                "refill_per_s": 0.5} in live["rules"]

    at.number_input(key="fu_rl_n").set_value(5)
    at.number_input(key="fu_rl_wait").set_value(1.0)
    at.button(key="fu_rl_go").click().run()
    assert not at.exception and not at.error, [e.value for e in at.exception] + [e.value for e in at.error]

    rows = at.dataframe[0].value.to_dict("records")
    assert len(rows) == 10
    statuses = [r["status"] for r in rows]
    first_refusal = statuses.index(429)          # ValueError: no 429 at all
    assert first_refusal >= 3 and set(statuses[:first_refusal]) == {200}
    policy = f'"{rule}";q=3;w=6'
    pk = partition_key(["127.0.0.1"])            # through Caddy, this client is 127.0.0.1
    [said] = [m.value for m in at.markdown if m.value.startswith("Every response carried `RateLimit-Policy: ")]
    assert policy in said.split(": ", 1)[1].rstrip("`").split(", ")
    left = []
    for row in rows:
        mine = items(row["RateLimit"])[rule]
        assert mine["pk"] == pk
        left.append(int(mine["r"]))
        if row["status"] == 429:
            assert row["X-RateLimit-Status"] == "limited"
            assert int(row["Retry-After"]) >= 1 and int(row["Retry-After"]) == int(mine["t"])
        else:
            assert row["X-RateLimit-Status"] == "allowed" and row["Retry-After"] == ""
    assert left[:3] == [2, 1, 0]
    assert json.loads(at.json[0].value)["violated-policies"] == [rule]
    assert len(at.get("vega_lite_chart")) == 1

    # The same rule answers a request sent here, outside the page.
    url = at.markdown[[i for i, m in enumerate(at.markdown) if m.value.startswith("**10 requests**")][0]].value
    url = url.split("`")[1]
    direct = requests.get(url, timeout=10)
    assert policy in direct.headers["RateLimit-Policy"] and items(direct.headers["RateLimit"])[rule]["pk"] == pk

    counters = next(t.value for t in at.table if t.value.index.name == "admin counter")
    assert counters.loc["limited", "difference"] >= statuses.count(429)
    assert counters.loc["allowed", "difference"] >= statuses.count(200)

    at.button(key="fu_rl_restore").click().run()
    assert [x.value for x in at.success][-1].startswith("The limiter is back as it was")
    assert topology_admin.data()["topology"]["rate_limit"] == topology_kept["rate_limit"]


# --- the model answers ----------------------------------------------------------------------------
def test_the_model_answers_stay_hidden_until_their_toggle_is_on(stack):
    at = page(PAGE)
    titles = [t.label for t in at.tabs]
    assert spike_followup.TITLE in titles and rl_followup.TITLE in titles

    def shown(module) -> bool:
        return any(m.value == module.ANSWER.strip() for m in at.markdown)  # st.markdown strips its body

    for module in (spike_followup, rl_followup):
        assert at.toggle(key=f"fu_reveal_{module.KEY}").value is False
        assert not shown(module)
    at.toggle(key="fu_reveal_spike").set_value(True).run()
    assert shown(spike_followup) and not shown(rl_followup)
    at.toggle(key="fu_reveal_ratelimit").set_value(True).run()
    assert shown(spike_followup) and shown(rl_followup)
    at.toggle(key="fu_reveal_spike").set_value(False).run()
    assert not shown(spike_followup) and shown(rl_followup)
