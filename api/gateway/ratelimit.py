"""The gateway's rate limiter: token buckets in the `state` Valkey, set live by the topology's
`rate_limit` group (workbench/topology.py: RateLimit, RateLimitRule).

The bucket. A rule gives each partition of the traffic (a client IP, a user, an endpoint, or a mix)
a bucket of up to `capacity` tokens that gains `refill_per_s` tokens a second; each request takes
one. A burst up to the capacity passes at once, and the sustained rate is the refill rate. A rule
with `refill_per_s` 0 never refills: its bucket is a fixed quota of `capacity` requests for
FIXED_WINDOW_S from its first request, then the key expires and the quota starts again.

One round trip, atomically, on Valkey's clock. Every rule a request matches is checked by one Lua
script (_SCRIPT) in one EVALSHA: it reads each bucket, refills it for the time since its last
update, and takes a token from every bucket only if every bucket has one. So rules combine (per IP
and per user and per endpoint at once), a refused request takes no token from the other buckets,
and two app servers racing for the last token cannot both get it: Valkey runs one script at a time.
The time comes from `redis.call('TIME')` inside the script, never from the app server's clock: the
app servers (and, in a real deployment, their machines) do not share a clock, and a bucket refilled
by one server's clock and drained by another's would gain or lose tokens by their skew. One clock,
the one next to the data, makes refill exact.

Headers (draft-ietf-httpapi-ratelimit-headers-09, the IETF HTTPAPI working group's draft of March
2025), on every response of a request that matched at least one rule:
- `RateLimit-Policy`: each matching rule as `"name";q=<capacity>;w=<window>`, the window being the
  seconds an empty bucket takes to fill (capacity / refill, rounded up), or FIXED_WINDOW_S for a
  rule that never refills. It stays the same from response to response, as the draft asks.
- `RateLimit`: each matching rule's bucket as `"name";r=<whole tokens left>;t=<seconds>;pk=:...:`.
  `t` is the seconds until the bucket is full again; on a 429, for a rule that refused, the seconds
  until it has a token again, the same moment as `Retry-After` (draft section 6). `pk`, the
  partition key, is the first 12 bytes of SHA-256 of the rule's `per` values joined by `|` (e.g.
  `203.0.113.7`, or `42|POST /api/v1/users/{user_id}/posts`): a client can compute it, and it
  shows which bucket a response was counted in without echoing the values.
- A 429 adds `Retry-After` (whole seconds, rounded up) and a problem+json body of the draft's type
  `https://iana.org/assignments/http-problem-types#quota-exceeded`, naming the rules that refused
  in `violated-policies`.
- `X-RateLimit-Status`: `allowed`, `limited`, or, while the state Valkey cannot answer,
  `fail-open` (the request went through unchecked) or `fail-closed` (503 problem+json with
  Retry-After), as the topology's `rate_limit.on_error` says. Never a 500: after a failure the
  limiter skips Valkey for BREAKER_S (a circuit breaker), so an outage costs each request nothing.

What is limited: requests under /api/ except the admin endpoints (the operator must always be able
to change the topology, including switching the limiter off; they need the admin token anyway).

The client IP (client_ip): REMOTE_ADDR, the peer of the TCP connection, unless that peer is a
trusted proxy (settings.TRUSTED_PROXIES, WORKBENCH_TRUSTED_PROXIES; by default 127.0.0.1, the
address Caddy connects to the app servers from). Only then is `X-Forwarded-For` read, from the
right: each proxy appends the address it got the request from, so the right-most entry that is
not a trusted proxy is the client; anything left of it was written by the client and may be
forged. A spoofed header sent straight to an app server, from anywhere but a trusted proxy, is
ignored. An IPv6 client is keyed by its /64, the block one host is usually given.

The gateway runs inside each app server here (api/gateway/middleware.py), like the rest of the
gateway: one fewer network hop, and the buckets are shared in Valkey anyway. It becomes its own
tier (an API gateway or the edge proxy limiting) when many services need the same limits, or when
abusive traffic must be dropped before it costs an app server anything.
"""
from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import ipaddress
import logging
import math
import re
import threading
import time
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.http import HttpResponse
from django.urls import Resolver404, resolve
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.counters import Counters
from workbench import topology

from .problems import problem, problem_response

log = logging.getLogger(__name__)

DRAFT = "draft-ietf-httpapi-ratelimit-headers-09"
PREFIX = "workbench:rl:"                 # one string per bucket: its tokens and the Valkey TIME of the last take
COUNTS_KEY = "workbench:rl:counts"       # allowed, limited, fail_open, fail_closed, limited_by:<rule>
FIXED_WINDOW_S = 3600                    # the life of a bucket that never refills (refill_per_s 0)
BREAKER_S = 1.0                          # after a failure, Valkey is skipped this long
TIMEOUT_S = 0.25                         # a healthy Valkey answers in well under 1 ms
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
LIMITED_PATH = re.compile(r"^/api/(?!v[0-9]+/admin/)")
NO_ROUTE = "(no route)"                  # the endpoint of a path no route matches

COUNTERS = Counters(COUNTS_KEY)

# KEYS: one bucket per matching rule, each a string "<tokens> <seconds> <microseconds>": its level
# and the Valkey TIME it was last taken from. ARGV: capacity and refill per second of each bucket in
# turn, then FIXED_WINDOW_S in ms. Returns {1 if allowed else 0, then per bucket: whole tokens left,
# ms until full, ms until it has a token (0 when it has one)}. A refused request writes nothing.
# Few calls on purpose (each costs the server a command dispatch): TIME, one MGET, one SET per bucket.
_SCRIPT = """
local now = redis.call('TIME')
local s, us = tonumber(now[1]), tonumber(now[2])
local fixed_ms = tonumber(ARGV[#ARGV])
local cap_ms = 1e12  -- about 30 years: a tiny refill rate must not overflow the integer reply
local stored = redis.call('MGET', unpack(KEYS))
local level, fresh, ok = {}, {}, 1
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local t, ls, lus
  if stored[i] then t, ls, lus = string.match(stored[i], '^(%S+) (%d+) (%d+)$') end
  t = tonumber(t)
  if t == nil then
    t = cap
    fresh[i] = true
  elseif rate > 0 then
    local elapsed = (s - tonumber(ls)) + (us - tonumber(lus)) / 1000000
    if elapsed > 0 then t = math.min(cap, t + elapsed * rate) end
  end
  level[i] = t
  if t < 1 then ok = 0 end
end
local out = {ok}
for i = 1, #KEYS do
  local cap, rate = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local t, full, wait = level[i], 0, 0
  if ok == 1 then t = t - 1 end
  local value = string.format('%.17g %s %s', t, now[1], now[2])
  if rate > 0 then
    full = math.min(math.ceil((cap - t) / rate * 1000), cap_ms)
    if t < 1 then wait = math.min(math.ceil((1 - t) / rate * 1000), cap_ms) end
    if ok == 1 then redis.call('SET', KEYS[i], value, 'PX', full + 1000) end
  else
    if fresh[i] then
      full = fixed_ms
      if ok == 1 then redis.call('SET', KEYS[i], value, 'PX', fixed_ms) end
    else
      if ok == 1 then redis.call('SET', KEYS[i], value, 'KEEPTTL') end
      full = redis.call('PTTL', KEYS[i])
      if full < 0 then full = fixed_ms end
    end
    if t < 1 then wait = full end
  end
  out[#out + 1] = math.floor(t)
  out[#out + 1] = full
  out[#out + 1] = wait
end
return out
"""


# --- rules ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """A topology rule made ready for requests: its endpoint patterns as one regex, its buckets'
    key prefix, its RateLimit-Policy item."""
    name: str
    per: tuple
    capacity: int
    refill_per_s: float
    matches: re.Pattern | None  # None: every limited request
    key_prefix: str
    policy: str

    def applies(self, endpoint: str, user) -> bool:
        return (self.matches is None or self.matches.match(endpoint) is not None) and \
            ("user" not in self.per or user is not None)


@functools.lru_cache(maxsize=8)
def compile_rules(rules: tuple) -> tuple[tuple[Rule, ...], bool]:
    """The topology's rules (RateLimitRule), and whether any needs the request's route."""
    out = []
    for r in rules:
        matches = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in r.endpoints)) if r.endpoints else None
        # A changed rule starts with fresh buckets: its numbers are part of the key.
        shape = repr((r.per, r.endpoints, r.capacity, float(r.refill_per_s))).encode()
        key_prefix = f"{PREFIX}{r.name}:{hashlib.sha1(shape).hexdigest()[:8]}:"
        window = math.ceil(r.capacity / r.refill_per_s) if r.refill_per_s > 0 else FIXED_WINDOW_S
        policy = f"{sf_string(r.name)};q={r.capacity};w={max(window, 1)}"
        out.append(Rule(r.name, tuple(r.per), r.capacity, float(r.refill_per_s), matches, key_prefix, policy))
    needs_route = any(r.endpoints or "user" in r.per or "endpoint" in r.per for r in rules)
    return tuple(out), needs_route


def sf_string(value: str) -> str:
    """A structured-field String (RFC 8941 section 3.3.3)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def partition_key(values: list[str]) -> str:
    """The `pk` parameter: a Byte Sequence of the first 12 bytes of SHA-256 of the partition."""
    digest = hashlib.sha256("|".join(values).encode()).digest()[:12]
    return ":" + base64.b64encode(digest).decode() + ":"


# --- who is asking, and for what -----------------------------------------------------------------
_ROUTE_PARAM = re.compile(r"<(?:\w+:)?(\w+)>")


@functools.lru_cache(maxsize=256)
def _template(route: str) -> str:
    """Django's `api/v1/users/<id64:user_id>/posts` as `/api/v1/users/{user_id}/posts`."""
    return "/" + _ROUTE_PARAM.sub(r"{\1}", route)


def endpoint_of(request) -> tuple[str, dict]:
    """`METHOD /route/template` and the route's parameters; `METHOD (no route)` when none matches."""
    try:
        match = resolve(request.path_info)
    except Resolver404:
        return f"{request.method} {NO_ROUTE}", {}
    return f"{request.method} {_template(match.route)}", match.kwargs


def acting_user(request):
    """The user a request acts as: the verified token's (api/gateway/auth.py runs first), on reads
    and writes alike; None when anonymous or the operator. Not the path's user: a member writing
    to another member's path is refused by RBAC, and must not spend that member's tokens."""
    principal = getattr(request, "principal", None)
    return None if principal is None else principal.user_id


def _address(text: str):
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _trusted(address, proxies) -> bool:
    return any(address in network for network in proxies)


def from_trusted_proxy(meta: dict, proxies=None) -> bool:
    """Whether the TCP peer is a trusted proxy: only then are the headers it adds (X-Forwarded-For,
    the load shedder's X-Request-Start) believed."""
    address = _address(meta.get("REMOTE_ADDR") or "")
    return address is not None and _trusted(address, settings.TRUSTED_PROXIES if proxies is None else proxies)


def client_ip(meta: dict, proxies=None) -> str:
    """The client's address: REMOTE_ADDR, or, when that is a trusted proxy, the right-most address
    in X-Forwarded-For that is not one (an unparsable entry stops the walk: the hop to its right,
    which a trusted proxy wrote, is used). IPv6 addresses are keyed by their /64."""
    proxies = settings.TRUSTED_PROXIES if proxies is None else proxies
    remote = meta.get("REMOTE_ADDR") or ""
    address = _address(remote)
    if address is None:
        return remote[:64] or "unknown"
    if _trusted(address, proxies):
        for hop in reversed(meta.get("HTTP_X_FORWARDED_FOR", "").split(",")):
            hop = _address(hop)
            if hop is None:
                break
            address = hop
            if not _trusted(hop, proxies):
                break
    if address.version == 6:
        return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))  # any zone (%eth0) dropped
    return str(address)


# --- Valkey --------------------------------------------------------------------------------------
class _Breaker:
    def __init__(self):
        self.until = 0.0
        self.lock = threading.Lock()

    def remaining(self) -> float:
        return max(self.until - time.monotonic(), 0.0)

    def trip(self, exc: Exception) -> None:
        with self.lock:
            if self.remaining() == 0.0:
                log.warning("rate limiter: the state Valkey failed (%s); skipping it for %.1f s", exc, BREAKER_S)
            self.until = time.monotonic() + BREAKER_S


breaker = _Breaker()


@functools.lru_cache(maxsize=1)
def _script():
    """The limiter's own client of the state Valkey: short timeouts and no retries (one failed call
    is one failure, then the breaker), unlike the general client in api.state."""
    client = redis.Redis.from_url(settings.VALKEY_STATE_URL, socket_timeout=TIMEOUT_S,
                                  socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    return client.register_script(_SCRIPT)  # EVALSHA; after a Valkey restart, loaded again once


def take(keys: list[str], rules: list[Rule]) -> list[int]:
    """One EVALSHA: [allowed, then per bucket: tokens left, ms until full, ms until a token]."""
    args = []
    for rule in rules:
        args += [rule.capacity, repr(rule.refill_per_s)]
    return _script()(keys=keys, args=[*args, FIXED_WINDOW_S * 1000])


# --- the check -----------------------------------------------------------------------------------
@dataclass
class Outcome:
    status: str                                   # allowed, limited, fail-open, fail-closed
    headers: dict = field(default_factory=dict)
    refusal: HttpResponse | None = None           # the 429 or 503, when the request may not pass

    def apply(self, response) -> None:
        for name, value in self.headers.items():
            response[name] = value


def check(request) -> Outcome | None:
    """None when the limiter is off or no rule applies to the request; else what it decided."""
    settings_ = topology.current().topology.rate_limit
    if not settings_.enabled or not settings_.rules or not LIMITED_PATH.match(request.path_info):
        return None
    rules, needs_route = compile_rules(settings_.rules)
    endpoint, _ = endpoint_of(request) if needs_route else (f"{request.method} {NO_ROUTE}", {})
    user = acting_user(request)
    values = {"ip": None, "user": None if user is None else str(user), "endpoint": endpoint}
    matched, keys, pks = [], [], []
    for rule in rules:
        if not rule.applies(endpoint, user):
            continue
        parts = []
        for name in rule.per:
            if values[name] is None:  # only the client IP is worked out, and only when a rule needs it
                values[name] = client_ip(request.META)
            parts.append(values[name])
        matched.append(rule)
        keys.append(rule.key_prefix + "|".join(parts))
        pks.append(partition_key(parts))
    if not matched:
        return None
    headers = {"RateLimit-Policy": ", ".join(rule.policy for rule in matched)}
    if breaker.remaining() > 0:
        return _failed(request, settings_.on_error, headers, None)
    try:
        result = take(keys, matched)
    except Exception as exc:  # noqa: BLE001 - any failure of the state Valkey is the fail policy's case, never a 500
        return _failed(request, settings_.on_error, headers, exc)
    allowed = result[0] == 1
    items, waits = [], []
    for i, rule in enumerate(matched):
        left, full_ms, wait_ms = result[1 + 3 * i: 4 + 3 * i]
        if not allowed and wait_ms > 0:
            waits.append((rule.name, wait_ms))
            reset = math.ceil(wait_ms / 1000)
        else:
            reset = math.ceil(full_ms / 1000)
        items.append(f"{sf_string(rule.name)};r={max(int(left), 0)};t={reset};pk={pks[i]}")
    headers["RateLimit"] = ", ".join(items)
    if allowed:
        COUNTERS.count("allowed")
        headers["X-RateLimit-Status"] = "allowed"
        return Outcome("allowed", headers)
    COUNTERS.count("limited")
    for name, _ in waits:
        COUNTERS.count(f"limited_by:{name}")
    retry_after = max(1, math.ceil(max(ms for _, ms in waits) / 1000)) if waits else 1
    headers.update({"Retry-After": str(retry_after), "X-RateLimit-Status": "limited"})
    violated = [name for name, _ in waits]
    body = problem(429, "Too Many Requests",
                   f"Rate limit exceeded ({', '.join(violated)}); retry after {retry_after} s.",
                   **{"violated-policies": violated, "retry_after_s": retry_after})
    body["type"] = QUOTA_EXCEEDED
    return Outcome("limited", headers, problem_response(body, request.request_id, headers))


def _failed(request, policy: str, headers: dict, exc: Exception | None) -> Outcome:
    """The state Valkey did not answer (exc), or failed less than BREAKER_S ago (None)."""
    if exc is not None:
        breaker.trip(exc)
    if policy == "open":
        COUNTERS.count("fail_open")
        headers["X-RateLimit-Status"] = "fail-open"
        return Outcome("fail-open", headers)
    COUNTERS.count("fail_closed")
    retry_after = max(1, math.ceil(breaker.remaining()))
    headers.update({"Retry-After": str(retry_after), "X-RateLimit-Status": "fail-closed"})
    body = problem(503, "Service Unavailable", "The rate limiter cannot reach its store, and the topology says "
                   "to refuse requests meanwhile (rate_limit.on_error = closed); retry shortly.",
                   kind="rate-limiter-unavailable", retry_after_s=retry_after)
    return Outcome("fail-closed", headers, problem_response(body, request.request_id, headers))


def status(client) -> dict:
    """For the admin API and the dashboard: the live settings and rules, and the counters of every
    app server added up (api.counters: up to half a second late)."""
    settings_ = topology.current().topology.rate_limit
    counts = COUNTERS.totals(client)
    rules = []
    for rule, compiled in zip(settings_.rules, compile_rules(settings_.rules)[0]):
        rules.append({"name": rule.name, "per": list(rule.per), "endpoints": list(rule.endpoints),
                      "capacity": rule.capacity, "refill_per_s": rule.refill_per_s, "policy": compiled.policy,
                      "limited": counts.get(f"limited_by:{rule.name}", 0)})
    return {"enabled": settings_.enabled, "on_error": settings_.on_error, "draft": DRAFT,
            "trusted_proxies": [str(n) for n in settings.TRUSTED_PROXIES], "rules": rules,
            "counters": {name: counts.get(name, 0) for name in ("allowed", "limited", "fail_open", "fail_closed")}}
