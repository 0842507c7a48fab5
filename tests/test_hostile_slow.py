"""Slow clients against Caddy, at scale (tests/test_lb_edge.py has slow uploads that finish): a
slowloris (hundreds of connections trickling header lines, never ending them) and stalled bodies
(headers complete, then a few bytes of a larger Content-Length, then nothing), all open at once.
None of them may reach an app server (Caddy reads headers and buffers bodies before it picks an
upstream), a normal client is served promptly throughout, and Caddy closes the slowloris
connections at its header timeout (read_header_timeout, workbench/stack/caddy.py), not earlier
and not never."""
import socket
import time

from hostile import SOAK, Plain, record
from workbench.stack import caddy

LORIS = 400 if SOAK else 150
STALLED = 200 if SOAK else 60
HEADER_TIMEOUT_S = 10.0         # caddy.config: read_header_timeout
SLACK_S = 5.0
NORMAL_S = 3.0                  # the slowest normal answer allowed meanwhile (generous: a shared machine)


def _open(port: int, head: bytes) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.setblocking(False)
    client.sendall(head)
    return client


def _closed(client: socket.socket) -> bool:
    """Closed by the server (EOF, a reset, or an answer such as 408 before the close)."""
    try:
        return client.recv(4096) is not None
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slowloris_and_stalled_bodies_do_not_starve_the_app_servers(stack, stack_config):
    port = stack_config.caddy_port
    loris = [_open(port, b"GET /api/v1/users?limit=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(LORIS)]
    stalled_head = (b"POST /api/v1/users HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n{\"username\": ")
    stalled = [_open(port, stalled_head) for _ in range(STALLED)]
    opened = time.monotonic()
    normal, in_flight, closed_at = [], [], {}
    try:
        with Plain() as http:
            while time.monotonic() - opened < HEADER_TIMEOUT_S + SLACK_S and len(closed_at) < LORIS:
                for i, client in enumerate(loris):
                    if i in closed_at:
                        continue
                    if _closed(client):
                        closed_at[i] = time.monotonic() - opened
                        continue
                    try:
                        client.sendall(b"X-Loris: %d\r\n" % i)  # one more header line, never the blank one
                    except OSError:
                        closed_at[i] = time.monotonic() - opened
                started = time.monotonic()
                response = http.get(stack["api_url"] + "/api/v1/users?limit=1", timeout=30)
                normal.append((response.status_code, time.monotonic() - started))
                in_flight.append(sum(row["in_flight"] for row in caddy.upstreams(stack_config)))
                time.sleep(0.5)
        stalled_open = sum(not _closed(client) for client in stalled)
    finally:
        for client in loris + stalled:
            client.close()
    record("slow clients", slowloris_connections=LORIS, stalled_bodies=STALLED, normal_requests=len(normal),
           normal_slowest_s=round(max(s for _, s in normal), 3), max_in_flight_at_app_servers=max(in_flight),
           slowloris_closed=len(closed_at), first_closed_s=round(min(closed_at.values(), default=0), 1),
           last_closed_s=round(max(closed_at.values(), default=0), 1))
    assert all(code == 200 for code, _ in normal), normal
    slowest = max(seconds for _, seconds in normal)
    assert slowest < NORMAL_S, f"a normal request took {slowest:.2f} s among the slow clients"
    assert max(in_flight) == 0, f"slow clients reached the app servers: in flight {in_flight}"
    assert len(closed_at) == LORIS, f"{LORIS - len(closed_at)} slowloris connections still open"
    assert HEADER_TIMEOUT_S - 1 <= min(closed_at.values()) and max(closed_at.values()) <= HEADER_TIMEOUT_S + SLACK_S, \
        sorted(closed_at.values())[:5]
    assert stalled_open == STALLED, "a stalled body was cut before Caddy's read timeout (30 s)"
