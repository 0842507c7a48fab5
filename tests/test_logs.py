"""Structured logs (issue 11): one JSON line per request on Caddy's side and on the app server's,
linked by the request id, and `manage.py logs --request-id` showing the request's path."""
import io
import json
import re
import subprocess
import sys
import uuid

from django.core.management import call_command

from tests.conftest import wait_for
from tests.settings import ROOT
from workbench.management.commands import logs as logs_command

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _hops(stack_config, rid, n=2):
    """The request's hops once both sides wrote them (Caddy writes its line after the response)."""
    return wait_for(lambda: (hops := logs_command.find(rid, stack_config.log_dir)) and len(hops) >= n and hops,
                    timeout=10, what=f"{n} log lines of {rid}")


def _app_line(stack_config, app_server, rid):
    path = stack_config.log_dir / f"{app_server}.requests.jsonl"
    return next(json.loads(line) for line in path.read_text().splitlines() if f'"{rid}"' in line)


def test_request_id_links_caddys_line_and_the_app_servers(stack, stack_config, http, api_url):
    listing = http.get(f"{api_url}/users?limit=1", timeout=10)
    assert listing.status_code == 200
    uid = listing.json()["data"]["results"][0]["id"]
    response = http.get(f"{api_url}/users/{uid}", timeout=10)
    assert response.status_code == 200
    rid = response.headers["X-Request-Id"]
    assert UUID.match(rid), rid  # the client sent none: Caddy's uuid, kept by the app
    server = response.headers["X-App-Server"]

    caddy, app = _hops(stack_config, rid)
    assert (caddy["where"], app["where"]) == ("caddy", server)
    assert caddy["start"] <= app["start"] and caddy["latency_ms"] >= app["latency_ms"]
    assert caddy["status"] == app["status"] == 200
    assert caddy["uri"] == f"/api/v1/users/{uid}"

    line = _app_line(stack_config, server, rid)  # the raw JSON line
    assert line["event"] == "request" and line["method"] == "GET"
    assert line["route"] == "api/v1/users/<id64:user_id>"  # the pattern, not the path
    assert str(uid) not in line["route"]
    assert line["status"] == 200 and line["latency_ms"] > 0
    assert line["cache"] == response.headers["X-Cache"]
    assert line["db_node"] == response.headers["X-DB-Node"]
    assert line["topology_version"] == response.headers["X-Topology-Version"]
    assert line["client"] == "127.0.0.1"

    out = io.StringIO()
    call_command("logs", "--request-id", rid, stdout=out)
    shown = out.getvalue().splitlines()
    assert len(shown) == 2, shown
    assert " caddy " in shown[0] and f" {server} " in shown[1]
    assert "route=api/v1/users/<id64:user_id>" in shown[1] and f"db_node={line['db_node']}" in shown[1]


def test_a_clients_id_is_kept_and_a_malformed_one_replaced_at_the_edge(stack, stack_config, http, api_url):
    mine = f"client-{uuid.uuid4().hex[:12]}"
    response = http.get(f"{api_url}/users?limit=1", headers={"X-Request-Id": mine}, timeout=10)
    assert response.headers["X-Request-Id"] == mine
    assert [hop["where"] for hop in _hops(stack_config, mine)] == ["caddy", response.headers["X-App-Server"]]

    response = http.get(f"{api_url}/users?limit=1", headers={"X-Request-Id": "not a valid id!"}, timeout=10)
    rid = response.headers["X-Request-Id"]
    assert UUID.match(rid), rid  # Caddy's, so both sides log the same one
    assert len(_hops(stack_config, rid)) == 2


def _logs(*args):
    return subprocess.run([sys.executable, "manage.py", "logs", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_the_logs_command_refuses_a_malformed_id_and_says_not_found(stack):
    bad = _logs("--request-id", "a b;rm")
    assert bad.returncode != 0
    assert "--request-id" in bad.stderr and "is not a request id" in bad.stderr
    missing = _logs("--request-id", "no-such-request-0000")
    assert missing.returncode != 0
    assert "not found" in missing.stderr
