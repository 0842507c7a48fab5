"""The test stack: real PostgreSQL, Valkey, Caddy, app servers and dashboard, started by the same
launcher as `manage.py up`, with its own data directory and port base, so a developer's running
stack is never touched. In-process tests use pytest-django's test databases on the same servers.
"""
import os
import shutil
import threading
import time

import psutil
import pytest
import requests

from tests.settings import ROOT  # noqa: E402  (sets the test stack's environment; see that module)
from workbench.loadgen.client import TopologyClient  # noqa: E402
from workbench.stack import config, launcher  # noqa: E402

ARTIFACTS = ROOT / "tests" / "artifacts"
STACK = config.load()


# Writes need a token (api/gateway/auth.py). The tests of every other capability act as the
# operator, whose credential is the controller token: it is sent on each request that names no
# Authorization of its own. A test of another principal sends its own header; `{"Authorization":
# None}` sends none at all (requests drops headers set to None).
_send = requests.Session.request


def _as_operator(self, method, url, **kwargs):
    headers = kwargs.get("headers") or {}
    if not any(str(name).lower() == "authorization" for name in headers) and "Authorization" not in self.headers:
        kwargs["headers"] = {**headers, **STACK.operator_headers()}
    return _send(self, method, url, **kwargs)


requests.Session.request = _as_operator
ANONYMOUS = {"Authorization": None}


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    """Poll until `predicate()` is truthy; generous timeouts, since these are events, not timings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def stack_config():
    return config.load()


@pytest.fixture(scope="session")
def stack(stack_config):
    cfg = stack_config
    launcher.down(cfg, out=lambda *_: None)  # a previous run that was interrupted
    if cfg.data_dir.exists():
        shutil.rmtree(cfg.data_dir)
    state = launcher.up(cfg, out=lambda *_: None)
    yield state
    current = launcher.status(cfg) or state
    pids = [p["pid"] for p in current["processes"] if p["pid"]]
    launcher.down(cfg, out=lambda *_: None)
    left = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"`down` left processes behind: {left}"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(stack):
    """Hook of pytest-django's DB setup: the stack's PostgreSQL must run before test DBs are made."""


@pytest.fixture(scope="session")
def api_url(stack):
    return stack["api_url"] + "/api/v1"


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="session")
def controller(stack_config, stack):
    """GET helpers for the controller's API."""
    headers = {"Authorization": f"Bearer {stack_config.controller_token()}"}

    class Controller:
        def status(self):
            return requests.get(stack_config.controller_url + "/status", headers=headers, timeout=5).json()

        def process(self, name):
            return next(p for p in self.status()["processes"] if p["name"] == name)

        def events(self):
            return requests.get(stack_config.controller_url + "/events", headers=headers, timeout=5).json()["events"]

    return Controller()


def sign_up(http, api_url, username, **extra):
    body = {"username": username, "email": f"{username}@example.org", "password": "correct-horse", **extra}
    response = http.post(f"{api_url}/users", json=body, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["data"]


@pytest.fixture
def new_user(http, api_url):
    """A freshly signed-up user, unique per test."""
    counter = {"n": 0}

    def make(**extra):
        counter["n"] += 1
        name = f"t{os.getpid() % 10000}_{time.monotonic_ns() % 10**9}_{counter['n']}"[:30]
        return sign_up(http, api_url, name, **extra)

    return make


def problem_fields(response) -> set:
    return {error["field"] for error in response.json().get("errors", [])}


def assert_problem(response, status: int, *fields: str):
    """An RFC 9457 problem with this status, naming at least these fields."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"] and body["title"] and body["detail"]
    assert set(fields) <= problem_fields(response), body


def free_port_base() -> int:
    """A port base whose controller port nothing listens on: for pages facing no controller."""
    from workbench.stack import ports

    for base in range(24000, 30000, 500):
        if not ports.in_use(config.load({"WORKBENCH_PORT_BASE": str(base)}).controller_port):
            return base
    pytest.fail("no free port base found for the unreachable-controller case")


class TopologyAdmin(TopologyClient):
    """The admin topology API with the controller's token, answering raw responses for tests."""

    def get(self, **kw):
        return self.send("GET", **kw)

    def put(self, body):
        return self.send("PUT", body)

    def patch(self, body):
        return self.send("PATCH", body)


@pytest.fixture(scope="session")
def topology_admin(stack, stack_config):
    return TopologyAdmin(stack_config)


class Background:
    """`threads` threads calling `send(session)` until the block ends (at most `limit` calls each),
    for faults injected under load. `results` holds (monotonic start, response, or the exception's
    name when the request itself failed)."""

    def __init__(self, send, threads: int = 4, limit: int = 3000):
        self.send, self.limit = send, limit
        self.results: list = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(threads)]

    def _loop(self):
        with requests.Session() as http:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                started = time.monotonic()
                try:
                    outcome = self.send(http)
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.results.append((started, outcome))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()
