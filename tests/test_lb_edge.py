"""Caddy at the edge (workbench/stack/caddy.py), on the real stack: TLS from Caddy's internal CA,
limits against slow and abusive clients, and app servers leaving and rejoining the rotation by
their health. Each response from an app server names it (X-App-Server); a response without that
header came from Caddy itself."""
import collections
import os
import signal
import socket
import time

import psutil
import pytest
import requests
from django.conf import settings

from conftest import Background, assert_problem, wait_for
from workbench.stack import caddy
from workbench.stack.config import MAX_APP_SERVERS

GRACE_S = 3.0  # the health-check interval (1 s), the time a refused dial takes to be noticed, and slack


def test_https_through_the_internal_ca_and_plain_http_beside_it(stack, stack_config, controller):
    status = controller.status()
    assert status["https_url"] == stack_config.https_url
    root = str(stack_config.caddy_root_ca)
    assert os.path.exists(root), "Caddy's internal CA root is not in the data dir"
    secure = requests.get(status["https_url"] + "/healthz", verify=root, timeout=10)
    assert secure.status_code == 200 and secure.headers["X-App-Server"], secure.text
    for host in ("127.0.0.1", "localhost"):
        url = f"https://{host}:{stack_config.https_port}/api/v1/users?limit=1"
        assert requests.get(url, verify=root, timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):  # not trusted by the system's CAs
        requests.get(status["https_url"] + "/healthz", timeout=10)
    plain = requests.get(status["api_url"] + "/healthz", timeout=10, allow_redirects=False)
    assert plain.status_code == 200, "plain HTTP must stay api_url, with no redirect to HTTPS"


def test_slow_uploads_hold_no_app_server_worker(stack, stack_config):
    """More slow uploads than the stack has worker threads, trickling a byte at a time: Caddy
    buffers each body before it picks an upstream, so none is in flight at an app server, and a
    normal request is answered meanwhile. When the bodies complete, each is proxied and answered."""
    threads = stack_config.app_servers * stack_config.app_workers * stack_config.app_threads
    body = b'{"slow": true}'
    head = (f"POST /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    clients = [socket.create_connection(("127.0.0.1", stack_config.caddy_port), timeout=30) for _ in range(threads + 8)]
    try:
        for client in clients:
            client.sendall(head)
        in_flight = []
        for i in range(6):  # the first 6 bytes, half a second apart: 3 s, well inside read_timeout
            for client in clients:
                client.sendall(body[i:i + 1])
            time.sleep(0.5)
            normal = requests.get(stack["api_url"] + "/healthz", timeout=10)
            assert normal.status_code == 200, normal.text
            in_flight.append(sum(row["in_flight"] for row in caddy.upstreams(stack_config)))
        assert max(in_flight) == 0, f"slow uploads in flight at the app servers: {in_flight}"
        for client in clients:
            client.sendall(body[6:])
        answers = collections.Counter(_status_line(client) for client in clients)
    finally:
        for client in clients:
            client.close()
    assert answers == {"HTTP/1.1 200 OK": len(clients)}, answers


def _status_line(client: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[0].decode()


def test_a_body_over_the_edge_cap_is_a_413_problem_from_caddy(stack, api_url):
    assert caddy.BODY_CAP > settings.AVATAR_MAX_BYTES >= settings.MAX_BODY_BYTES, "the edge must not cut a body the API takes"
    response = requests.put(f"{api_url}/users/1/avatar", data=b"\0" * (caddy.BODY_CAP + 64 * 1024),
                            headers={"Content-Type": "image/png"}, timeout=60)
    assert_problem(response, 413, "(body)")
    assert "X-App-Server" not in response.headers, "the edge, not an app server, refuses it"
    assert requests.get(stack["api_url"] + "/healthz", timeout=10).status_code == 200


def test_oversized_headers_are_refused(stack):
    """Go's HTTP server refuses headers over max_header_bytes before any Caddy handler runs, with
    a plain-text 431 (no problem document is possible there)."""
    response = requests.get(stack["api_url"] + "/healthz", headers={"X-Padding": "a" * (2 * caddy.HEADER_CAP)},
                            timeout=10)
    assert response.status_code == 431, response.text
    assert requests.get(stack["api_url"] + "/healthz", timeout=10).status_code == 200


def test_only_slots_with_a_live_server_are_healthy(stack, stack_config):
    """Caddy lists every slot app-1 .. app-8; its active health checks leave only the running app
    servers in rotation (read from its health gauge, which Caddy samples every 10 s)."""
    running = {f"127.0.0.1:{stack_config.app_port(i)}" for i in range(1, stack_config.app_servers + 1)}
    every = {f"127.0.0.1:{stack_config.app_port(i)}" for i in range(1, MAX_APP_SERVERS + 1)}

    def as_expected():
        gauge = caddy.health_gauge(stack_config)
        return set(gauge) == every and {address for address, up in gauge.items() if up} == running
    wait_for(as_expected, timeout=30, interval=1, what=f"Caddy's health gauge to show exactly {sorted(running)} up")


def test_a_killed_app_server_leaves_the_rotation_and_returns(stack, stack_config, controller):
    if stack_config.app_servers < 2:
        pytest.skip("needs at least two app servers")
    victim = "app-1"
    url = stack["api_url"] + "/healthz"
    before = controller.process(victim)

    def send(http):
        response = http.get(url, timeout=30)
        return response.status_code, response.headers.get("X-App-Server")

    with Background(send, threads=2) as load:
        wait_for(lambda: any(o[1] == victim for _, o in load.results if isinstance(o, tuple)), timeout=30,
                 what=f"{victim} answering before the fault")
        # The whole server crashes: its gunicorn master and workers, SIGKILLed at once.
        server = psutil.Process(before["pid"])
        killed_at = time.monotonic()
        for process in [server, *server.children(recursive=True)]:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        back = wait_for(lambda: _restarted(controller, victim, before["pid"]), timeout=60,
                        what=f"the controller restarting {victim}")
        back_at = time.monotonic() - back["uptime_s"]
        wait_for(lambda: any(start > back_at and o[1] == victim for start, o in list(load.results)
                             if isinstance(o, tuple)), timeout=60, what=f"{victim} back in the rotation")
    failed = [(start - killed_at, o) for start, o in load.results if not isinstance(o, tuple) or o[0] != 200]
    late = [f for f in failed if f[0] > GRACE_S]
    assert not late, f"{len(late)} requests failed after the fault settled: {late[:5]}"
    while_down = [o[1] for start, o in load.results if killed_at + GRACE_S < start < back_at - 0.5]
    assert victim not in while_down, f"{while_down.count(victim)} requests answered by the killed {victim}"
    print(f"kill test: {len(load.results)} requests, {len(failed)} failed within {GRACE_S} s of the kill, "
          f"{victim} down {back_at - killed_at:.1f} s")


def _restarted(controller, name: str, old_pid: int):
    row = controller.process(name)
    return row if row["pid"] and row["pid"] != old_pid and row["healthy"] else None
