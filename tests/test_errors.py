"""Error tracking (api/errors.py) on the real stack: an unhandled exception, injected by a
test-only fault (X-Workbench-Fault, api/faults.py), is answered with the usual 500 problem+json
(request id, no stack) and recorded once, as one group whose count grows with each identical
failure even as its message changes; another exception is another group; only admins read them."""
import pytest
import requests

from api.gateway import auth
from conftest import ANONYMOUS, assert_problem

RAISE = {"X-Workbench-Fault": "raise"}       # a RuntimeError, with a different message every time
LOOKUP = {"X-Workbench-Fault": "raise:lookup"}  # a KeyError, raised elsewhere


@pytest.fixture
def errors_url(api_url, http):
    url = f"{api_url}/admin/errors"
    assert http.delete(url, timeout=10).status_code == 200  # start from an empty view
    yield url
    assert http.delete(url, timeout=10).status_code == 200  # and leave one for the other tests


def fail(http, api_url, headers):
    response = http.get(f"{api_url}/users?limit=1", headers=headers, timeout=30)
    assert_problem(response, 500)
    return response


def test_an_injected_exception_is_one_group_with_its_count(errors_url, api_url, http):
    first = fail(http, api_url, RAISE)
    body = first.json()
    assert body["request_id"] == first.headers["X-Request-Id"]
    # The client learns the request id, never the stack, the message or where it broke.
    for secret in ("Traceback", "injected fault", "faults.py", "RuntimeError"):
        assert secret not in first.text, first.text

    view = http.get(errors_url, timeout=10).json()["data"]
    assert view["total_groups"] == 1, view
    (group,) = view["groups"]
    assert group["count"] == 1 and group["type"] == "RuntimeError"
    assert group["last_request_id"] == first.headers["X-Request-Id"]
    assert group["where"] == "api/faults.py:raise_if_asked"
    assert group["route"] == "api/v1/users" and group["method"] == "GET"
    assert group["app_server"] == first.headers["X-App-Server"]
    assert group["first_seen"] <= group["last_seen"]
    assert "stack" not in group  # the list is light; the detail has it

    last = [fail(http, api_url, RAISE) for _ in range(2)][-1]
    view = http.get(errors_url, timeout=10).json()["data"]
    assert view["total_groups"] == 1, view  # three messages, one bug
    (again,) = view["groups"]
    assert again["fingerprint"] == group["fingerprint"] and again["count"] == 3
    assert again["last_request_id"] == last.headers["X-Request-Id"]
    assert again["first_seen"] == group["first_seen"] and again["last_seen"] > group["last_seen"]

    detail = http.get(f"{errors_url}/{group['fingerprint']}", timeout=10).json()["data"]
    assert detail["count"] == 3 and detail["stack"].startswith("Traceback")
    assert "raise_if_asked" in detail["stack"] and "RuntimeError: injected fault" in detail["stack"]
    assert detail["frames"][-1] == "api/faults.py:raise_if_asked"
    assert "api/gateway/middleware.py:process_view" in detail["frames"]

    other = fail(http, api_url, LOOKUP)
    view = http.get(errors_url, timeout=10).json()["data"]
    assert view["total_groups"] == 2
    newest = view["groups"][0]  # newest first
    assert newest["type"] == "KeyError" and newest["count"] == 1 and newest["where"] == "api/faults.py:_lookup"
    assert newest["last_request_id"] == other.headers["X-Request-Id"]
    assert view["groups"][1]["fingerprint"] == group["fingerprint"]

    cleared = http.delete(errors_url, timeout=10).json()["data"]
    assert cleared["cleared_groups"] == 2
    assert http.get(errors_url, timeout=10).json()["data"]["groups"] == []


def test_only_admins_read_the_errors(errors_url, new_user, http):
    member = {"Authorization": f"Bearer {auth.access_token(int(new_user()['id']), 'member')}"}
    assert_problem(requests.get(errors_url, headers=member, timeout=10), 403, "Authorization")
    assert_problem(requests.delete(errors_url, headers=member, timeout=10), 403, "Authorization")
    assert_problem(requests.get(f"{errors_url}/0123456789abcdef", headers=member, timeout=10), 403)
    assert requests.get(errors_url, headers=ANONYMOUS, timeout=10).status_code == 401


def test_bad_input_is_a_problem(errors_url, http):
    assert_problem(http.get(errors_url, params={"limit": "0"}, timeout=10), 400, "limit")
    assert_problem(http.get(errors_url, params={"limit": "x"}, timeout=10), 400, "limit")
    assert_problem(http.get(errors_url, params={"sort": "count"}, timeout=10), 400, "sort")
    assert_problem(http.get(f"{errors_url}/not-a-fingerprint", timeout=10), 400, "fingerprint")
    assert_problem(http.get(f"{errors_url}/0123456789abcdef", timeout=10), 404, "fingerprint")


def test_without_the_fault_header_nothing_is_recorded(errors_url, api_url, http):
    assert http.get(f"{api_url}/users?limit=1", timeout=30).status_code == 200
    assert http.get(errors_url, timeout=10).json()["data"]["total_groups"] == 0


def test_with_a_sentry_dsn_errors_also_go_to_sentry(monkeypatch):
    """In process, against a local stand-in for Sentry's ingest endpoint: the event carries our
    fingerprint and the request id, so Sentry groups as the local view does."""
    import gzip
    import http.server
    import threading

    import sentry_sdk

    from api import errors

    received = []

    class Ingest(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ingest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("SENTRY_DSN", f"http://publickey@127.0.0.1:{server.server_port}/1")
    monkeypatch.setattr(errors, "_sentry_ready", None)
    try:
        try:
            raise ValueError("boom")
        except ValueError as exc:
            errors._send_to_sentry(exc, "0123456789abcdef", {"last_request_id": "req-1", "route": "r",
                                                             "method": "GET", "app_server": "app-1"})
        sentry_sdk.flush(timeout=5)
    finally:
        sentry_sdk.get_client().close()
        server.shutdown()
    payload = b"".join(gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body for body in received)
    assert b"0123456789abcdef" in payload and b"req-1" in payload and b"ValueError" in payload


def test_the_status_page_shows_the_errors_and_a_profile(errors_url, api_url, http):
    """lessons/debugging.py on the Stack status page, reading the live stack: the error group with
    its last stack, and the newest profile's top frames."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    failed = fail(http, api_url, RAISE)
    profiled = http.get(f"{api_url}/users?limit=20", headers={"X-Workbench-Profile": "1"}, timeout=30)
    assert "X-Profile-Id" in profiled.headers
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "lessons" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert {"Errors", "Profiles"} <= {h.value for h in at.subheader}
    tables = [frame.value for frame in at.dataframe]
    errors = next(t for t in tables if "fingerprint" in t.columns)
    assert list(errors["type"]) == ["RuntimeError"] and list(errors["count"]) == [1]
    assert list(errors["last request id"]) == [failed.headers["X-Request-Id"]]
    profiles = next(t for t in tables if "samples" in t.columns)
    assert profiles["id"].iloc[0] == profiled.headers["X-Profile-Id"]
    code = "\n".join(block.value for block in at.code)
    assert "RuntimeError: injected fault" in code  # the last stack, in its expander
    assert " ms  " in code  # the profile's top frames
