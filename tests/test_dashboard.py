"""The dashboard end to end: the test stack's own Streamlit process, driven in headless Chromium.

Uses Debian's /usr/bin/chromium (nothing is downloaded). The process list is rendered with
st.table, i.e. plain HTML, so its cells can be read from the DOM (st.dataframe draws on a canvas).
"""
import re
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000
SCREENSHOT = Path(__file__).resolve().parent / "artifacts" / "dashboard-status.png"

pytestmark = pytest.mark.browser


@pytest.fixture
def page_errors():
    """Uncaught JavaScript errors of the page: a broken frontend, not just a slow one."""
    return []


@pytest.fixture
def page(page_errors):
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
                                     timeout=TIMEOUT_MS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            yield page
        finally:
            browser.close()


def metric_value(page, label: str) -> str:
    metric = page.get_by_test_id("stMetric").filter(
        has=page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True))
    return metric.get_by_test_id("stMetricValue").inner_text().strip()


def wait_until_idle(page):
    """The script run is over: its last element is drawn and Streamlit shows no 'running' state."""
    page.get_by_role("button", name="Refresh").wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')"
                           " && !document.querySelector('[data-stale=true]')", timeout=TIMEOUT_MS)


def save_full_page_screenshot(page, path):
    """Streamlit scrolls inside its main section, not the document, so a plain full_page
    screenshot stops at the viewport: grow the viewport to the content first."""
    height = page.evaluate("""() => Math.max(document.documentElement.scrollHeight,
        ...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stAppViewContainer]')]
            .map(e => e.scrollHeight))""")
    page.set_viewport_size({"width": page.viewport_size["width"], "height": int(height)})
    wait_until_idle(page)  # a resize does not rerun the script, but wait out any stray rerun
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True, animations="disabled")


def test_dashboard_shows_the_controllers_processes(stack, controller, page, page_errors):
    response = page.goto(stack["dashboard_url"] + "/", wait_until="domcontentloaded")
    assert response is not None and response.ok, response and response.status

    page.get_by_role("heading", name="Stack status").wait_for(state="visible")
    page.get_by_test_id("stMetricLabel").get_by_text("Processes healthy", exact=True).wait_for()
    table = page.get_by_test_id("stTable").filter(has_text="restarts")
    table.wait_for(state="visible")
    wait_until_idle(page)

    # Nothing went wrong on the page: no exception box, no error alert, no JavaScript error.
    assert page.get_by_test_id("stException").count() == 0, page.get_by_test_id("stException").all_inner_texts()
    errors = page.get_by_test_id("stAlertContentError")
    assert errors.count() == 0, errors.all_inner_texts()
    assert page_errors == []

    # What the page shows, read from the DOM: one row per process, its name in the row header.
    rows = {}
    for row in table.locator("tbody tr").all():
        name = row.locator("th").inner_text().strip()
        rows[name] = [cell.strip() for cell in row.locator("td").all_inner_texts()]
    header = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    assert header[:4] == ["name", "role", "health", "pid"], header
    healthy_shown = metric_value(page, "Processes healthy")
    phase_shown = metric_value(page, "Phase")

    status = controller.status()
    procs = status["processes"]
    names = {p["name"] for p in procs}
    assert {"controller", "pg-meta", "pg-primary", "valkey-state", "valkey-cache", "app-1", "app-2",
            "caddy", "dashboard"} <= names
    assert set(rows) == names, f"page shows {sorted(rows)}, controller reports {sorted(names)}"
    for p in procs:
        role, health, pid = rows[p["name"]][:3]
        assert role == p["role"], (p["name"], role)
        assert health == ("healthy" if p["healthy"] else "DOWN"), (p["name"], health)
        assert pid == (str(p["pid"]) if p["pid"] else "\u2014"), (p["name"], pid)

    healthy = sum(bool(p["healthy"]) for p in procs)
    assert healthy_shown == f"{healthy} / {len(procs)}"
    assert healthy == len(procs), [p["name"] for p in procs if not p["healthy"]]  # a fresh stack is all up
    assert phase_shown == status["phase"] == "ready"
    assert re.fullmatch(r"\d+(\.\d+)? ms", metric_value(page, "GET /api/v1/users (measured now)"))
    assert re.fullmatch(r"app-\d+", metric_value(page, "Answered by"))

    # The data nodes as the controller sampled them: the same nodes, in the same health.
    nodes = page.get_by_test_id("stTable").filter(has_text="lag (WAL bytes)")
    shown = {row.locator("th").inner_text().strip(): row.locator("td").first.inner_text().strip()
             for row in nodes.locator("tbody tr").all()}
    report = controller.status()["data_nodes"]
    assert shown.get("primary") == "healthy", shown
    assert {n for n in shown if n.startswith("replica-")} == {n for n in report["nodes"] if n.startswith("replica-")}
    assert re.fullmatch(r"\d+", metric_value(page, "Replicas running"))

    save_full_page_screenshot(page, SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 10_000
