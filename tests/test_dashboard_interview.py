"""The Practice, Clarify and Estimate pages run in-process with Streamlit's AppTest against the real
test stack: the dashboard signs in as the demo admin (the password `up` saved in the data directory),
keeps the notes and answers in the admin's workspace through the API, and reads saved runs from the
controller. Each test checks what the page shows against what the API or the run's JSON holds."""
import math
from pathlib import Path

import pytest
import requests
from streamlit.testing.v1 import AppTest

from conftest import ANONYMOUS
from lessons import interview
from workbench.loadgen.client import RunClient

ROOT = Path(__file__).resolve().parents[1]


def page(name: str, token: str | None = None) -> AppTest:
    """One page's render() as the script: the pages are tested whether or not app.py lists them yet."""
    at = AppTest.from_string(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom lessons.app_pages import {name}\n"
                             f"{name}.render()\n", default_timeout=30)
    if token:
        at.session_state["wb_token"] = token
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def metrics(at: AppTest) -> dict:
    return {m.label: m.value for m in at.metric}


class Workspace:
    """The API as one member: GET and PUT their workspace documents."""

    def __init__(self, api_url: str, token: str):
        self.url, self.headers = f"{api_url}/me/workspace", {"Authorization": f"Bearer {token}"}
        self.token = token

    def get(self, kind: str) -> dict:
        response = requests.get(f"{self.url}/{kind}", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def put(self, kind: str, data: dict) -> dict:
        response = requests.put(f"{self.url}/{kind}", json={"data": data}, headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"]


def token_for(api_url: str, username: str, password: str) -> str:
    response = requests.post(f"{api_url}/auth/token", json={"username": username, "password": password},
                             headers=ANONYMOUS, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["data"]["access"]


@pytest.fixture(scope="module")
def admin(stack, stack_config, api_url) -> Workspace:
    """The demo admin, whom the dashboard signs in as, with its documents emptied."""
    import json
    accounts = {a["username"]: a for a in json.loads(stack_config.credentials_file.read_text())["accounts"]}
    ws = Workspace(api_url, token_for(api_url, "admin", accounts["admin"]["password"]))
    for kind in ("notes", "clarify", "estimate"):
        ws.put(kind, {})
    return ws


def test_practice_times_the_phases_and_its_notes_survive_a_new_session(admin):
    at = ok(page("practice").run())
    assert metrics(at) == {"Elapsed": "00:00", "Phase": "1 of 5", "Left in this phase": "05:00"}
    schedule = at.table[0].value
    assert list(schedule["end"]) == ["05:00", "15:00", "30:00", "40:00", "45:00"]  # the seed's shortest phases

    at.slider(key="px_minutes").set_value(60).run()
    schedule = ok(at).table[0].value
    assert list(schedule["start"]) == ["00:00", "08:45", "22:30", "41:15", "55:00"]
    assert list(schedule["end"])[-1] == "60:00"
    assert admin.get("notes")["data"]["minutes"] == 60  # the length is saved with the notes

    typed = "Peak 100M req/s, 90% reads; ask about regions."
    at.text_area(key="px_note_clarify").input(typed).run()
    ok(at)
    saved = admin.get("notes")
    assert saved["data"]["phases"]["clarify"] == typed and saved["version"] >= 2
    assert any("version" in s.value for s in at.success)

    at.button(key="px_start").click().run()
    assert at.session_state["px_timer"]["started_at"] is not None
    assert metrics(ok(at))["Phase"] == "1 of 5"
    at.button(key="px_pause").click().run()
    assert at.session_state["px_timer"]["started_at"] is None and at.session_state["px_timer"]["banked_s"] > 0

    again = ok(page("practice").run())  # a new browser session: the notes come back from the API
    assert again.text_area(key="px_note_clarify").value == typed
    assert again.slider(key="px_minutes").value == 60
    exported = again.get("download_button")[0]
    assert exported.proto.label == "Export as Markdown"
    assert typed in interview.notes_markdown({"clarify": typed}, 60)

    # Saved from elsewhere meanwhile: this session's save is refused, then kept on request.
    admin.put("notes", {"minutes": 60, "phases": {"clarify": "from another tab"}})
    again.text_area(key="px_note_clarify").input(typed + " Mine.").run()
    assert any("saved from somewhere else" in w.value for w in again.warning), [w.value for w in again.warning]
    assert admin.get("notes")["data"]["phases"]["clarify"] == "from another tab"
    again.button(key="px_overwrite").click().run()
    assert admin.get("notes")["data"]["phases"]["clarify"] == typed + " Mine."


def test_a_learners_own_token_keeps_their_notes_apart(admin, api_url, new_user):
    learner = new_user()
    ws = Workspace(api_url, token_for(api_url, learner["username"], "correct-horse"))
    before = admin.get("notes")
    at = page("practice", token=ws.token).run()
    at.text_area(key="px_note_tradeoffs").input("learner's trade-offs").run()
    ok(at)
    assert ws.get("notes")["data"]["phases"]["tradeoffs"] == "learner's trade-offs"
    assert admin.get("notes") == before


def test_clarify_validates_and_its_answers_change_the_estimate(admin):
    estimate = ok(page("estimate").run())
    assert any("No Clarify answers saved yet" in i.value for i in estimate.info)
    assert metrics(estimate)["Peak requests/s"] == "100 M req/s"  # the seed's defaults
    assert len(estimate.latex) >= 19  # every figure shows its formula

    at = ok(page("clarify").run())
    assert at.number_input(key="cl_qps_avg").value == 10_000_000
    at.number_input(key="cl_qps_peak").set_value(5_000_000)
    at.number_input(key="cl_p50_ms").set_value(500)
    at.button(key="cl_save").click().run()
    errors = [e.value for e in at.error]
    assert any("**Peak requests/s**" in e and "below the average" in e for e in errors), errors
    assert any("**p95 target (ms)**" in e for e in errors), errors
    assert admin.get("clarify")["version"] == 1  # the fixture's empty document, not these answers

    at.number_input(key="cl_qps_avg").set_value(1_000_000)
    at.number_input(key="cl_p50_ms").set_value(40)
    at.number_input(key="cl_regions").set_value(2)
    at.slider(key="cl_read_percent").set_value(80)
    at.button(key="cl_save").click().run()
    ok(at)
    assert any("The Estimate page now computes from them" in s.value for s in at.success)
    stored = admin.get("clarify")["data"]
    assert (stored["qps_avg"], stored["qps_peak"], stored["regions"], stored["read_percent"]) == (1_000_000, 5_000_000, 2, 80)

    shown = metrics(ok(page("estimate").run()))
    assert shown["Peak requests/s"] == "5 M req/s"
    assert shown["Writes/s at peak"] == "1 M writes/s"  # 20% of 5M
    # Two regions, active-active: each carries the whole peak when the other fails; 500 x 16 x 0.7 per server.
    assert shown["App servers at the peak"] == f"{2 * math.ceil(5_000_000 / (500 * 16 * 0.7)):,} servers"


def test_estimate_shows_a_run_started_here_beside_the_estimates(admin, stack_config):
    run = RunClient(stack_config).run({"mode": "open", "rate": 20, "duration_s": 1.0, "read_ratio": 0.9},
                                      label="estimate page")
    at = ok(page("estimate").run())
    assert at.selectbox(key="es_run").value == run["id"]  # the newest run
    assert any(run["id"] in md.value for md in at.markdown)
    shown = metrics(at)
    p95 = run["summary"]["latency"]["p95_ms"]
    expected = f"{p95:,.2f} ms" if run["summary"]["valid"] else "not shown (INVALID)"
    assert shown["p95, measured (shared-CPU)"] == expected
    table = at.table[0].value
    assert table.loc["p95 latency", "measured here"] == (expected if run["summary"]["valid"] else "INVALID run: not shown")
    assert "shared-CPU" in table.loc["Requests/s per app server", "what the measured figure is"]
    assert any("shared-CPU" in c.value for c in at.caption)

    at.button(key="es_save").click().run()
    saved = admin.get("estimate")["data"]
    assert saved["run"]["id"] == run["id"] and saved["figures"]["qps_peak"]["value"] > 0


def test_pages_say_what_failed_when_the_stack_is_not_theirs(monkeypatch, tmp_path, stack):
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))  # no demo credentials, no controller token here
    for name in ("practice", "clarify", "estimate"):
        at = page(name).run()
        assert not at.exception, [e.value for e in at.exception]
        errors = " ".join(e.value for e in at.error)
        assert "demo-credentials.json" in errors and "python manage.py up" in errors, errors
    assert "controller.token" in errors  # the Estimate page's runs: the controller refused a missing token

