"""Sign-up spans two databases (account in meta, user on the data primary). SIGKILL the app
server in the middle and check that no orphan and no duplicate survive."""
import os
import signal
import threading

import psutil
import psycopg
import pytest
import requests

from conftest import wait_for

PASSWORD = "correct-horse"


def rows(url, sql, *params):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def db_state(cfg, username):
    accounts = rows(cfg.meta_db_url, "SELECT user_id, state FROM meta_account WHERE username = %s", username)
    users = rows(cfg.data_database_url, "SELECT id FROM api_user WHERE username = %s", username)
    return accounts, users


def sigkill_app_server(pid):
    """A real crash: SIGKILL the gunicorn master and every worker at once."""
    family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    for proc in family:
        os.kill(proc.pid, signal.SIGKILL)
    psutil.wait_procs(family, timeout=10)


def paused_sign_up(url, username, pause):
    """Start a sign-up that pauses at `pause`; returns the thread and a box for its outcome."""
    outcome = {}

    def run():
        try:
            outcome["response"] = requests.post(
                f"{url}/api/v1/users", timeout=120, headers={"X-Workbench-Pause": pause},
                json={"username": username, "email": f"{username}@example.org", "password": PASSWORD})
        except requests.RequestException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def consistent(cfg, username):
    """Settled: either nothing at all, or one active account and one user with the same id."""
    accounts, users = db_state(cfg, username)
    if not accounts and not users:
        return "absent"
    if len(accounts) == 1 and len(users) == 1 and accounts[0] == (users[0][0], "active"):
        return "present"
    return None


@pytest.mark.parametrize("pause,expected", [
    ("signup-after-meta", "absent"),   # only the pending account existed: it is removed
    ("signup-after-data", "present"),  # the user was written: the account is activated
])
def test_sigkill_midway_leaves_no_orphan_and_retry_makes_no_duplicate(stack_config, controller, pause, expected):
    cfg = stack_config
    app = controller.process("app-1")
    username = f"kill_{pause.rsplit('-', 1)[1]}_{os.getpid() % 10000}"  # one per case: a shared name met the last case's account
    thread, outcome = paused_sign_up(cfg.direct_url(1), username, pause)

    def reached_pause():
        accounts, users = db_state(cfg, username)
        return accounts and (users if pause == "signup-after-data" else True)

    wait_for(reached_pause, timeout=60, what=f"the sign-up to reach {pause}")
    sigkill_app_server(app["pid"])
    thread.join(timeout=30)
    assert "error" in outcome, "the client must not get an answer from a killed server"

    # The reconciler (a supervised process) settles it once the dead request's lock is gone.
    state = wait_for(lambda: consistent(cfg, username), timeout=90, what="the reconciler to settle the sign-up")
    assert state == expected

    # The controller restarts the killed app server.
    wait_for(lambda: (p := controller.process("app-1"))["healthy"] and p["pid"] != app["pid"], timeout=90,
             what="app-1 to be restarted")

    # The client retries the same sign-up: exactly one user, one account, same id either way.
    retry = requests.post(f"{cfg.api_url}/api/v1/users", timeout=30,
                          json={"username": username, "email": f"{username}@example.org", "password": PASSWORD})
    assert retry.status_code in (200, 201), retry.text
    accounts, users = db_state(cfg, username)
    assert len(accounts) == 1 and len(users) == 1
    assert accounts[0] == (users[0][0], "active")
    assert retry.json()["data"]["id"] == str(users[0][0])
    if expected == "present":
        assert retry.status_code == 200, "a completed sign-up is resumed, not duplicated"


def test_reconciler_leaves_a_live_slow_sign_up_alone(stack_config):
    """A sign-up slower than the reconciler's grace period holds its lock, so it is not undone."""
    cfg = stack_config
    username = f"slow_{os.getpid() % 10000}"
    thread, outcome = paused_sign_up(cfg.api_url, username, "signup-after-meta:12")
    thread.join(timeout=60)
    assert outcome["response"].status_code == 201, outcome
    assert consistent(cfg, username) == "present"
