"""The Load test page against the real test stack; every run goes through the stack controller.

In-process with Streamlit's AppTest: a short open-model run submitted through the page's form shows
the figures the controller saved for it (validity, rates, latencies from the intended send next to
the service time, charts) and is listed among the saved runs; a closed-model run compares with it
as ratios; a second run while one goes (409), a refused workload (400) and an unreachable
controller each get a message that says what happened. In headless Chromium (Debian's
/usr/bin/chromium, nothing downloaded): the page reached from the navigation, a run started and
followed live, its result and charts drawn, and a full-page screenshot saved."""
import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from streamlit.testing.v1 import AppTest

from lessons.app_pages.load_test import BUSY, INVALID_NOTE, REFUSED, UNREACHABLE
from workbench.loadgen import report
from workbench.loadgen.client import RunClient
from conftest import free_port_base

ROOT = Path(__file__).resolve().parents[1]
# The page alone, as st.navigation runs it (AppTest cannot switch to a page given as a function).
PAGE_SCRIPT = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from lessons.app_pages import load_test
load_test.render()
"""
RUN_TIMEOUT_S = 120          # a 2-3 s run, plus the generator's start and the last answers
PERCENTILES = ("p50", "p95", "p99", "max")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000
SCREENSHOT = ROOT / "tests" / "artifacts" / "dashboard-loadtest.png"


def ms(value) -> str:
    return f"{value:,.2f} ms"


def unique(prefix: str) -> str:
    return f"{prefix} {os.getpid() % 10000}-{time.time_ns() % 10**9}"


@pytest.fixture(scope="module")
def client(stack_config, stack):
    return RunClient(stack_config)


def new_page() -> AppTest:
    at = AppTest.from_string(PAGE_SCRIPT, default_timeout=RUN_TIMEOUT_S).run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Load test"]
    return at


def submit(at: AppTest, *, mode: str, duration: int, label: str, rate: int | None = None,
           connections: int | None = None) -> AppTest:
    """Fill the form as a learner would and press Start run; returns once the script run is over,
    i.e. once the page has followed the run to its end (or shown why it did not start)."""
    if at.radio(key="lt_mode").value != mode:
        at.radio(key="lt_mode").set_value(mode).run()
    if mode == "open":
        at.number_input(key="lt_rate").set_value(rate)
    else:
        at.number_input(key="lt_connections").set_value(connections)
    at.number_input(key="lt_duration").set_value(duration)
    at.text_input(key="lt_label").set_value(label)
    at.button(key="lt_start").click().run(timeout=RUN_TIMEOUT_S)
    assert not at.exception, [e.value for e in at.exception]
    return at


def saved_by_label(client: RunClient, label: str) -> dict:
    """The run the page started, as the controller saved it (found by its unique label)."""
    matches = [r for r in client.list()["runs"] if r["label"] == label]
    assert len(matches) == 1, (label, matches)
    run = client.get(matches[0]["id"])
    assert run["status"] == "done"
    return run


@pytest.fixture(scope="module")
def open_run(client):
    """One open-model run, 50 req/s for 2 s, started through the page; the page is kept for the
    comparison test that follows."""
    at = new_page()
    assert not at.error, [e.value for e in at.error]
    label = unique("pytest page open")
    submit(at, mode="open", rate=50, duration=2, label=label)
    return at, saved_by_label(client, label)


def test_a_run_started_from_the_page_shows_what_the_controller_measured(open_run):
    at, run = open_run
    s, w = run["summary"], run["workload"]
    assert (w["mode"], w["rate"], w["duration_s"]) == ("open", 50, 2)
    assert s["scheduled"] == s["sent"] == 100

    # The page followed the run to its end, then shows it.
    assert [x.value for x in at.success if "finished" in x.value] == [
        f"Run {run['id']} finished; its result is shown below."]
    assert at.selectbox(key="lt_view").value == run["id"]

    # Valid or not, said plainly; an invalid run's reason is given and its latencies disowned.
    banners_ok = [x.value for x in at.success if x.value.startswith("**VALID**")]
    banners_bad = [x.value for x in at.error if x.value.startswith("**INVALID**")]
    if s["valid"]:
        assert len(banners_ok) == 1 and not banners_bad
        assert not at.error, [e.value for e in at.error]
    else:
        assert not banners_ok and len(banners_bad) == 1
        assert s["invalid_reason"] in banners_bad[0] and INVALID_NOTE in banners_bad[0]

    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Asked"] == "50 req/s"
    assert metrics["Sent"] == f"{s['sent']:,}"
    assert metrics["Achieved"] == f"{s['achieved_rps']:,.1f} ok/s"
    assert metrics["Errors"] == f"{s['error_count']:,}" and metrics["Dropped"] == f"{s['dropped']:,}"
    assert metrics["Late sends"] == f"{s['generator_lag']['late_share']:.2%}"
    for p in PERCENTILES:
        assert metrics[f"{p} latency"] == ms(s["latency"][f"{p}_ms"]), p

    # Latency from the intended send next to the service time (from the actual send).
    table = at.table[0].value
    for p in PERCENTILES:
        assert table.loc["from the intended send time (what a user waits)", p] == ms(s["latency"][f"{p}_ms"])
        assert table.loc["from the actual send (service time)", p] == ms(s["service_time"][f"{p}_ms"])
    if not s["valid"]:   # the latency figures are only inside the collapsed INVALID section
        [invalid] = [e for e in at.expander if INVALID_NOTE in e.label]
        assert {m.label for m in invalid.metric} == {f"{p} latency" for p in PERCENTILES}

    # Per-second charts: requests and (for a valid run) latency; the invalid section has its own.
    assert len(at.get("vega_lite_chart")) == 2

    # Attribution by X-App-Server, with the counts the controller saved.
    attribution = s["attribution"]["X-App-Server"]
    shown = next(t.value for t in at.table if t.value.index.name == "app-server")
    assert {name: int(shown.loc[name, "requests"]) for name in shown.index} == attribution

    # Listed among the saved runs, with its validity.
    listed = at.dataframe[0].value
    row = listed[listed["run"] == run["id"]]
    assert len(row) == 1
    assert row["valid"].item() == ("VALID" if s["valid"] else "INVALID")
    assert row["label"].item() == run["label"]


def test_a_closed_run_compares_with_the_open_one_as_ratios(open_run, client):
    at, a = open_run
    label = unique("pytest page closed")
    submit(at, mode="closed", connections=4, duration=2, label=label)
    b = saved_by_label(client, label)
    assert (b["workload"]["mode"], b["workload"]["connections"]) == ("closed", 4)
    assert at.selectbox(key="lt_view").value == b["id"]
    assert {m.label: m.value for m in at.metric}["Asked"] == "4 connections"

    at.selectbox(key="lt_cmp_a").set_value(a["id"])
    at.selectbox(key="lt_cmp_b").set_value(b["id"]).run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.table[-1].value          # the comparison is the page's last table
    rows = report.compare_rows(a, b)
    assert list(table.index) == [r["name"] for r in rows]
    invalid = not (a["summary"]["valid"] and b["summary"]["valid"])
    for r in rows:
        expected = "\u2014" if r["ratio"] is None or (r["latency"] and invalid) else f"{r['ratio']:.2f}x"
        assert table.loc[r["name"], "B / A"] == expected, r
    assert table.loc["achieved ok/s", "A"] == f"{a['summary']['achieved_rps']:,.2f}"
    # Open against closed: the page says why their latencies differ.
    assert any("coordinated omission" in x.value and "B is the closed loop" in x.value for x in at.warning)


def test_a_second_run_while_one_goes_is_refused_and_the_running_one_followed(client):
    at = new_page()
    label = unique("pytest page busy")
    other = client.start({"mode": "open", "rate": 20, "duration_s": 3}, label="pytest busy elsewhere")
    try:
        submit(at, mode="open", rate=20, duration=1, label=label)
    finally:
        client.wait(other, timeout=RUN_TIMEOUT_S)
    [busy] = [e.value for e in at.error if BUSY in e.value]
    assert other in busy and "one run at a time" in busy
    # The page followed the run that was going instead, to its end, and shows it.
    assert any(f"Run {other} finished" in x.value for x in at.success), [x.value for x in at.success]
    assert at.selectbox(key="lt_view").value == other
    assert all(r["label"] != label for r in client.list()["runs"])      # nothing of ours was started


def test_a_refused_workload_names_the_field(client):
    at = new_page()
    before = [r["id"] for r in client.list()["runs"]]
    at.toggle(key="lt_spike").set_value(True).run()
    at.number_input(key="lt_rate").set_value(5000)
    at.number_input(key="lt_spike_at").set_value(0)
    at.number_input(key="lt_spike_for").set_value(1)
    at.number_input(key="lt_spike_factor").set_value(20.0)
    at.number_input(key="lt_duration").set_value(2)
    at.button(key="lt_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    # 5,000 x 20 is over the controller's limit: its 400 names the field.
    [refused] = [e.value for e in at.error if REFUSED in e.value]
    assert "`spike.factor`" in refused and "50000" in refused

    # A spike after the end of the run is refused by the page itself, naming the input.
    at.number_input(key="lt_spike_factor").set_value(2.0)
    at.number_input(key="lt_spike_at").set_value(5)
    at.button(key="lt_start").click().run()
    assert any("Spike at" in e.value and "5 s" in e.value for e in at.error), [e.value for e in at.error]
    assert [r["id"] for r in client.list()["runs"]] == before
    assert (client.list()["current"] or {}).get("status") != "running"


def test_an_unreachable_controller_is_explained(monkeypatch, tmp_path):
    base = free_port_base()
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    at = new_page()
    [error] = at.error
    assert UNREACHABLE in error.value
    assert f"http://127.0.0.1:{base + 99}/runs" in error.value
    assert "python manage.py up" in error.value
    assert [b.label for b in at.button] == ["Try again"]     # no form to start a run with
    assert not at.metric


# --- in the browser ----------------------------------------------------------------------------
IDLE = ("() => !document.querySelector('[data-testid=stStatusWidget]')"
        " && !document.querySelector('[data-stale=true]')")


def wait_until_idle(page):
    page.wait_for_function(IDLE, timeout=TIMEOUT_MS)


def metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(
        has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True))
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def save_full_page_screenshot(page, path: Path) -> None:
    """Streamlit scrolls inside its main section: grow the viewport to the content, then shoot."""
    height = page.evaluate("""() => Math.max(document.documentElement.scrollHeight,
        ...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stAppViewContainer]')]
            .map(e => e.scrollHeight))""")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": int(height)})
    wait_until_idle(page)
    page.wait_for_timeout(1000)      # charts redraw at the new size
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")


@pytest.mark.browser
def test_load_test_page_in_the_browser(stack, client):
    label = unique("pytest browser")
    page_errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                     timeout=TIMEOUT_MS)
        try:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))

            # Reached from the navigation, as a learner would.
            response = page.goto(stack["dashboard_url"] + "/", wait_until="domcontentloaded")
            assert response is not None and response.ok
            page.get_by_role("heading", name="Stack status").wait_for()
            wait_until_idle(page)
            page.get_by_role("link", name="Load test").click()
            page.get_by_role("heading", name="Load test").wait_for()
            page.get_by_role("heading", name="New run").wait_for()
            wait_until_idle(page)
            assert "/load-test" in page.url

            page.get_by_label("Duration (s)").fill("3")
            page.get_by_label("Label (optional)").fill(label)
            page.get_by_role("button", name="Start run").click()

            # Live progress while the controller runs it.
            progress = page.get_by_test_id("stProgress")
            progress.wait_for(state="visible")
            assert "Run " in progress.inner_text()
            page.get_by_test_id("stMetricLabel").get_by_text("ok so far", exact=True).wait_for()

            # Then the saved result.
            done = page.get_by_test_id("stAlertContentSuccess").filter(
                has_text=re.compile(r"Run \S+ finished; its result is shown below\."))
            done.wait_for()
            run_id = done.inner_text().split()[1]
            page.get_by_role("heading", name="Saved runs", exact=True).wait_for()
            wait_until_idle(page)
            run = client.get(run_id)
            s = run["summary"]
            assert run["label"] == label and run["workload"]["duration_s"] == 3

            charts = page.locator("[data-testid=stVegaLiteChart]:visible")
            charts.first.locator("canvas, svg").first.wait_for()
            assert charts.count() == (2 if s["valid"] else 1)
            assert page.get_by_test_id("stProgress").count() == 0
            picker = page.get_by_test_id("stSelectbox").filter(has_text="Run to view").locator("input")
            assert picker.input_value().startswith(run_id), picker.input_value()

            body = page.get_by_test_id("stMain").inner_text()
            assert "measured" in body and "open model" in body
            if s["valid"]:
                assert page.get_by_test_id("stAlertContentSuccess").filter(has_text="VALID:").count() == 1
                for p in ("p50", "p95", "p99", "max"):
                    assert metric_value(page, f"{p} latency") == ms(s["latency"][f"{p}_ms"])
                assert "from the actual send (service time)" in body
            else:
                banner = page.get_by_test_id("stAlertContentError").filter(has_text="INVALID:")
                assert banner.count() == 1 and s["invalid_reason"] in banner.inner_text()
            assert metric_value(page, "Sent") == f"{s['sent']:,}"
            assert metric_value(page, "Asked") == "50 req/s"
            assert "Answered by" in body and "app-1" in body and "app-2" in body
            assert "Compare two runs" in body

            assert page.get_by_test_id("stException").count() == 0
            assert page.get_by_role("dialog").count() == 0
            assert page_errors == []
            save_full_page_screenshot(page, SCREENSHOT)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 50_000
