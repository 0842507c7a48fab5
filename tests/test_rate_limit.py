"""The gateway's rate limiter (api/gateway/ratelimit.py) on the real stack: token buckets in the
real `state` Valkey, rules set live in the topology, requests sent through Caddy and straight to
both app-server processes. Per-IP, per-user and per-endpoint rules alone and combined (a refusal
takes no token from the other buckets); the IETF RateLimit headers, Retry-After and problem+json;
X-Forwarded-For believed only from the trusted proxy; fail-open and fail-closed with the state
Valkey SIGKILLed; exactness with 32 concurrent clients over two app servers, with refill off and on
(against Valkey's own clock). The pure parts (client IP, rule matching, header formatting,
validation) are unit-tested at the end, without the stack.

Other addresses than 127.0.0.1 stand for other machines: a client connects from 127.0.0.5 (any
127.x address is loopback on Linux) as a client elsewhere would, since on one machine a trusted
proxy and a local client share 127.0.0.1 and only the address tells them apart."""
import math
import os
import signal
import threading
import time
import uuid

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter

from conftest import assert_problem, wait_for
from api.gateway import auth, ratelimit
from workbench import topology


class SourceAddress(HTTPAdapter):
    """requests from a chosen local address."""

    def __init__(self, address: str, **kw):
        self.address = address
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kw)


def session_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddress(address))
    return session


def name(what: str) -> str:
    """A rule name of its own per test run: fresh buckets, whatever ran before."""
    return f"{what}-{uuid.uuid4().hex[:6]}"


def pk(*values: str) -> str:
    return ratelimit.partition_key(list(values))


def items(header: str | None) -> dict:
    """`"a";r=1;t=2, "b";q=3` -> {"a": {"r": "1", "t": "2"}, "b": {"q": "3"}}."""
    out = {}
    for item in (header or "").split(", "):
        if not item:
            continue
        policy, *params = item.split(";")
        out[policy.strip('"')] = dict(p.split("=", 1) for p in params)
    return out


@pytest.fixture(scope="module")
def state(stack_config):
    return redis.Redis.from_url(stack_config.state_url)


def as_user(user_id) -> dict:
    return {"Authorization": f"Bearer {auth.access_token(int(user_id), 'member')}"}


@pytest.fixture(scope="module")
def users(api_url, stack):
    """Seeded users' ids, read before any limit is on."""
    data = requests.get(f"{api_url}/users?limit=10", timeout=10).json()["data"]
    return [u["id"] for u in data["results"]]


@pytest.fixture(scope="module")
def settled(stack):
    """Waits until every app worker runs the topology version just written: each worker checks the
    version at most once a second, on its next request after that second."""
    def settle() -> None:
        time.sleep(topology.REFRESH_S + 0.25)
        for base in stack["direct_urls"]:
            for _ in range(4):
                requests.get(base + "/healthz", headers={"Connection": "close"}, timeout=10)
    return settle


@pytest.fixture(scope="module")
def module_restore(topology_admin, settled):
    before = topology_admin.data()["topology"]["rate_limit"]
    yield before
    assert topology_admin.patch({"rate_limit": before}).status_code == 200
    settled()  # no later module runs a request under this module's rules


@pytest.fixture
def limiter(topology_admin, module_restore, settled):
    """`limiter(rules, on_error=...)` switches the limiter on with these rules; the test's end puts
    the rate_limit group back as it was."""
    def apply(rules: list[dict], on_error: str = "open") -> None:
        response = topology_admin.patch({"rate_limit": {"enabled": True, "on_error": on_error, "rules": rules}})
        assert response.status_code == 200, response.text
        settled()
    yield apply
    assert topology_admin.patch({"rate_limit": module_restore}).status_code == 200


# --- 429, headers, problem+json --------------------------------------------------------------------
def test_a_refusal_is_429_with_the_ratelimit_headers_and_problem_json(limiter, api_url, users, stack_config):
    rule = name("reads")
    limiter([{"name": rule, "per": ["ip"], "endpoints": ["GET /api/v1/users/{user_id}"], "capacity": 3,
              "refill_per_s": 0}])
    url = f"{api_url}/users/{users[0]}"
    with requests.Session() as http:
        for left in (2, 1, 0):
            response = http.get(url, timeout=10)
            assert response.status_code == 200, response.text
            assert response.headers["X-RateLimit-Status"] == "allowed"
            assert response.headers["RateLimit-Policy"] == f'"{rule}";q=3;w={ratelimit.FIXED_WINDOW_S}'
            limit = items(response.headers["RateLimit"])[rule]
            assert limit["r"] == str(left) and limit["pk"] == pk("127.0.0.1")  # a client of Caddy's, on loopback
            assert 0 < int(limit["t"]) <= ratelimit.FIXED_WINDOW_S  # a fixed quota: until the bucket expires
            assert "gateway;dur=" in response.headers["Server-Timing"]
        refused = http.get(url, timeout=10)
        assert_problem(refused, 429)
        body = refused.json()
        assert body["type"] == ratelimit.QUOTA_EXCEEDED and body["violated-policies"] == [rule]
        assert body["request_id"] == refused.headers["X-Request-Id"]
        retry_after = int(refused.headers["Retry-After"])
        assert 0 < retry_after <= ratelimit.FIXED_WINDOW_S
        assert items(refused.headers["RateLimit"])[rule] == {"r": "0", "t": str(retry_after), "pk": pk("127.0.0.1")}
        assert refused.headers["X-RateLimit-Status"] == "limited"
        assert "gateway;dur=" in refused.headers["Server-Timing"]
        # Other routes are not this rule's: no RateLimit headers at all, and never limited.
        other = http.get(f"{url}/posts", timeout=10)
        assert other.status_code == 200 and "RateLimit" not in other.headers and "X-RateLimit-Status" not in other.headers
        # Nor are the admin endpoints, whatever the rules: the operator can always switch it off.
        limiter([{"name": name("all"), "per": [], "capacity": 1, "refill_per_s": 0}])
        headers = {"Authorization": f"Bearer {stack_config.controller_token()}"}
        for _ in range(3):
            admin = http.get(f"{api_url}/admin/ratelimit", headers=headers, timeout=10)
            assert admin.status_code == 200 and "RateLimit" not in admin.headers
    # The refusal was counted (every app server's counters, added up in the state Valkey).
    counted = wait_for(lambda: (d := requests.get(f"{api_url}/admin/ratelimit", headers=headers, timeout=10)
                                .json()["data"])["counters"]["limited"] >= 1 and d, timeout=10,
                       what="the refusal counted")
    assert counted["counters"]["allowed"] >= 3 and counted["draft"] == ratelimit.DRAFT


def test_with_the_limiter_off_nothing_is_limited_and_no_header_is_sent(api_url, users, module_restore):
    assert module_restore["enabled"] is False  # the default
    signup = [r for r in module_restore["rules"] if r["endpoints"] == ["POST /api/v*/users"]]
    assert signup and signup[0]["per"] == ["ip"]  # sign-up is limitable per IP, once switched on
    response = requests.get(f"{api_url}/users/{users[0]}", timeout=10)
    assert response.status_code == 200
    assert not {"RateLimit", "RateLimit-Policy", "X-RateLimit-Status"} & set(response.headers)


# --- per IP, per user, per endpoint, combined ------------------------------------------------------
def test_sign_up_is_limited_per_client_ip_behind_caddy(limiter, stack, module_restore):
    api = stack["api_url"] + "/api/v1"

    def sign_up(http):
        username = f"rl{uuid.uuid4().hex[:12]}"
        return http.post(f"{api}/users", json={"username": username, "email": f"{username}@example.org",
                                               "password": "correct-horse"}, timeout=30)

    # The default rules, switched on: sign-up takes from its client's own bucket of the default rule.
    limiter(module_restore["rules"])
    with session_from("127.0.0.7") as http:
        signed_up = sign_up(http)
    assert signed_up.status_code == 201
    assert items(signed_up.headers["RateLimit-Policy"])["signup-per-ip"] == {"q": "5", "w": "50"}
    assert items(signed_up.headers["RateLimit"])["signup-per-ip"]["r"] == "4"
    assert items(signed_up.headers["RateLimit"])["signup-per-ip"]["pk"] == pk("127.0.0.7")

    rule = name("signup")
    limiter([{"name": rule, "per": ["ip"], "endpoints": ["POST /api/v*/users"], "capacity": 2, "refill_per_s": 0}])

    with session_from("127.0.0.2") as first, session_from("127.0.0.3") as second:
        assert [sign_up(first).status_code for _ in range(2)] == [201, 201]
        refused = sign_up(first)
        assert_problem(refused, 429)
        assert items(refused.headers["RateLimit"])[rule]["pk"] == pk("127.0.0.2")
        # Another client address behind the same Caddy has its own bucket: Caddy's X-Forwarded-For
        # was believed, or both would share 127.0.0.1's.
        other = sign_up(second)
        assert other.status_code == 201 and items(other.headers["RateLimit"])[rule]["pk"] == pk("127.0.0.3")
        # Reads are not sign-ups.
        assert first.get(f"{api}/users?limit=1", timeout=10).status_code == 200


def test_a_per_user_rule_limits_each_users_writes(limiter, api_url, users):
    rule = name("writes")
    limiter([{"name": rule, "per": ["user"], "endpoints": ["POST /api/*", "PATCH /api/*"], "capacity": 2,
              "refill_per_s": 0}])
    a, b = users[1], users[2]
    as_a, as_b = as_user(a), as_user(b)  # the user is the token's (api/gateway/auth.py)
    with requests.Session() as http:
        first = http.post(f"{api_url}/users/{a}/posts", json={"title": "one"}, headers=as_a, timeout=10)
        assert first.status_code == 201 and items(first.headers["RateLimit"])[rule]["pk"] == pk(str(a))
        assert http.patch(f"{api_url}/users/{a}", json={"bio": "two"}, headers=as_a, timeout=10).status_code == 200
        refused = http.post(f"{api_url}/users/{a}/posts", json={"title": "three"}, headers=as_a, timeout=10)
        assert_problem(refused, 429)
        assert refused.json()["violated-policies"] == [rule]
        # Another user's bucket is their own; reads are not this rule's.
        assert http.post(f"{api_url}/users/{b}/posts", json={"title": "b"}, headers=as_b, timeout=10).status_code == 201
        read = http.get(f"{api_url}/users/{a}", headers=as_a, timeout=10)
        assert read.status_code == 200 and "RateLimit" not in read.headers


def test_a_per_endpoint_rule_is_shared_by_every_client(limiter, stack, users):
    rule = name("endpoint")
    limiter([{"name": rule, "per": ["endpoint"], "endpoints": ["GET /api/v*/users/{user_id}"], "capacity": 3,
              "refill_per_s": 0}])
    api = stack["api_url"] + "/api/v1"
    key = pk("GET /api/v1/users/{user_id}")
    with session_from("127.0.0.2") as one, session_from("127.0.0.3") as two:
        codes = [s.get(f"{api}/users/{users[i]}", timeout=10) for i, s in enumerate([one, two, one, two])]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert {items(r.headers["RateLimit"])[rule]["pk"] for r in codes} == {key}
        # Another endpoint has no bucket in this rule.
        assert one.get(f"{api}/users/{users[0]}/posts", timeout=10).status_code == 200


def test_rules_combine_and_a_refused_request_takes_no_token(limiter, stack, users):
    per_ip, per_user = name("ip"), name("user")
    limiter([{"name": per_ip, "per": ["ip"], "capacity": 5, "refill_per_s": 0},
             {"name": per_user, "per": ["user"], "endpoints": ["POST /api/*"], "capacity": 2, "refill_per_s": 0}])
    api, user = stack["api_url"] + "/api/v1", users[3]
    with session_from("127.0.0.4") as http:
        http.headers.update(as_user(user))
        for _ in range(2):
            posted = http.post(f"{api}/users/{user}/posts", json={"title": "x"}, timeout=10)
            assert posted.status_code == 201
            assert set(items(posted.headers["RateLimit-Policy"])) == {per_ip, per_user}
        refused = [http.post(f"{api}/users/{user}/posts", json={"title": "x"}, timeout=10) for _ in range(3)]
        for response in refused:
            assert_problem(response, 429)
            assert response.json()["violated-policies"] == [per_user]  # the IP bucket had tokens
            assert items(response.headers["RateLimit"])[per_ip]["r"] == "3"  # and still has: none was taken
        # So the IP bucket has exactly the 3 left that the refusals did not take.
        reads = [http.get(f"{api}/users/{user}", timeout=10) for _ in range(4)]
        assert [r.status_code for r in reads] == [200, 200, 200, 429]
        assert [items(r.headers["RateLimit"])[per_ip]["r"] for r in reads] == ["2", "1", "0", "0"]
        assert reads[-1].json()["violated-policies"] == [per_ip]


# --- the client IP: X-Forwarded-For from the trusted proxy only -----------------------------------
def test_a_spoofed_forwarded_for_sent_straight_to_an_app_server_is_ignored(limiter, stack, users):
    rule = name("spoof")
    limiter([{"name": rule, "per": ["ip"], "endpoints": ["GET /api/v1/users/{user_id}"], "capacity": 2,
              "refill_per_s": 0}])
    path = f"/api/v1/users/{users[4]}"
    with session_from("127.0.0.5") as attacker:
        # Straight to an app server's port, from an address that is not a trusted proxy: each request
        # claims to come from somewhere new, yet all of them share the connection's own bucket.
        seen = []
        for i, base in enumerate(stack["direct_urls"] * 2):
            response = attacker.get(base + path, headers={"X-Forwarded-For": f"198.51.100.{i + 1}"}, timeout=10)
            seen.append((response.status_code, items(response.headers["RateLimit"])[rule]["pk"]))
        assert seen == [(200, pk("127.0.0.5"))] * 2 + [(429, pk("127.0.0.5"))] * 2
        # Through Caddy, the same forged header is replaced by Caddy's own X-Forwarded-For, which the
        # app server believes (Caddy is the trusted proxy): the bucket is this client's address.
    with session_from("127.0.0.6") as client:
        through = client.get(stack["api_url"] + path, headers={"X-Forwarded-For": "198.51.100.99"}, timeout=10)
        assert through.status_code == 200
        assert items(through.headers["RateLimit"])[rule]["pk"] == pk("127.0.0.6")
    # A trusted proxy's header is believed, right-most untrusted address first: the peer is 127.0.0.1.
    forwarded = requests.get(stack["direct_urls"][0] + path, timeout=10,
                             headers={"X-Forwarded-For": "192.0.2.1, 203.0.113.7, 127.0.0.1"})
    assert items(forwarded.headers["RateLimit"])[rule]["pk"] == pk("203.0.113.7")


# --- the state Valkey down -------------------------------------------------------------------------
def _kill_state_valkey_and_wait(controller, send, seen, what: str) -> list:
    """SIGKILL the state Valkey, send until `seen(response)` holds, then wait until the controller
    has restarted it and the limiter answers again. Returns the status of every response meanwhile."""
    before = controller.process("valkey-state")
    os.kill(before["pid"], signal.SIGKILL)
    codes = []

    def probe():
        response = send()
        codes.append(response.status_code)
        return seen(response)

    wait_for(probe, timeout=30, interval=0.05, what=what)
    wait_for(lambda: (p := controller.process("valkey-state"))["healthy"] and p["pid"] != before["pid"],
             timeout=60, what="valkey-state restarted")
    wait_for(lambda: send().headers.get("X-RateLimit-Status") == "allowed", timeout=30,
             what="the limiter answering again")
    return codes


def test_fail_open_and_fail_closed_with_the_state_valkey_killed(limiter, api_url, users, controller,
                                                                stack_config):
    url = f"{api_url}/users/{users[5]}"
    rule = {"name": name("generous"), "per": ["ip"], "capacity": 1_000_000, "refill_per_s": 1000}
    with requests.Session() as http:
        def send():
            return http.get(url, timeout=10)

        limiter([rule], on_error="open")
        codes = _kill_state_valkey_and_wait(
            controller, send, lambda r: r.headers.get("X-RateLimit-Status") == "fail-open", "a fail-open response")
        assert all(code == 200 for code in codes), codes  # let through, unchecked

        limiter([rule], on_error="closed")
        refusals = []
        codes = _kill_state_valkey_and_wait(
            controller, send, lambda r: r.headers.get("X-RateLimit-Status") == "fail-closed" and refusals.append(r)
            is None, "a fail-closed response")
    assert set(codes) <= {200, 503}, codes  # refused while down, never a 500
    refused = refusals[0]
    assert_problem(refused, 503)
    assert refused.json()["type"].endswith("/rate-limiter-unavailable")
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"].startswith(f'"{rule["name"]}"')
    headers = {"Authorization": f"Bearer {stack_config.controller_token()}"}
    wait_for(lambda: (c := requests.get(f"{api_url}/admin/ratelimit", headers=headers, timeout=10)
                      .json()["data"]["counters"])["fail_open"] >= 1 and c["fail_closed"] >= 1,
             timeout=10, what="both outcomes counted, once the counters could be flushed again")


# --- exactness under concurrency ------------------------------------------------------------------
THREADS = 32


def _hammer(stack, path: str, rule: str, *, seconds: float | None = None, per_thread: int = 0):
    """THREADS clients, half on each app server's port, each on its own kept-alive connection
    (opened before the start), sending `path` until `seconds` pass or `per_thread` are sent. Returns
    the responses that the rule checked (status, X-App-Server) and the client-side moments needed to
    bound the run: when it started, the first answer, the last send."""
    bases = stack["direct_urls"]
    sessions = [requests.Session() for _ in range(THREADS)]
    for i, s in enumerate(sessions):  # connections opened (and the workers' topology checked) beforehand
        s.get(bases[i % len(bases)] + "/healthz", timeout=10)
    ready, go = threading.Barrier(THREADS + 1), threading.Event()
    results, marks, errors = [], {"first": [], "last_send": []}, []
    lock = threading.Lock()

    def client(i):
        s, base = sessions[i], bases[i % len(bases)]
        mine, first, last_send = [], None, None
        ready.wait()
        go.wait()
        stop = time.monotonic() + seconds if seconds else None
        try:
            for _ in range(per_thread or 100_000):
                if stop and time.monotonic() >= stop:
                    break
                last_send = time.monotonic()
                response = s.get(base + path, timeout=30)
                first = first or time.monotonic()
                mine.append((response.status_code, response.headers.get("X-App-Server"),
                             rule in response.headers.get("RateLimit-Policy", "")))
        except requests.RequestException as exc:
            errors.append(repr(exc))
        with lock:
            results.extend(mine)
            marks["first"].append(first)
            marks["last_send"].append(last_send)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    ready.wait()
    return threads, go, results, marks, errors, sessions


def test_exactly_the_capacity_is_allowed_with_refill_off(limiter, stack, users):
    rule = name("exact")
    capacity = 50
    limiter([{"name": rule, "per": [], "endpoints": ["GET /api/v1/users/{user_id}"], "capacity": capacity,
              "refill_per_s": 0}])
    threads, go, results, _, errors, sessions = _hammer(stack, f"/api/v1/users/{users[6]}", rule, per_thread=25)
    go.set()
    for t in threads:
        t.join()
    for s in sessions:
        s.close()
    assert not errors, errors[:3]
    checked = [r for r in results if r[2]]  # a worker may answer once under its previous copy of the topology
    allowed = [r for r in checked if r[0] == 200]
    print(f"\n{len(results)} requests from {THREADS} clients, {len(checked)} checked by the rule: "
          f"{len(allowed)} allowed of capacity {capacity}")
    assert {code for code, _, _ in checked} <= {200, 429}
    assert len(allowed) == capacity
    assert {server for _, server, _ in checked} == {"app-1", "app-2"}  # both processes took from the one bucket
    assert len(checked) >= len(results) - 8


def _valkey_time(client) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def test_with_refill_on_the_count_is_capacity_plus_rate_times_valkeys_elapsed_time(limiter, stack, users, state):
    rule = name("refill")
    capacity, rate = 20, 4.0
    limiter([{"name": rule, "per": [], "endpoints": ["GET /api/v1/users/{user_id}"], "capacity": capacity,
              "refill_per_s": rate}])
    threads, go, results, marks, errors, sessions = _hammer(stack, f"/api/v1/users/{users[7]}", rule, seconds=2.5)
    started, before = time.monotonic(), _valkey_time(state)
    go.set()
    for t in threads:
        t.join()
    after, ended = _valkey_time(state), time.monotonic()
    for s in sessions:
        s.close()
    assert not errors, errors[:3]
    checked = [r for r in results if r[2]]
    allowed = sum(1 for r in checked if r[0] == 200)
    expected = capacity + rate * (after - before)
    # Valkey's clock ran `after - before` between the two TIME reads; the bucket's own span (first take
    # to last take) lies inside it, shorter by at most the time before the first answer and after the
    # last send (measured here). So: allowed <= expected, and at most one token plus that slack below.
    slack = rate * ((min(m for m in marks["first"] if m) - started) + (ended - max(m for m in marks["last_send"] if m)))
    print(f"\n{len(results)} requests, {len(checked)} checked: {allowed} allowed; capacity + rate x elapsed = "
          f"{capacity} + {rate:g} x {after - before:.3f} s = {expected:.2f} (slack {slack:.2f} tokens)")
    assert {code for code, _, _ in checked} <= {200, 429}
    assert {server for _, server, _ in checked} == {"app-1", "app-2"}
    assert allowed <= expected + 1e-6
    assert allowed >= expected - 1 - slack
    assert abs(allowed - expected) <= 1 + slack


# --- unit tests: pure logic, no stack ------------------------------------------------------------
def _networks(*values):
    import ipaddress
    return tuple(ipaddress.ip_network(v) for v in values)


PROXY = _networks("127.0.0.1/32", "10.0.0.0/8")


@pytest.mark.parametrize("remote,forwarded,client", [
    ("127.0.0.1", None, "127.0.0.1"),                                   # Caddy's own request, no header
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),                        # Caddy forwarding a client
    ("127.0.0.1", "1.1.1.1, 203.0.113.7", "203.0.113.7"),               # the left part is the client's to forge
    ("127.0.0.1", "203.0.113.7, 10.1.2.3", "203.0.113.7"),              # through two trusted proxies
    ("127.0.0.1", "10.9.9.9, 10.1.2.3", "10.9.9.9"),                    # only proxies: the left-most
    ("198.51.100.4", "203.0.113.7", "198.51.100.4"),                    # not from a trusted proxy: ignored
    ("127.0.0.1", "garbage, 203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", "203.0.113.7, garbage", "127.0.0.1"),                 # unparsable where the proxy wrote: stop
    ("127.0.0.1", "", "127.0.0.1"),
    ("127.0.0.1", "::ffff:203.0.113.7", "203.0.113.7"),                 # IPv4-mapped IPv6
    ("2001:db8:1:2:3:4:5:6", None, "2001:db8:1:2::/64"),                # IPv6 keyed by its /64
    ("127.0.0.1", "2001:db8:1:2::99", "2001:db8:1:2::/64"),
    ("127.0.0.1", "fe80::1%eth0", "fe80::/64"),
    ("", None, "unknown"),
    ("unix-socket-peer", "203.0.113.7", "unix-socket-peer"),
])
def test_client_ip(remote, forwarded, client):
    meta = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        meta["HTTP_X_FORWARDED_FOR"] = forwarded
    assert ratelimit.client_ip(meta, PROXY) == client


def _rule(**kw):
    return topology.RateLimitRule(**{"name": "r", **kw})


def test_rules_compile_to_matchers_policies_and_keys():
    rules = (_rule(name="signup", endpoints=("POST /api/v*/users",), capacity=5, refill_per_s=0.1),
             _rule(name="writes", per=("user",), endpoints=("POST /api/*", "DELETE /api/*"), capacity=60,
                   refill_per_s=10),
             _rule(name="all", per=(), capacity=100, refill_per_s=0),
             _rule(name="fast", capacity=1000, refill_per_s=3000))
    compiled, needs_route = ratelimit.compile_rules(rules)
    signup, writes, everything, fast = compiled
    assert needs_route
    assert signup.applies("POST /api/v1/users", None) and signup.applies("POST /api/v2/users", None)
    assert not signup.applies("GET /api/v1/users", None) and not signup.applies("POST /api/v1/users/{user_id}", None)
    assert writes.applies("DELETE /api/v1/users/{user_id}/posts/{post_id}", 7)
    assert not writes.applies("DELETE /api/v1/users/{user_id}", None)  # per user: no user, no bucket
    assert not writes.applies("PATCH /api/v1/users/{user_id}", 7)
    assert everything.applies(f"GET {ratelimit.NO_ROUTE}", None)
    assert [r.policy for r in compiled] == ['"signup";q=5;w=50', '"writes";q=60;w=6',
                                            f'"all";q=100;w={ratelimit.FIXED_WINDOW_S}', '"fast";q=1000;w=1']
    assert ratelimit.compile_rules(rules[2:3])[1] is False  # per nothing, every endpoint: no route needed
    # A rule whose numbers change gets fresh buckets; the same rule keeps its keys.
    again = ratelimit.compile_rules((_rule(name="signup", endpoints=("POST /api/v*/users",), capacity=6,
                                           refill_per_s=0.1),))[0][0]
    assert again.key_prefix != signup.key_prefix and again.key_prefix.startswith(ratelimit.PREFIX + "signup:")
    assert ratelimit.compile_rules(rules)[0][0].key_prefix == signup.key_prefix


def test_header_values_are_structured_fields():
    assert ratelimit.sf_string("per-ip") == '"per-ip"'
    assert ratelimit.sf_string('a"b\\c') == '"a\\"b\\\\c"'
    key = ratelimit.partition_key(["203.0.113.7"])
    assert key.startswith(":") and key.endswith(":") and len(key) == 18  # 12 bytes, base64, between colons
    assert key == ratelimit.partition_key(["203.0.113.7"]) != ratelimit.partition_key(["203.0.113.8"])
    assert ratelimit._template("api/v1/users/<id64:user_id>/posts/<id64:post_id>") == \
        "/api/v1/users/{user_id}/posts/{post_id}"
    assert math.ceil(5 / 0.1) == 50


@pytest.mark.parametrize("rate_limit,fields", [
    ({"enabled": "yes"}, {"rate_limit.enabled"}),
    ({"on_error": "maybe"}, {"rate_limit.on_error"}),
    ({"rules": {}}, {"rate_limit.rules"}),
    ({"rules": [5]}, {"rate_limit.rules.0"}),
    ({"rules": [{"per": ["ip"]}]}, {"rate_limit.rules.0.name"}),  # a name is required
    ({"rules": [{"name": "Bad Name"}]}, {"rate_limit.rules.0.name"}),
    ({"rules": [{"name": "a", "per": ["ip", "ip", "mac"]}]}, {"rate_limit.rules.0.per.1", "rate_limit.rules.0.per.2"}),
    ({"rules": [{"name": "a", "endpoints": ["users", "GET /ok", "FETCH /x"]}]},
     {"rate_limit.rules.0.endpoints.0", "rate_limit.rules.0.endpoints.2"}),
    ({"rules": [{"name": "a", "capacity": 0, "refill_per_s": -1}]},
     {"rate_limit.rules.0.capacity", "rate_limit.rules.0.refill_per_s"}),
    ({"rules": [{"name": "a", "capacity": 1.5, "nope": 1}]}, {"rate_limit.rules.0.capacity", "rate_limit.rules.0.nope"}),
    ({"rules": [{"name": "a"}, {"name": "a"}]}, {"rate_limit.rules.1.name"}),
    ({"rules": [{"name": f"r{i}"} for i in range(17)]}, {"rate_limit.rules"}),
])
def test_invalid_rate_limit_settings_name_each_field(rate_limit, fields):
    with pytest.raises(topology.TopologyError) as refused:
        topology.parse({"rate_limit": rate_limit})
    assert {name for name, _ in refused.value.errors} == fields


def test_invalid_rules_through_the_admin_api_are_problem_json_naming_the_field(topology_admin):
    before = topology_admin.data()
    response = topology_admin.patch({"rate_limit": {"rules": [{"name": "ok", "capacity": -1}]}})
    assert_problem(response, 400, "rate_limit.rules.0.capacity")
    error = response.json()["errors"][0]
    assert error["pointer"] == "#/rate_limit/rules/0/capacity"
    assert topology_admin.data()["version"] == before["version"]


def test_the_schema_documents_the_rate_limit_headers_and_answers():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert set(schema["components"]["headers"]) >= {"RateLimit", "RateLimit-Policy", "X-RateLimit-Status", "Retry-After"}
    assert ratelimit.DRAFT in schema["components"]["headers"]["RateLimit"]["description"]
    responses = schema["paths"]["/api/v1/users"]["post"]["responses"]
    assert set(responses["201"]["headers"]) >= {"RateLimit", "RateLimit-Policy", "X-RateLimit-Status"}
    assert set(responses["429"]["headers"]) >= {"RateLimit", "RateLimit-Policy", "X-RateLimit-Status", "Retry-After"}
    assert responses["429"]["content"]["application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}
    assert "503" in responses
    assert "429" not in schema["paths"]["/api/v1/admin/topology"]["get"]["responses"]  # the admin API is never limited
