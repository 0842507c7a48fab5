"""Which database node answers each query: the one router for meta, the shards and their replicas.

`meta` (alias `default`) holds accounts and anything global; users and posts live on shards. Each
shard is a primary (`primary` for shard 1, `shard-k` otherwise) streaming to up to four read
replicas (api.routing.shards names them). Which shard a query goes to is this context's shard
(`on_shard`), which api.routing.placement sets from the user id every request carries.

- Writes, and every read in a request that writes, go to the shard's primary.
- A GET or HEAD picks one node per shard for all its reads there, at its first read, by the read
  policy: round_robin, random or least_lag. A replica is skipped when the controller reports it
  down or behind `max_lag_ms` (api.routing.nodes), or when it failed here moments ago.
- Read-your-writes: after a client's write, its reads go to the primary for `read_your_writes_s`.
  The client is the `X-Client-Id` header until the gateway adds tokens.
- A read that fails on a replica is retried once, on the primary (see ApiView.handle_exception);
  while the primary is down (before a failover), on another replica.
Outside a request (management commands, the reconciler) everything uses the shard's primary.
"""
from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field

from api import tracing
from workbench import topology

from . import nodes
from .shards import MAX_REPLICAS, MAX_SHARDS, display_name, parse_alias, primary_alias, replica_alias

log = logging.getLogger(__name__)

DATA_MODELS = {"user", "post", "shardfence", "outbox"}  # outbox: the read model's (api/readmodel.py)
PRIMARY = "primary"          # shard 1's primary
META = "default"
PRIMARIES = [primary_alias(k) for k in range(1, MAX_SHARDS + 1)]
REPLICAS = [replica_alias(k, i) for k in range(1, MAX_SHARDS + 1) for i in range(1, MAX_REPLICAS + 1)]
DATA_ALIASES = {*PRIMARIES, *REPLICAS}
SUSPECT_S = 2.0            # a replica that just failed here is avoided this long
RYW_KEY = "workbench:ryw:{}"
CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def is_data_model(model) -> bool:
    meta = model._meta
    return meta.app_label == "api" and meta.model_name in DATA_MODELS


def metric_name(alias: str) -> str:
    """The name a node goes by in counters, emulation slots and the controller's report: meta, or
    its alias (primary, replica-2, shard-3, shard-3-replica-1), whatever the shard count."""
    return "meta" if alias == META else alias


def node_name(alias: str) -> str:
    """The name a node goes by in headers: meta, primary, replica-N; shard-K/primary and
    shard-K/replica-N once there is more than one shard (metrics and the controller use aliases)."""
    if alias == META:
        return "meta"
    return display_name(alias, topology.current().topology.shard_groups > 1)


# --- the shard this context works on -------------------------------------------------------------
_shard: contextvars.ContextVar[int] = contextvars.ContextVar("db_shard", default=1)


@contextlib.contextmanager
def on_shard(shard: int):
    """Run the block's data queries on `shard` (1-based)."""
    follow_restart(primary_alias(shard))
    token = _shard.set(shard)
    try:
        yield
    finally:
        _shard.reset(token)


def current_shard() -> int:
    return _shard.get()


def write_alias() -> str:
    """The primary of this context's shard."""
    return primary_alias(_shard.get())


@dataclass
class RequestRouting:
    """One request's routing: whether it may read from a replica, the node it chose, the nodes used."""
    reads_may_use_replicas: bool
    client_id: str | None = None
    read_aliases: dict = field(default_factory=dict)  # shard -> the node its reads use
    retried: bool = False
    avoid: set = field(default_factory=set)
    used: list = field(default_factory=list)


_request: contextvars.ContextVar[RequestRouting | None] = contextvars.ContextVar("db_routing", default=None)
_round_robin = itertools.count()
_suspects: dict[str, float] = {}
_suspects_lock = threading.Lock()


def begin_request(method: str, client_id: str | None):
    client_id = client_id if client_id and CLIENT_ID.match(client_id) else None
    return _request.set(RequestRouting(method in ("GET", "HEAD"), client_id))


def end_request(token) -> RequestRouting | None:
    routing = _request.get()
    _request.reset(token)
    return routing


def read_alias() -> str:
    shard = _shard.get()
    routing = _request.get()
    if routing is None or not routing.reads_may_use_replicas:
        return primary_alias(shard)
    if shard not in routing.read_aliases:
        with tracing.span("router.choose", {"db.shard": shard}) as span:  # a no-op unless sampled
            routing.read_aliases[shard] = choose(routing, shard)
            span.set_attribute("db.node", metric_name(routing.read_aliases[shard]))
    return routing.read_aliases[shard]


def read_on_primary() -> None:
    """This request's later reads on this context's shard go to its primary."""
    routing = _request.get()
    if routing is not None:
        routing.read_aliases[_shard.get()] = primary_alias(_shard.get())


def choose(routing: RequestRouting, shard: int = 1) -> str:
    t = topology.current().topology
    primary = primary_alias(shard)
    if t.replicas == 0:
        return primary
    report = nodes.current()
    # With the primary down, read-your-writes gives way: a replica's answer, maybe stale, beats a 503.
    if t.read_your_writes_s > 0 and routing.client_id and primary_up(report, shard) \
            and _wrote_recently(routing.client_id):
        return primary
    now = time.monotonic()
    candidates = [r for r in report.usable_replicas(t.replicas, t.max_lag_ms, shard)
                  if r not in routing.avoid and _suspects.get(r, 0) < now]
    if not candidates:
        return primary
    _follow_restarts(report, candidates)
    if t.read_policy == "random":
        return random.choice(candidates)
    if t.read_policy == "least_lag":
        least = min(report.lag_ms(r) for r in candidates)
        candidates = [r for r in candidates if report.lag_ms(r) == least]
    return candidates[next(_round_robin) % len(candidates)]


def retry_read(exc: Exception) -> bool:
    """After a database error in a read-only request on a replica: say whether to run the request
    once more (at most once), on the primary, which is always there and never behind. The replica
    is avoided here for a while, and its pool's dead idle connections are dropped."""
    routing = _request.get()
    failed = [a for a in routing.read_aliases.values() if a in REPLICAS] if routing else []
    if routing is None or routing.retried or not _is_db_error(exc) or not failed:
        return False
    # Which replica failed is not known here when a request read from several shards: all of
    # them are retried on their primaries, and only a replica whose pool check fails is purged.
    with _suspects_lock:
        for alias in failed:
            _suspects[alias] = time.monotonic() + SUSPECT_S
    routing.avoid.update(failed)
    routing.retried = True
    # On the primary; or, while it is down (before a failover), on another replica, chosen afresh.
    report = nodes.current()
    routing.read_aliases = {shard: primary_alias(shard) for shard in {parse_alias(a)[0] for a in failed}
                            if primary_up(report, shard)}
    for alias in failed:
        _purge(alias)
    return True


def primary_up(report, shard: int) -> bool:
    """False only when a fresh controller report says the shard's primary is down."""
    return not report.fresh() or report.nodes.get(primary_alias(shard), {}).get("healthy", True)


def _is_db_error(exc: Exception) -> bool:
    from django.db import DatabaseError
    return isinstance(exc, DatabaseError)


def _purge(alias: str) -> None:
    """Drop this thread's connection to `alias` and every idle pooled one that no longer works
    (after the node died, restarted, or was retired)."""
    from django.db import connections
    try:
        connections[alias].close()
        pool = connections[alias]._connection_pools.get(alias)
        if pool is not None:
            pool.check()
    except Exception:  # noqa: BLE001 - the node is already known to be failing
        pass


_seen_pids: dict[str, int] = {}


def _follow_restarts(report, candidates: list[str]) -> None:
    for name in candidates:
        follow_restart(name, report)


def follow_restart(alias: str, report=None) -> None:
    """A node with a new process (restarted after a crash, or retired and started again, as a
    reshard does with shards) leaves dead connections in this worker's pool: drop them before the
    first query goes there. The controller's report carries each node's pid (meta's too)."""
    report = report or nodes.current()
    pid = report.nodes.get(metric_name(alias), {}).get("pid")
    if pid is not None and _seen_pids.get(alias) != pid:
        if alias in _seen_pids:
            _purge(alias)
        _seen_pids[alias] = pid


def note_query(alias: str) -> None:
    routing = _request.get()
    if routing is not None and alias in DATA_ALIASES and alias not in routing.used:
        routing.used.append(alias)


def note_write(client_id: str | None) -> None:
    """Start the client's read-your-writes window after a successful write."""
    window = topology.current().topology.read_your_writes_s
    if window > 0 and client_id and CLIENT_ID.match(client_id):
        from api.state import state_client
        try:
            state_client().set(RYW_KEY.format(client_id), 1, px=int(window * 1000))
        except Exception as exc:  # noqa: BLE001 - the write is done; it must not turn into an error
            log.warning("read-your-writes window for %s not recorded: %s", client_id, exc)


def _wrote_recently(client_id: str) -> bool:
    from api.state import state_client
    try:
        return bool(state_client().exists(RYW_KEY.format(client_id)))
    except Exception:  # noqa: BLE001 - unknown: the primary is always consistent
        return True


class Router:
    def db_for_read(self, model, **hints):
        return read_alias() if is_data_model(model) else META

    def db_for_write(self, model, **hints):
        return write_alias() if is_data_model(model) else META

    def allow_relation(self, obj1, obj2, **hints):
        # Instances, not type(): a lazy request.user (a SimpleLazyObject) passes its _meta through.
        return is_data_model(obj1) == is_data_model(obj2)

    def allow_migrate(self, db, app_label, model_name=None, **hints):
        if app_label == "api" and model_name in DATA_MODELS:
            return db in PRIMARIES
        # Everything else is global and lives in meta; contenttypes and auth stay out of data DBs.
        return db == META
