"""The launcher and controller: status, idempotent up, clear port errors, supervision, external mode."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest
import requests

from conftest import ANONYMOUS, ROOT, wait_for
from workbench.stack import config, launcher

STATUS_FIELDS = {"role", "name", "pid", "port", "healthy", "uptime_s", "rss_bytes"}


def manage(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_status_json_lists_every_process_healthy(stack):
    result = manage("status", "--json")
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert {"api_url", "direct_urls", "dashboard_url", "controller_url", "processes"} <= set(state)
    names = {p["name"] for p in state["processes"]}
    assert {"controller", "pg-meta", "pg-primary", "valkey-state", "valkey-cache", "app-1", "app-2",
            "caddy", "dashboard", "reconciler"} <= names
    for proc in state["processes"]:
        assert STATUS_FIELDS <= set(proc)
        assert proc["healthy"], proc
        assert psutil.pid_exists(proc["pid"])
        assert proc["rss_bytes"] > 0
    assert len(state["direct_urls"]) == 2
    for url in state["direct_urls"]:
        assert requests.get(url + "/healthz", timeout=5).json()["status"] == "ok"


def test_text_status_shows_a_row_per_process(stack):
    result = manage("status")
    assert result.returncode == 0
    for name in ("pg-primary", "valkey-cache", "app-2", "caddy", "dashboard"):
        assert name in result.stdout


def test_second_up_reports_what_runs(stack):
    before = launcher.status(config.load())
    result = manage("up")
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    after = launcher.status(config.load())
    assert [p["pid"] for p in after["processes"]] == [p["pid"] for p in before["processes"]]


def test_caddy_round_robins_over_both_app_servers(stack, http):
    seen = {http.get(stack["api_url"] + "/healthz", timeout=5).headers["X-App-Server"] for _ in range(10)}
    assert seen == {"app-1", "app-2"}


def test_port_in_use_names_the_port_and_its_holder(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 10500))
        holder.listen()
        env = {"WORKBENCH_PORT_BASE": "10500", "WORKBENCH_DATA_DIR": str(tmp_path / "wb")}
        result = manage("up", env=env, timeout=60)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "port 10500" in message and f"pid {os.getpid()}" in message, message
    assert "Traceback" not in message


@pytest.mark.parametrize("name", ["app-2", "valkey-cache", "pg-primary"])
def test_a_supervised_process_killed_is_restarted(stack, controller, http, name):
    before = controller.process(name)
    os.kill(before["pid"], signal.SIGKILL)

    def restarted():
        now = controller.process(name)
        return now if now["healthy"] and now["pid"] not in (None, before["pid"]) else None

    after = wait_for(restarted, timeout=120, what=f"{name} to be restarted")
    assert after["restarts"] == before["restarts"] + 1
    events = requests.get(stack["controller_url"] + "/events", timeout=5,
                          headers={"Authorization": f"Bearer {config.load().controller_token()}"}).json()["events"]
    assert any(e["event"] == "died" and e["name"] == name and e["pid"] == before["pid"] for e in events)
    # The API answers through the stack again.
    wait_for(lambda: http.get(stack["api_url"] + "/readyz", timeout=10).status_code == 200, timeout=60,
             what="readyz after the restart")


def test_controller_needs_its_token(stack):
    assert requests.get(stack["controller_url"] + "/status", headers=ANONYMOUS, timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert requests.post(stack["controller_url"] + "/shutdown", headers=wrong, timeout=5).status_code == 401


def test_external_mode_starts_no_engines(stack, stack_config, tmp_path):
    """A second stack pointed at the first one's PostgreSQL and Valkey starts only the front tier."""
    cfg = stack_config
    env = {"WORKBENCH_PORT_BASE": "11500", "WORKBENCH_DATA_DIR": str(tmp_path / "ext"),
           "DATABASE_URL": cfg.data_database_url, "META_DATABASE_URL": cfg.meta_db_url,
           "VALKEY_URL": cfg.cache_url, "VALKEY_STATE_URL": cfg.state_url, "WORKBENCH_APP_SERVERS": "1"}
    ext = config.load({**os.environ, **env})
    try:
        state = launcher.up(ext, out=lambda *_: None)
        roles = {p["role"] for p in state["processes"]}
        assert "postgres" not in roles and "valkey" not in roles
        # Anonymous: the tests' default credential is the first stack's controller token, not this one's.
        response = requests.get(ext.api_url + "/api/v1/users?limit=1", headers=ANONYMOUS, timeout=10)
        assert response.status_code == 200 and response.json()["data"]["results"]
    finally:
        launcher.down(ext, out=lambda *_: None)
        # Its bring-up found the demo accounts without their passwords (its data dir is new) and set
        # new ones in the shared meta: the first stack's credentials file must say them, for the
        # tests (and the dashboard) that sign in as the demo admin after this one.
        if ext.credentials_file.exists():
            shutil.copy(ext.credentials_file, cfg.credentials_file)
    assert launcher.status(ext) is None
