"""A short load against the real stack, run by the controller as every run is: the counts add up,
the time series sums to the totals, both app servers are attributed, the result is saved with its
context; one run at a time; bad workloads are refused naming the field; `manage.py loadtest` works."""
import json
from datetime import datetime
import os
import subprocess
import sys

import psutil
import pytest
import requests

from conftest import ROOT
from workbench.loadgen.client import RunClient

RATE, DURATION_S = 100, 3


@pytest.fixture(scope="module")
def client(stack_config, stack):
    return RunClient(stack_config)


def post_run(client, workload):
    return requests.post(client.cfg.controller_url + "/runs", json={"workload": workload, "label": "pytest"},
                         headers=client.headers, timeout=10)


@pytest.fixture(scope="module")
def first_run(client):
    """One open-mode run with the default mix; while it goes, a second POST is tried."""
    run_id = client.start({"mode": "open", "rate": RATE, "duration_s": DURATION_S}, label="pytest loadgen")
    busy = post_run(client, {"mode": "open", "rate": 10, "duration_s": 1})
    progress = []
    result = client.wait(run_id, on_progress=progress.append, timeout=120)
    return {"id": run_id, "busy": busy, "progress": progress, "result": result}


def test_counts_add_up(first_run):
    result = first_run["result"]
    assert result["status"] == "done" and result["id"] == first_run["id"]
    s = result["summary"]
    assert s["scheduled"] == RATE * DURATION_S
    assert s["scheduled"] == s["sent"]
    assert s["sent"] == s["ok"] + s["error_count"] + s["dropped"], s
    assert s["error_count"] == sum(s["errors"].values())
    # The stack is healthy and the rate is modest: nearly everything succeeds.
    assert s["ok"] >= 0.95 * s["sent"], s
    assert s["latency"]["p50_ms"] is not None and s["latency"]["p50_ms"] > 0
    assert s["latency"]["p50_ms"] <= s["latency"]["p95_ms"] <= s["latency"]["p99_ms"] <= s["latency"]["max_ms"]
    assert sum(s["by_kind"].values()) == s["ok"] + s["error_count"]
    assert set(s["by_kind"]) <= {"user", "user_posts", "posts_range", "post", "users_page", "create_post",
                                 "update_user", "update_post"}
    assert {"user", "create_post"} <= set(s["by_kind"])


def test_timeseries_sums_to_the_totals(first_run):
    result = first_run["result"]
    s, rows = result["summary"], result["timeseries"]
    assert [r["t"] for r in rows] == list(range(DURATION_S))
    assert sum(r["sent"] for r in rows) == s["sent"]
    assert sum(r["ok"] for r in rows) == s["ok"]
    assert sum(sum(r["errors"].values()) for r in rows) == s["error_count"]
    for row in rows:
        assert row["sent"] == RATE, row
        answered = row["ok"] + sum(row["errors"].values())
        assert answered <= row["sent"], row
        if s["dropped"] == 0:
            assert answered == row["sent"], row   # answers are counted in the second of their send
        assert row["p50_ms"] is not None and row["p50_ms"] <= row["p99_ms"]


def test_every_response_is_attributed_to_an_app_server(first_run):
    s = first_run["result"]["summary"]
    by_server = s["attribution"]["X-App-Server"]
    assert {"app-1", "app-2"} <= set(by_server), by_server
    assert set(by_server) <= {"app-1", "app-2"}
    responses = s["ok"] + sum(n for key, n in s["errors"].items() if key.isdigit())   # HTTP answers
    assert sum(by_server.values()) == responses, (by_server, s["errors"])
    # Round robin over two servers: neither takes everything.
    assert min(by_server.values()) >= 0.2 * responses


def test_result_is_saved_with_its_context(first_run, stack_config):
    run_id = first_run["id"]
    path = stack_config.data_dir / "results" / f"{run_id}.json"
    assert path.is_file()
    saved = json.loads(path.read_text())
    assert saved["id"] == run_id
    assert saved["summary"] == first_run["result"]["summary"]
    assert saved["workload"]["rate"] == RATE and saved["workload"]["duration_s"] == DURATION_S
    assert saved["workload"]["mode"] == "open"
    assert saved["topology"]["app_servers"] == 2
    m = saved["machine"]
    assert m["cores"] == os.cpu_count()
    assert m["memory_bytes"] == psutil.virtual_memory().total
    assert isinstance(m["cpu"]["samples"], list) and m["cpu"]["samples"]
    assert 0 <= m["cpu"]["mean_percent"] <= 100
    assert {"Django", "aiohttp", "hdrhistogram"} <= set(saved["versions"])
    assert saved["model"].startswith("open")
    # When the schedule began, not when the result was written: a whole run's duration before the
    # file's modification time (the saving happens after the last answer).
    started = datetime.fromisoformat(saved["started_at"]).timestamp()
    assert started <= path.stat().st_mtime - DURATION_S + 0.5, (saved["started_at"], path.stat().st_mtime)
    assert started >= path.stat().st_mtime - DURATION_S - 120
    runs = requests.get(stack_config.controller_url + "/runs",
                        headers={"Authorization": f"Bearer {stack_config.controller_token()}"}, timeout=10).json()
    listed = {r["id"] for r in runs["runs"]}
    assert run_id in listed


def test_progress_is_relayed_while_running(first_run):
    assert first_run["progress"], "no progress seen while the run was going"
    last = first_run["progress"][-1]
    assert {"elapsed_s", "ok", "errors", "duration_s"} <= set(last)
    assert last["duration_s"] == DURATION_S


def test_second_run_while_one_is_going_is_refused_with_409(first_run):
    busy = first_run["busy"]
    assert busy.status_code == 409, busy.text
    assert first_run["id"] in busy.json()["error"]


@pytest.mark.parametrize("workload, field", [
    ({"rate": -1, "duration_s": 1}, "rate"),
    ({"rate": 10, "duration_s": 1, "mode": "sideways"}, "mode"),
    ({"rate": 10, "duration_s": 1, "speed": 3}, "speed"),
    ({"rate": 10, "duration_s": 1, "spike": 5}, "spike"),
    ({"rate": 10, "duration_s": 1, "target": "http://example.com/"}, "target"),
])
def test_bad_workload_is_refused_naming_the_field(client, workload, field):
    response = post_run(client, workload)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["field"] == field
    assert field in body["error"]


def test_runs_need_the_controller_token(client):
    response = requests.post(client.cfg.controller_url + "/runs", json={"workload": {"rate": 1, "duration_s": 1}},
                             headers={"Authorization": "Bearer wrong"}, timeout=10)
    assert response.status_code == 401


def test_manage_loadtest_prints_the_summary_table(first_run, stack_config):
    # After first_run finished, so the controller is free.
    done = subprocess.run([sys.executable, "manage.py", "loadtest", "--rate", "50", "--duration", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line == "VALID" or line.startswith("INVALID: ") for line in lines), done.stdout
    assert "scheduled 100  sent 100" in done.stdout, done.stdout
    assert "from intended send" in done.stdout and "generator lag" in done.stdout
    assert "X-App-Server: app-1" in done.stdout
    run_id = lines[0].split()[1]
    assert (stack_config.data_dir / "results" / f"{run_id}.json").is_file()


def test_manage_loadtest_compare_prints_ratios_of_two_saved_runs(first_run, client):
    a = first_run["id"]
    b = client.run({"mode": "open", "rate": 50, "duration_s": 1}, label="pytest compare")["id"]
    done = subprocess.run([sys.executable, "manage.py", "loadtest", "--compare", a, b], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    ra, rb = client.get(a)["summary"], client.get(b)["summary"]
    row = next(line for line in done.stdout.splitlines() if line.startswith("achieved ok/s"))
    assert row.split()[-1] == f"{rb['achieved_rps'] / ra['achieved_rps']:.2f}x", done.stdout
    assert any(line.startswith("latency p95") for line in done.stdout.splitlines())
    missing = subprocess.run([sys.executable, "manage.py", "loadtest", "--compare", a, "nosuchrun"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert missing.returncode != 0 and "no run nosuchrun" in missing.stderr
