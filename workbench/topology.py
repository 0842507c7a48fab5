"""The topology: one typed, validated, versioned document holding every toggle (DESIGN.md section 3).

It lives in the `state` Valkey as JSON under one key, next to a small key holding only its version.
Writers replace it by compare-and-set on that version, so concurrent writers never lose an update
or reuse a version. Every process keeps a local copy: `current()` checks the version key at most
once a second and reads the document only when the version changed.

To add a setting, add a field below (or a nested dataclass for a group, like `Emulation`) with
its default and its bounds; validation, merging, the CLI and the API follow from the schema.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from workbench import parameters
from workbench.stack import binaries, config

log = logging.getLogger(__name__)

KEY = "workbench:topology"                 # the document: {"version", "updated_at", "updated_by", "topology"}
VERSION_KEY = "workbench:topology:version"  # its version alone: what workers poll
REFRESH_S = 1.0                            # a worker checks the version at most this often
MAX_DB_NODES = 12                          # (replicas + 1) x shards on this machine
# Where users live. Only `python manage.py reshard` changes these, since it moves the rows too.
PLACEMENT_FIELDS = ("sharding", "shards", "reshard_shards")
# What the controller carries out (processes, server settings, DDL). Until what runs matches the
# topology, each such field is reported as pending, with what runs now.
CONTROLLED_FIELDS = ("shard_groups", "replicas", "replication", "replica_delays_ms", "indexes.post_user_time", "pgbouncer",
                     "app_servers", "cache.state_fsync", "cache_nodes", "lb_policy")
# Recorded but not carried out by any controller code yet (none at the moment; app servers are
# started and drained by workbench/stack/apps.py).
NOT_CARRIED_OUT: set[str] = set()


# --- the schema ----------------------------------------------------------------------------------
def _int(default, low, high):
    return field(default=default, metadata={"kind": "int", "low": low, "high": high})


def _number(default, low, high=None):
    return field(default=default, metadata={"kind": "number", "low": low, "high": high})


def _bool(default):
    return field(default=default, metadata={"kind": "bool"})


def _choice(default, *choices):
    return field(default=default, metadata={"kind": "choice", "choices": choices})


def _group(cls):
    return field(default_factory=cls, metadata={"kind": "group", "cls": cls})


def _date():
    """A moment: RFC 3339 with an offset, or Unix seconds; stored as RFC 3339 in UTC. null: unset."""
    return field(default=None, metadata={"kind": "date"})


def _text(default, pattern: str, hint: str, required: bool = False):
    """A string matching `pattern` in full; `hint` says what that means, for the error message.
    A `required` one has no default in a document: it must be given."""
    return field(default=default, metadata={"kind": "text", "pattern": re.compile(pattern), "hint": hint,
                                            "required": required})


def _strings(default: tuple, pattern: str, hint: str, max_items: int, choices: tuple = ()):
    """A list of distinct strings (stored as a tuple), each matching `pattern` in full or, when
    `choices` is given, each one of them."""
    return field(default=default, metadata={"kind": "strings", "pattern": re.compile(pattern), "hint": hint,
                                            "max_items": max_items, "choices": choices})


def _items(cls, default: tuple, max_items: int):
    """A list of objects of the dataclass `cls` (stored as a tuple), each validated like a group;
    an error names the item by its index: `rate_limit.rules.0.capacity`."""
    return field(default=default, metadata={"kind": "items", "cls": cls, "max_items": max_items})


@functools.lru_cache(maxsize=1)
def _default_app_servers() -> int:
    return min(max(config.load().app_servers, 1), config.MAX_APP_SERVERS)  # what `up` started, within bounds


_EMULATION = parameters.emulation()


@dataclass(frozen=True)
class Emulation:
    """One injection mechanism (DESIGN.md section 5): loopback made to behave like separate machines.
    `enabled` injects a round trip into every data-node query and limits how many queries each node
    runs at once. A replica can also be lagged on purpose (stale reads) or placed in another region."""
    enabled: bool = _bool(False)
    rtt_ms: float = _number(_EMULATION["rtt_ms"], 0, 500)
    node_concurrency: int = _int(_EMULATION["node_concurrency"], 0, 64)  # 0: no limit; a lock file per slot
    stale_replica: int = _int(0, 0, 4)                   # 0: none; else this replica replays late
    apply_delay_ms: float = _number(_EMULATION["stale_apply_delay_ms"], 0, 600_000)
    remote_replica: int = _int(0, 0, 4)                  # 0: none; else this replica is in another region
    region_rtt_ms: float = _number(_EMULATION["region_rtt_ms"], 0, 1000)


@dataclass(frozen=True)
class Indexes:
    """Supporting indexes a lesson may drop and recreate live (query optimization)."""
    post_user_time: bool = _bool(True)  # api_post (user_id, created_at DESC, id DESC)


@dataclass(frozen=True)
class Cache:
    """The caching layers (api/caching), each toggled live: the application cache in the `cache`
    Valkey (`mode`, TTLs per resource, single-flight), the per-process L1 in front of it, and the
    database query cache beneath the views. Write-behind's queue lives in the `state` Valkey, whose
    persistence is set here too, because that is what decides what a crash of it loses."""
    mode: str = _choice("off", "off", "cache-aside", "write-through", "write-behind")
    user_ttl_s: int = _int(60, 1, 86_400)   # GET /users/{id}
    posts_ttl_s: int = _int(30, 1, 86_400)  # GET /users/{id}/posts: every page and time range
    # Stampede protection: the first miss of a key takes a short lock and reads the database; other
    # misses of that key wait (bounded) for its fill instead of sending the same query (api/caching/reads).
    single_flight: bool = _bool(True)
    # `events`: every write invalidates what it changed, on every app server (api/caching/writes.py).
    # `ttl`: writes touch no cache entry; an entry is stale until it expires (TTL-only invalidation,
    # kept so the stale-read probe can show what events buy). Only with cache-aside.
    invalidation: str = _choice("events", "events", "ttl")
    # The per-process LRU in front of the Valkey cache (api/caching/local.py): entries live
    # l1_ttl_ms at most and are dropped on every app server by a pub/sub invalidation message.
    l1: bool = _bool(False)
    l1_ttl_ms: int = _int(2000, 1, 60_000)
    l1_entries: int = _int(2000, 1, 100_000)
    # The database query cache (api/caching/querycache.py): result rows of the selectors' queries,
    # per shard, invalidated on writes; its own TTL, independent of `mode`.
    query_cache: bool = _bool(False)
    query_ttl_s: int = _int(30, 1, 86_400)
    # The `state` Valkey's persistence, which write-behind's queue depends on: `everysec` (an append-
    # only file fsynced every second), `always` (fsynced before each reply), `off` (memory only).
    state_fsync: str = _choice("everysec", "everysec", "always", "off")


# A rule's name is its policy's name in the RateLimit headers (a structured-field string), and part
# of its buckets' keys; an endpoint pattern is `METHOD /path` matched against `GET /api/v1/users/{user_id}`
# (api/gateway/ratelimit.py), with `*` matching any run of characters (`/` included).
RULE_NAME = r"[a-z0-9][a-z0-9._-]{0,31}"
ENDPOINT = r"(\*|GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /[A-Za-z0-9._~{}/*-]{0,200}"
RATE_LIMIT_KEYS = ("ip", "user", "endpoint")


@dataclass(frozen=True)
class RateLimitRule:
    """One token bucket per partition: a request that matches `endpoints` (none: every API request)
    takes one token from the bucket of its `per` values, e.g. its client IP, or its user and
    endpoint; an empty `per` is one bucket shared by every matching request. A bucket holds up to
    `capacity` tokens and gains `refill_per_s` a second. With 0, it never refills: the bucket is a
    fixed quota of `capacity` for an hour from its first request (ratelimit.FIXED_WINDOW_S)."""
    name: str = _text("", RULE_NAME, "1 to 32 of a-z 0-9 . _ -, starting with a letter or digit", required=True)
    per: tuple = _strings(("ip",), "|".join(RATE_LIMIT_KEYS), "ip, user or endpoint", 3, RATE_LIMIT_KEYS)
    endpoints: tuple = _strings((), ENDPOINT, "`METHOD /path` (METHOD or *; * in the path matches anything), "
                                "e.g. `POST /api/v1/users`", 16)
    capacity: int = _int(60, 1, 1_000_000_000)
    refill_per_s: float = _number(1.0, 0, 1_000_000)


@dataclass(frozen=True)
class RateLimit:
    """The gateway's rate limiter (api/gateway/ratelimit.py): token buckets in the `state` Valkey.
    Every rule a request matches is checked in one atomic script; the request passes only if every
    bucket has a token, and a refused request takes none. `on_error`: what happens while the state
    Valkey cannot answer: `open` lets requests through, `closed` refuses them (503); a response
    header says which. Off by default; the default rules apply once it is switched on."""
    enabled: bool = _bool(False)
    on_error: str = _choice("open", "open", "closed")
    rules: tuple = _items(RateLimitRule, (
        # Sign-up is anonymous: per client IP, a burst of 5, then one every 10 s.
        RateLimitRule(name="signup-per-ip", per=("ip",), endpoints=("POST /api/v*/users",), capacity=5,
                      refill_per_s=0.1),
        # Writes per acting user (until authentication exists: the user in the write's path).
        RateLimitRule(name="writes-per-user", per=("user",),
                      endpoints=("POST /api/*", "PUT /api/*", "PATCH /api/*", "DELETE /api/*"), capacity=60,
                      refill_per_s=10.0),
        # Everything per client IP, generous: a runaway client, not a busy one.
        RateLimitRule(name="per-ip", per=("ip",), endpoints=(), capacity=1000, refill_per_s=500.0),
    ), 16)


@dataclass(frozen=True)
class Versioning:
    """The API's versions (api/versioning.py). With `v1_deprecation` set, every v1 response of a
    route that v2 also serves carries `Deprecation: @<Unix seconds>` (RFC 9745; a future date
    announces it) and a Link to its v2 twin (rel="successor-version") and to the docs
    (rel="deprecation"); with `v1_sunset` also `Sunset: <HTTP-date>` (RFC 8594). v1 still answers
    after its sunset: the headers inform, they do not switch anything off."""
    v1_deprecation: str | None = _date()
    v1_sunset: str | None = _date()


@dataclass(frozen=True)
class Shedding:
    """Load shedding (api/gateway/shedding.py): a request that waited longer than `queue_budget_ms`
    between Caddy's arrival stamp and a worker picking it up is answered at once with 503 and
    `Retry-After: retry_after_s`, unprocessed. Off by default."""
    enabled: bool = _bool(False)
    queue_budget_ms: int = _int(50, 1, 60_000)
    retry_after_s: int = _int(1, 1, 3600)


@dataclass(frozen=True)
class Autoscale:
    """The controller's autoscaler (workbench/stack/autoscale.py): every second it samples each
    app server's requests in flight (Caddy's), CPU (percent of one core) and memory (RSS, percent
    of the machine's); over a few seconds' mean, any signal above its target scales out, all far
    enough below scale in one server at a time (hysteresis), with `cooldown_s` between changes. It
    writes `app_servers`, so a change goes the same way as a manual one (drained on the way in).
    A target of 0 switches that signal off. During `peak_hours` (UTC, `HH-HH`, e.g. `09-17`; may
    wrap past midnight; empty: none) it keeps at least `peak_min` servers."""
    enabled: bool = _bool(False)
    min: int = _int(1, 1, config.MAX_APP_SERVERS)
    max: int = _int(4, 1, config.MAX_APP_SERVERS)
    cooldown_s: int = _int(30, 0, 3600)
    in_flight: float = _number(6, 0, 1000)   # per server; 2 workers x 4 threads serve 8 at once
    cpu_pct: float = _number(80, 0, 1600)    # per server, percent of one core
    memory_pct: float = _number(0, 0, 100)   # per server, percent of the machine's memory
    peak_hours: str = _text("", r"|([01][0-9]|2[0-3])-([01][0-9]|2[0-4])", "empty or HH-HH in UTC, e.g. 09-17")
    peak_min: int = _int(2, 1, config.MAX_APP_SERVERS)


@dataclass(frozen=True)
class Failover:
    """What the controller does when a shard's primary stays down (workbench/stack/failover.py).
    Off: a human runs `manage.py chaos failover`. On: once the primary has been down `grace_s`
    (a crash the supervisor restarts from is usually back within two seconds), the controller
    fences it and promotes the most advanced replica. A short grace turns restarts into failovers."""
    auto: bool = _bool(False)
    grace_s: float = _number(5, 0.5, 300)


@dataclass(frozen=True)
class Auth:
    """Who may call what (api/gateway/auth.py, rbac.py). Writes always need a token, except sign-up
    and the token endpoints; reads need one only when `anonymous_reads` is off."""
    anonymous_reads: bool = _bool(True)


_TRACING = parameters.tracing()


@dataclass(frozen=True)
class Observability:
    """What the app servers record about each request (issue 11), switched off for the overhead
    benchmark's "off" arm. `metrics`: the Prometheus series at /metrics (api/metrics.py); off, no
    request, query or counter is recorded (the series keep their values). `trace_sample_rate`: the
    share of requests traced (api/tracing.py), decided when a request arrives (head sampling);
    0 traces only requests that ask (`X-Workbench-Trace: 1`, or a sampled `traceparent`). The
    default is committed in workbench/parameters.toml with its reasons. `trace_store`: how many of
    the latest traces the `state` Valkey keeps for GET /api/v1/admin/traces and the dashboard."""
    metrics: bool = _bool(True)
    trace_sample_rate: float = _number(_TRACING["sample_rate"], 0, 1)
    trace_store: int = _int(_TRACING["store"], 1, 5000)


@dataclass(frozen=True)
class Topology:
    replicas: int = _int(0, 0, 4)
    read_policy: str = _choice("round_robin", "round_robin", "random", "least_lag")
    max_lag_ms: float = _number(1000, 0)           # a replica further behind is skipped
    read_your_writes_s: float = _number(0, 0, 600)  # 0: off
    # async: commit returns before any replica has the WAL; remote_write / remote_apply: it waits
    # until one replica has written (or applied) it (synchronous_standby_names = ANY 1).
    replication: str = _choice("async", "async", "remote_write", "remote_apply")
    pool: bool = _bool(True)                         # pooled connections, or one per request
    pool_max: int = _int(8, 1, 64)                   # per node and app worker; pools keep min_size 0
    # Route data-primary connections through a PgBouncer the controller runs (an external pooler:
    # the app opens a connection per request to it, and it keeps the server connections).
    pgbouncer: bool = _bool(False)
    app_servers: int = field(default_factory=_default_app_servers,
                             metadata={"kind": "int", "low": 1, "high": config.MAX_APP_SERVERS})
    # Users are placed on a shard by their id (api/routing/shards.py); each shard is a PostgreSQL
    # primary of its own, with `replicas` replicas. Changed only by `reshard`, which moves the rows.
    sharding: str = _choice("hash", "hash", "consistent", "modulo", "range", "directory")
    shards: int = _int(1, 1, 8)
    # While a reshard runs: the shard count it moves to (0: none). The controller runs
    # max(shards, reshard_shards) shard groups meanwhile.
    reshard_shards: int = _int(0, 0, 8)
    indexes: Indexes = _group(Indexes)
    emulation: Emulation = _group(Emulation)
    cache: Cache = _group(Cache)
    # The `cache` role's nodes: 1, the single `valkey-cache`; 3 or 6, a Valkey Cluster of that many
    # masters the controller runs (workbench/stack/cachecluster.py), used through a cluster-aware
    # client (api/caching/valkey.py).
    cache_nodes: int = _choice(1, 1, 3, 6)
    # How Caddy picks an app server (workbench/stack/caddy.py), switched live through its admin API:
    # round_robin in turn; least_conn the one with the fewest requests in flight; header hashes the
    # value of the request header `lb_header`, uri the request URI, so one value keeps one server.
    lb_policy: str = _choice("round_robin", "round_robin", "least_conn", "header", "uri")
    lb_header: str = _text("X-User-Id", r"[A-Za-z0-9-]{1,64}", "an HTTP header name: 1 to 64 of A-Z a-z 0-9 -")
    # The NoSQL read model (api/readmodel.py): a profile document per user (the user and their latest
    # posts) in the `state` Valkey, kept up to date from a transactional outbox by the `relay`
    # process; it serves GET /users/{id}?view=profile. Off: that view is built from SQL.
    read_model: bool = _bool(False)
    # The gateway's rate limiter and its rules (off by default).
    rate_limit: RateLimit = _group(RateLimit)
    # v1's Deprecation and Sunset headers (off by default).
    versioning: Versioning = _group(Versioning)
    # Load shedding on queue time (off by default).
    shedding: Shedding = _group(Shedding)
    # Authentication: whether reads may be anonymous.
    auth: Auth = _group(Auth)
    # The autoscaler of app servers (off by default): it writes `app_servers` while on.
    autoscale: Autoscale = _group(Autoscale)
    # Metrics on or off, the trace sampling rate and the trace store's size.
    observability: Observability = _group(Observability)
    # Automatic primary failover and its grace period.
    failover: Failover = _group(Failover)

    @property
    def shard_groups(self) -> int:
        """How many shards run: during a reshard, the old ones and the new ones."""
        return max(self.shards, self.reshard_shards)

    def to_dict(self) -> dict:
        return _lists(dataclasses.asdict(self))

    def replica_delays_ms(self) -> dict[str, int]:
        """recovery_min_apply_delay per running replica, in whole ms as PostgreSQL keeps it: the
        stale one lags on purpose, the remote one by a one-way trip. Replica i of every shard
        gets the same delay."""
        from api.routing.shards import replica_alias
        delays = {}
        for i in range(1, self.replicas + 1):
            delay = 0.0
            if i == self.emulation.stale_replica:
                delay = max(delay, self.emulation.apply_delay_ms)
            if i == self.emulation.remote_replica:
                delay = max(delay, self.emulation.region_rtt_ms / 2)
            for shard in range(1, self.shard_groups + 1):
                delays[replica_alias(shard, i)] = round(delay)
        return delays

    def controlled(self) -> dict:
        """The values of CONTROLLED_FIELDS, as the controller reports what runs."""
        return {"shard_groups": self.shard_groups, "replicas": self.replicas, "replication": self.replication,
                "replica_delays_ms": self.replica_delays_ms(),
                "indexes.post_user_time": self.indexes.post_user_time, "pgbouncer": self.pgbouncer,
                "app_servers": self.app_servers, "cache.state_fsync": self.cache.state_fsync,
                "cache_nodes": self.cache_nodes, "lb_policy": self.lb()}

    def lb(self) -> str:
        """The load-balancing policy as the controller reports what Caddy runs: `header:X-User-Id`
        for the header policy (its header is part of it), else the policy's name."""
        return f"header:{self.lb_header}" if self.lb_policy == "header" else self.lb_policy


class TopologyError(ValueError):
    """Every field at fault at once: a list of (dotted field name, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{name}: {message}" for name, message in errors))
        self.errors = errors


def _show(value) -> str:
    """A value as the user wrote it (JSON), kept short for a message."""
    return json.dumps(value, default=str)[:80]


def _check(meta: dict, value, name: str, errors: list):
    """One leaf value against its field's kind and bounds; returns the value to store."""
    kind = meta["kind"]
    if kind == "date":
        return _moment(value, name, errors)
    if kind == "text":
        if not isinstance(value, str) or not meta["pattern"].fullmatch(value):
            errors.append((name, f"must be {meta['hint']}, not {_show(value)}"))
        return value
    if kind == "strings":
        return _check_strings(meta, value, name, errors)
    if kind == "bool":
        if not isinstance(value, bool):
            errors.append((name, f"must be true or false, not {_show(value)}"))
        return value
    if kind == "choice":
        # Of the same type too: `true` is not the choice 1, nor 3.0 the choice 3.
        if not any(value == c and type(value) is type(c) for c in meta["choices"]):
            errors.append((name, f"must be one of {', '.join(map(str, meta['choices']))}, not {_show(value)}"))
        return value
    # bool is an int in Python, but `true` is not a number in a topology.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or (isinstance(value, float) and not math.isfinite(value)):
        errors.append((name, f"must be a number, not {_show(value)}"))
        return value
    if kind == "int":
        if value != int(value):
            errors.append((name, f"must be a whole number, not {_show(value)}"))
            return value
        value = int(value)
    low, high = meta["low"], meta["high"]
    if high is None and value < low:
        errors.append((name, f"must be at least {low}, not {value}"))
    elif high is not None and not low <= value <= high:
        errors.append((name, f"must be between {low} and {high}, not {value}"))
    return value


def _check_strings(meta: dict, value, name: str, errors: list) -> tuple:
    if not isinstance(value, list) or len(value) > meta["max_items"]:
        errors.append((name, f"must be a list of at most {meta['max_items']} strings, not {_show(value)}"))
        return ()
    for index, item in enumerate(value):
        if not isinstance(item, str) or not (item in meta["choices"] if meta["choices"]
                                             else meta["pattern"].fullmatch(item)):
            errors.append((f"{name}.{index}", f"must be {meta['hint']}, not {_show(item)}"))
        elif value.index(item) != index:
            errors.append((f"{name}.{index}", f"{_show(item)} is listed twice"))
    return tuple(value)


def _build_items(meta: dict, value, name: str, errors: list) -> tuple:
    if not isinstance(value, list) or len(value) > meta["max_items"]:
        errors.append((name, f"must be a list of at most {meta['max_items']} objects, not {_show(value)}"))
        return ()
    return tuple(_build(meta["cls"], item, f"{name}.{index}.", errors) for index, item in enumerate(value))


def _lists(value):
    """asdict() keeps tuples; the document's JSON form, and what the API answers, has lists."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _moment(value, name: str, errors: list):
    """A date field's value, normalized to RFC 3339 in UTC, whole seconds (what the headers carry)."""
    if value is None:
        return None
    moment = None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 253402300800:
        moment = datetime.fromtimestamp(value, timezone.utc)
    elif isinstance(value, str) and len(value) <= 40:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
    try:
        if moment is not None and moment.tzinfo is not None:
            moment = moment.astimezone(timezone.utc)
            if moment.year >= 1970:
                return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    except OverflowError:  # past year 9999 once in UTC
        pass
    errors.append((name, f"must be a date-time with an offset (like 2026-12-31T00:00:00Z), Unix seconds, "
                         f"or null; not {_show(value)}"))
    return value


def _build(cls, data, prefix: str, errors: list):
    if not isinstance(data, dict):
        errors.append((prefix.rstrip(".") or "(body)", f"must be an object, not {_show(data)}"))
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            errors.append((f"{prefix}{key}", f"unknown field; known: {', '.join(fields)}"))
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.metadata.get("required"):
                errors.append((f"{prefix}{name}", "required"))
            continue  # the default
        if f.metadata["kind"] == "group":
            values[name] = _build(f.metadata["cls"], data[name], f"{prefix}{name}.", errors)
        elif f.metadata["kind"] == "items":
            values[name] = _build_items(f.metadata, data[name], f"{prefix}{name}", errors)
        else:
            values[name] = _check(f.metadata, data[name], f"{prefix}{name}", errors)
    return None if errors else cls(**values)


def node_cap_error(replicas, shards) -> str | None:
    """This machine runs at most MAX_DB_NODES PostgreSQL data nodes."""
    nodes = (replicas + 1) * shards
    if nodes > MAX_DB_NODES:
        return (f"(replicas + 1) x shards = ({replicas} + 1) x {shards} = {nodes} database nodes; "
                f"the cap on this machine is {MAX_DB_NODES}")
    return None


def known_fields(data, cls=None):
    """`data` without the fields this code does not know. A stored document may come from newer
    code (a field added while an older controller or worker still runs): the reader keeps working
    with what it knows instead of failing on every read. Writes stay strict (parse); a change
    written by older code carries only the fields it knows, so newer fields go back to defaults."""
    cls = cls or Topology
    if not isinstance(data, dict):
        return data
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        log.warning("topology: ignoring fields this code does not know: %s", ", ".join(unknown))
    out = {}
    for name, value in data.items():
        if name not in fields:
            continue
        kind = fields[name].metadata["kind"]
        if kind == "group":
            value = known_fields(value, fields[name].metadata["cls"])
        elif kind == "items" and isinstance(value, list):
            value = [known_fields(item, fields[name].metadata["cls"]) for item in value]
        out[name] = value
    return out


def parse(data: dict, *, check_machine: bool = True) -> Topology:
    """A complete topology from `data`; absent fields take their defaults. Raises TopologyError.
    `check_machine` also checks what this machine must have (a PgBouncer binary); a stored
    document was checked when it was written, and reading it back must not fail if that changed,
    or no change (not even switching the field off) could be made any more."""
    errors: list[tuple[str, str]] = []
    topology = _build(Topology, data, "", errors)
    # The cap is checked even when replicas is out of its own range: both messages help.
    raw = data if isinstance(data, dict) else {}
    replicas = raw.get("replicas", 0)
    groups = [raw.get(name, 1) for name in ("shards", "reshard_shards")]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in [replicas, *groups]):
        message = node_cap_error(replicas, max(groups))
        if message:
            errors.append(("replicas", message))
    if topology is not None:
        errors += _cross_checks(topology)
        if check_machine:
            errors += _machine_checks(topology)
    if errors:
        raise TopologyError(errors)
    return topology


def _cross_checks(t: Topology) -> list[tuple[str, str]]:
    errors = []
    if t.replication != "async" and t.replicas == 0:
        # With no standby to confirm, every commit would wait forever.
        errors.append(("replication", f"{t.replication} needs at least one replica; replicas is 0"))
    for name in ("stale_replica", "remote_replica"):
        index = getattr(t.emulation, name)
        if index > t.replicas:
            errors.append((f"emulation.{name}", f"replica-{index} does not exist with replicas={t.replicas}"))
    deprecation, sunset = t.versioning.v1_deprecation, t.versioning.v1_sunset
    if sunset is not None and (deprecation is None or sunset < deprecation):  # both RFC 3339 in UTC
        # RFC 9745 forbids a Sunset earlier than the Deprecation; a sunset with no deprecation at
        # all is allowed by RFC 8594 alone, but here v1 is announced as deprecated before it sets.
        errors.append(("versioning.v1_sunset", f"must not be earlier than versioning.v1_deprecation "
                                               f"({deprecation or 'null: v1 is not deprecated'}); "
                                               "deprecate v1 before (or when) you set its sunset"))
    if t.cache.invalidation == "ttl" and t.cache.mode not in ("off", "cache-aside"):
        errors.append(("cache.invalidation", f"ttl-only invalidation goes with cache-aside; {t.cache.mode} "
                                             "writes the cache on every write by definition"))
    scaler = t.autoscale
    if scaler.min > scaler.max:
        errors.append(("autoscale.min", f"must not exceed autoscale.max ({scaler.max}), not {scaler.min}"))
    if scaler.peak_hours and scaler.peak_min > scaler.max:
        errors.append(("autoscale.peak_min", f"must not exceed autoscale.max ({scaler.max}), not {scaler.peak_min}"))
    if scaler.peak_hours and scaler.peak_hours[:2] == scaler.peak_hours[3:]:
        errors.append(("autoscale.peak_hours", f"starts and ends at the same hour: {_show(scaler.peak_hours)}"))
    names = [rule.name for rule in t.rate_limit.rules]
    for index, name in enumerate(names):
        if names.index(name) != index:  # a name is a policy in the headers and the key of its buckets
            errors.append((f"rate_limit.rules.{index}.name", f"{_show(name)} is the name of rule {names.index(name)} "
                                                            "already; each rule needs its own"))
    return errors


def _machine_checks(t: Topology) -> list[tuple[str, str]]:
    """What this machine must have; the app servers and the controller run here, so it is checked here."""
    errors = []
    if t.pgbouncer:
        try:
            binaries.pgbouncer_bin()
        except binaries.BinaryNotFound as exc:
            errors.append(("pgbouncer", f"needs PgBouncer on this machine: {exc}"))
    return errors


def merge(base: dict, patch: dict) -> dict:
    """PATCH semantics: nested objects merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def pending(topology: Topology, running: dict | None) -> list[dict]:
    """The controlled fields whose running value differs from the topology. `running` is what the
    controller last reported (api.routing.nodes); None means no controller has reported."""
    wanted = topology.controlled()
    running = running or {}
    return [{"field": name, "wanted": wanted[name], "running": running.get(name)}
            for name in CONTROLLED_FIELDS if running.get(name) != wanted[name]]


def still_applying(pending_changes: list[dict]) -> list[dict]:
    """The pending changes the controller is still working on (not those nobody carries out)."""
    return [p for p in pending_changes if p["field"] not in NOT_CARRIED_OUT]


# --- the stored document -------------------------------------------------------------------------
@dataclass(frozen=True)
class Document:
    topology: Topology
    version: int = 0
    updated_at: str | None = None
    updated_by: str | None = None

    def stored(self) -> dict:
        return {"version": self.version, "updated_at": self.updated_at, "updated_by": self.updated_by,
                "topology": self.topology.to_dict()}

    def to_dict(self, report=None) -> dict:
        """What the API and the CLI show: the stored document, the changes still pending, and what
        the controller is doing about them (`report`: its last api.routing.nodes.Report)."""
        fresh = report is not None and report.fresh()
        return {**self.stored(), "pending": pending(self.topology, report.running if fresh else None),
                "progress": report.progress if fresh else "no controller has reported in the last "
                                                           "few seconds"}


# Compare-and-set: write only if nobody wrote since the writer read version ARGV[1].
_CAS = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], v + 1)
return v + 1
"""


def _check_placement_unchanged(old: Topology, new: Topology) -> None:
    errors = [(name, f"changes only with `python manage.py reshard --to N --strategy S`, which moves "
                     f"the rows as well (now {getattr(old, name)!r}, asked {getattr(new, name)!r})")
              for name in PLACEMENT_FIELDS if getattr(old, name) != getattr(new, name)]
    if errors:
        raise TopologyError(errors)


class Conflict(RuntimeError):
    """Too many concurrent writers in a row; the caller may retry."""


class Store:
    def __init__(self, client, key: str = KEY, version_key: str = VERSION_KEY):
        self.client, self.key, self.version_key = client, key, version_key
        self._cas = client.register_script(_CAS)

    def read(self) -> Document:
        raw = self.client.get(self.key)
        if raw is None:
            return Document(Topology())
        stored = json.loads(raw)
        return Document(parse(known_fields(stored["topology"]), check_machine=False), stored["version"],
                        stored["updated_at"], stored["updated_by"])

    def version(self) -> int:
        return int(self.client.get(self.version_key) or 0)

    def update(self, change, updated_by: str, attempts: int = 200, resharding: bool = False) -> Document:
        """Apply `change(current topology dict) -> new dict` atomically; returns the new document.
        An invalid result raises TopologyError and nothing is written. The placement fields change
        only with `resharding` (the reshard command), since changing them means moving rows."""
        for _ in range(attempts):
            now = self.read()
            topology = parse(change(now.topology.to_dict()))
            if not resharding:
                _check_placement_unchanged(now.topology, topology)
            doc = Document(topology, now.version + 1,
                           datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                           updated_by)
            if self._cas(keys=[self.version_key, self.key], args=[now.version, json.dumps(doc.stored())]) != -1:
                return doc
            time.sleep(random.uniform(0, 0.005))  # another writer won this round: read again
        raise Conflict(f"the topology changed {attempts} times while this change was being applied")

    def replace(self, data: dict, updated_by: str) -> Document:
        """PUT semantics; the placement fields, when absent, keep their values (a reset does not
        move data: only `reshard` does)."""
        def change(current):
            if not isinstance(data, dict):
                return data
            return {**{name: current[name] for name in PLACEMENT_FIELDS}, **data}
        return self.update(change, updated_by)

    def patch(self, data: dict, updated_by: str) -> Document:
        return self.update(lambda current: merge(current, data), updated_by)


def report():
    """The controller's last report on the data nodes (what runs, and its progress)."""
    from api.routing import nodes
    from api.state import state_client
    return nodes.read(state_client())


def store() -> Store:
    from api.state import state_client  # Django settings give the state Valkey's URL
    return _store(state_client())


@functools.lru_cache(maxsize=1)
def _store(client) -> Store:
    return Store(client)


# --- this process's copy -------------------------------------------------------------------------
_lock = threading.Lock()
_local: Document | None = None
_checked_at = -math.inf


def current() -> Document:
    """This process's copy of the topology, at most about REFRESH_S old. Never raises: if the state
    Valkey cannot be reached, the last copy (or the defaults at version 0) stays in use."""
    global _local, _checked_at
    if _local is not None and time.monotonic() - _checked_at < REFRESH_S:
        return _local
    # One thread checks; the others keep using the copy meanwhile instead of queueing on Valkey.
    if not _lock.acquire(blocking=_local is None):
        return _local
    try:
        if _local is not None and time.monotonic() - _checked_at < REFRESH_S:
            return _local
        _checked_at = time.monotonic()
        try:
            s = store()
            if _local is None or s.version() != _local.version:
                _local = s.read()
        except Exception as exc:  # a header or a toggle must never fail a request
            log.warning("topology refresh failed, keeping version %s: %s",
                        _local.version if _local else 0, exc)
            if _local is None:
                _local = Document(Topology())
        return _local
    finally:
        _lock.release()


def remember(doc: Document) -> None:
    """A process that wrote a version uses it at once, without waiting for its next check."""
    global _local
    with _lock:
        if _local is None or doc.version > _local.version:
            _local = doc
