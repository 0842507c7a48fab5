"""The status page run in-process with Streamlit's AppTest: fast, no browser. The first case reads
the real test stack (lessons/client.py finds it through the env vars conftest sets); the second
points the page at a port base where no controller runs."""
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from lessons.pages.stack_status import UNREACHABLE
from conftest import free_port_base

APP = Path(__file__).resolve().parents[1] / "lessons" / "app.py"
METRICS = ["Processes healthy", "Phase", "GET /api/v1/users (measured now)", "Answered by"]


def run_page() -> AppTest:
    # The page makes a few real HTTP calls (controller, a probe through Caddy, /readyz).
    at = AppTest.from_file(str(APP), default_timeout=30)
    return at.run()


def test_status_page_renders_the_live_stack(stack, controller):
    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Stack status"]
    assert not at.error, [e.value for e in at.error]

    metrics = {m.label: m.value for m in at.metric}
    assert list(metrics) == METRICS
    status = controller.status()
    procs = status["processes"]
    assert metrics["Processes healthy"] == f"{sum(p['healthy'] for p in procs)} / {len(procs)}"
    assert metrics["Phase"] == status["phase"] == "ready"
    assert metrics["GET /api/v1/users (measured now)"].endswith(" ms")
    assert metrics["Answered by"] in {f"app-{i}" for i in range(1, len(status["direct_urls"]) + 1)}

    shown = at.table[0].value  # the process table; the readiness table follows it
    assert sorted(shown.index) == sorted(p["name"] for p in procs)
    for p in procs:
        assert shown.loc[p["name"], "health"] == ("healthy" if p["healthy"] else "DOWN"), p
        assert shown.loc[p["name"], "role"] == p["role"]


def test_status_page_explains_an_unreachable_controller(monkeypatch, tmp_path):
    base = free_port_base()
    monkeypatch.setenv("WORKBENCH_PORT_BASE", str(base))
    monkeypatch.setenv("WORKBENCH_DATA_DIR", str(tmp_path))  # no token file either

    at = run_page()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Stack status"]
    [error] = at.error
    assert UNREACHABLE in error.value
    assert f"http://127.0.0.1:{base + 99}/status" in error.value
    assert "python manage.py up" in error.value
    assert not at.metric  # nothing half-rendered below the error
    assert not at.table
