"""The Live metrics page against the real test stack, in-process with Streamlit's AppTest.

AppTest does not fire `st.fragment(run_every=...)` timers: each refresh here is an explicit
`at.run()`, which runs the page and, inside it, the fragment once, exactly what a timer's rerun of
the fragment does (one call of lessons/app_pages/live_metrics.py:_live).

Requests are counted by wrapping requests.Session.request around each run: a page that asked the
controller twice per refresh (say /status and /metrics), or anything else, fails."""
import collections
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from streamlit.testing.v1 import AppTest

from conftest import free_port_base, wait_for
from lessons.app_pages.live_metrics import CURSOR, HISTORY, LAST, PAUSED, UNREACHABLE
from lessons.client import StackClient

ROOT = Path(__file__).resolve().parents[1]
PAGE_SCRIPT = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from lessons.app_pages import live_metrics
live_metrics.render()
"""
TRAFFIC = 40


@contextlib.contextmanager
def counting():
    """Every HTTP request made through requests while the block runs: (method, url, params)."""
    calls = []
    inner = requests.Session.request

    def counted(self, method, url, *args, **kwargs):
        calls.append((method, url, kwargs.get("params")))
        return inner(self, method, url, *args, **kwargs)

    requests.Session.request = counted
    try:
        yield calls
    finally:
        requests.Session.request = inner


def refresh(at: AppTest) -> list:
    """One refresh of the page; the requests it made."""
    with counting() as calls:
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return calls


def new_page() -> AppTest:
    return AppTest.from_string(PAGE_SCRIPT, default_timeout=30)


def table(at: AppTest, index: str):
    return next(t.value for t in at.table if t.value.index.name == index)


def test_each_refresh_is_one_request_to_the_controller(stack, stack_config):
    at = new_page()
    live_url = stack_config.controller_url + "/live"
    assert refresh(at) == [("GET", live_url, {"since": 0})]
    assert not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == ["Live metrics"]
    for _ in range(2):  # the next refreshes ask only for the events after the cursor the last answer gave
        cursor = at.session_state[CURSOR]
        assert cursor > 0
        assert refresh(at) == [("GET", live_url, {"since": cursor})]
    assert len(at.session_state[HISTORY]) == 3

    # Paused: no request at all, the figures stay; resumed: one again.
    at.toggle(key=PAUSED).set_value(True)
    assert refresh(at) == []
    assert len(at.session_state[HISTORY]) == 3 and at.metric
    at.toggle(key=PAUSED).set_value(False)
    assert len(refresh(at)) == 1 and len(at.session_state[HISTORY]) == 4


def _metrics_counts(stack_config) -> dict:
    """Requests per app server as the controller's GET /metrics reports them now."""
    text = requests.get(stack_config.controller_url + "/metrics", headers=stack_config.operator_headers(),
                        timeout=10).text
    counts = collections.Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "workbench_http_request_duration_seconds_count":
                counts[s.labels["app_server"]] += s.value
    return counts


def test_traffic_through_caddy_shows_in_the_rates_and_per_app_server(stack, stack_config, api_url):
    at = new_page()
    refresh(at)
    answered = collections.Counter()
    with requests.Session() as http:
        for _ in range(TRAFFIC):
            response = http.get(f"{api_url}/users?limit=1", timeout=10)
            assert response.status_code == 200
            answered[response.headers["X-App-Server"]] += 1
    assert len(refresh(at)) == 1
    counts = _metrics_counts(stack_config)

    # The test stack is quiet but for this test (health checks and scrapes are not counted), so the
    # interval holds exactly our requests, spread as the X-App-Server headers said.
    point, now = at.session_state[HISTORY][-1], at.session_state[LAST]
    shown = {m.label: m.value for m in at.metric}
    assert shown["Requests (last interval)"] == f"{TRAFFIC:,}"
    assert shown["Requests/s"] == f"{TRAFFIC / point['interval_s']:,.1f}"
    assert point["interval_s"] == pytest.approx(now["at"] - at.session_state[HISTORY][-2]["at"])
    assert shown["Errors (5xx)"] == "0.0%"
    for name in ("p50", "p95", "p99"):
        assert shown[f"{name} latency"].endswith(" ms") and float(shown[f"{name} latency"][:-3].replace(",", "")) > 0

    servers = table(at, "app server")
    assert len(answered) >= 2, answered  # round robin over at least two app servers
    for name in servers.index:
        assert servers.loc[name, "requests (interval)"] == f"{answered.get(name, 0):,}", name
        # Since start: what GET /metrics reports, read just after the page's refresh.
        assert servers.loc[name, "requests (since start)"] == f"{counts[name]:,.0f}", name
        assert servers.loc[name, "scraped"] == "yes"
    assert set(answered) <= set(servers.index)


def test_a_chaos_action_shows_on_the_timeline(stack, stack_config):
    client = StackClient(stack_config)
    found = client.status()["chaos"]["slow_ms"].get("primary", 0)
    at = new_page()
    refresh(at)
    try:
        assert client.chaos("slow", "primary", ms=40) == {"action": "slow", "name": "primary", "ms": 40}
    finally:  # put back what we found, and wait until the node report the app servers read says so
        assert "error" not in client.chaos("slow", "primary", ms=found)
        wait_for(lambda: (client.status()["data_nodes"]["nodes"]["primary"].get("slow_ms") or 0) == found,
                 timeout=30, what="the node report to carry the slow setting we found")
    assert len(refresh(at)) == 1
    timeline = next(df.value for df in at.dataframe if "event" in df.value.columns)
    slow = timeline[timeline["event"] == "chaos_slow"]["details"].tolist()
    # Newest first: the restore, then the 40 ms.
    assert slow[:2] == [f"name=primary, ms={found}", "name=primary, ms=40"], slow
    assert at.get("plotly_chart")  # the timeline's chart


def test_cpu_and_memory_rows_for_every_supervised_process(stack, stack_config):
    at = new_page()
    refresh(at)
    shown = table(at, "process")
    procs = StackClient(stack_config).status()["processes"]
    assert sorted(shown.index) == sorted(p["name"] for p in procs)
    for p in procs:
        row = shown.loc[p["name"]]
        assert row["role"] == p["role"]
        if p["pid"]:
            assert float(row["CPU % (shared)"].replace(",", "")) >= 0, row
            assert float(row["RSS (MiB)"].replace(",", "")) > 0, row
    assert any("Shared CPU" in c.value for c in at.caption)


def test_an_unreachable_controller_says_what_failed_and_how_to_fix_it(monkeypatch, tmp_path):
    base = free_port_base()
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
    at = new_page()
    calls = refresh(at)
    assert len(calls) == 1
    [error] = at.error
    assert UNREACHABLE in error.value
    assert f"http://127.0.0.1:{base + 99}/live" in error.value and "python manage.py up" in error.value
    assert not at.metric and not at.table


class _OlderController(BaseHTTPRequestHandler):
    """A controller started before GET /live existed: it answers 404 as controller.py does."""

    def do_GET(self):
        body = json.dumps({"error": f"no such endpoint {self.path}"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_an_older_controller_without_live_says_to_restart_the_stack(monkeypatch, tmp_path):
    base = free_port_base()
    server = ThreadingHTTPServer(("127.0.0.1", base + 99), _OlderController)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
        monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))
        at = new_page()
        assert len(refresh(at)) == 1
    finally:
        server.shutdown()
        server.server_close()
    [error] = at.error
    assert "has no `/live` endpoint (HTTP 404)" in error.value
    assert "`python manage.py down`, then `python manage.py up`" in error.value
    assert not at.metric
