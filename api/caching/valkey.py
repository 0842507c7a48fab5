"""The `cache` Valkey behind a guard: a cache that fails must cost a request almost nothing.

One node or a cluster (topology `cache_nodes`): with 1, the single `valkey-cache` server, through
django-redis's connection for the `default` cache (one per process; redis-py's client is
thread-safe and its pool reconnects after the Valkey restarts). With 3 or 6, a Valkey Cluster that
the controller runs (workbench/stack/cachecluster.py), through redis-py's cluster-aware client
(`redis.cluster.RedisCluster`): it learns which node owns which of the 16384 slots and sends each
command to the owner of its keys. `client()` follows the topology live: each process keeps one
client per node count and uses the one the current topology names (checked at most once a second,
like every live toggle), so a change takes effect without restarting anything.

Every multi-key script (reads, writes, querycache) touches the keys of one hash tag (`{u:ID}`, or
`{q:SHARD:USER}`, keys.py), so one slot, as a cluster requires; the cluster client refuses a
script whose keys span slots before sending it. Scripts are sent by EVALSHA and, on NOSCRIPT (a
node restarted empty, or never saw the script), by EVAL, which loads it on that node: unlike
redis-py's `register_script`, whose SCRIPT LOAD goes to every node and so fails while one is down.

The guard (`run`):
- every call names the key it is about; a Valkey error becomes `Down`, which callers treat as a
  miss (reads go to the database) or as a failed invalidation (remembered and retried, see writes).
- a circuit breaker per node: after a failure, that node is skipped for BREAKER_S, so while it is
  down no request pays a connection attempt (or a timeout, when the host does not even refuse);
  the first request after the interval tries again, and one success closes it. With one node this
  is the old breaker for the whole cache; in a cluster, a SIGKILLed node turns only its own slots'
  keys into misses (X-Cache `down`) and the other nodes keep serving hits. A key's node is the one
  that owns its slot in the client's slot table. When the cluster cannot be reached at all (the
  client cannot even be made, e.g. while the controller is still forming it) the whole cache is
  skipped for BREAKER_S.
- timeouts (workbench/settings.py CACHES, and the same for the cluster client): connect and socket
  timeouts of 0.25 s. A healthy cache answers in well under a millisecond, so 0.25 s only ever
  trips on a dead or hung one; 1 s would let one hung call take the whole 100 ms p95 budget ten
  times over. A refused connection (the usual failure on one machine) fails at once.
- redis-py retries nothing here: django-redis hands it a connection pool whose connections have no
  retry policy, and the cluster client is made with Retry(NoBackoff(), 0), so one failed call is
  one failure, not several with backoff. (On a connection error the cluster client re-reads the
  slot table from a live node before raising: about 3 ms on loopback, once per BREAKER_S per process.)
"""
from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException
from redis.retry import Retry

from workbench import topology

from . import metrics, request

log = logging.getLogger(__name__)

BREAKER_S = 1.0
TIMEOUT_S = 0.25
SINGLE = "single"   # the breaker's name for the one node of cache_nodes=1
ALL = "*"           # ... for the cluster as a whole (it could not be reached at all)
FAILURES = (redis.RedisError, RedisClusterException)


class Down(Exception):
    """The cache (or the node owning the key) is unreachable, or failed less than BREAKER_S ago."""


class Breaker:
    """Per node: the monotonic time until which it is skipped."""

    def __init__(self, what: str):
        self.what = what
        self.lock = threading.Lock()
        self.until: dict[str, float] = {}

    def is_open(self, node: str) -> bool:
        now = time.monotonic()
        return now < self.until.get(ALL, 0.0) or now < self.until.get(node, 0.0)

    def trip(self, node: str, exc: Exception) -> None:
        with self.lock:
            now = time.monotonic()
            if now >= self.until.get(node, 0.0):
                where = "" if node == SINGLE else f" on {'the cluster' if node == ALL else 'node ' + node}"
                log.warning("%s call failed%s; skipping it for %.1f s: %s", self.what, where, BREAKER_S, exc)
            self.until[node] = now + BREAKER_S


breaker = Breaker("cache")


def nodes() -> int:
    """The topology's `cache_nodes`: 1 (one server) or the cluster's node count."""
    return topology.current().topology.cache_nodes


def client():
    """The client for the topology's current `cache_nodes` (a redis.Redis, or a RedisCluster)."""
    return _client(nodes())


@functools.lru_cache(maxsize=None)
def _client(n: int):
    if n == 1:
        from django_redis import get_redis_connection
        return get_redis_connection("default")
    # Made only once it can reach the cluster (a failure here is not cached: tried again later).
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", port) for port in node_ports(n)],
                        socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
                        retry=Retry(NoBackoff(), 0), require_full_coverage=False)


def node_ports(n: int) -> list[int]:
    from django.conf import settings
    return [settings.STACK.cache_node_port(i) for i in range(1, n + 1)]


def node_urls(n: int | None = None) -> list[str]:
    """Every node's URL: the single cache's, or the cluster nodes'."""
    n = nodes() if n is None else n
    if n == 1:
        from django.conf import settings
        location = settings.CACHES["default"]["LOCATION"]
        return [location[0] if isinstance(location, (list, tuple)) else location]
    return [f"redis://127.0.0.1:{port}/0" for port in node_ports(n)]


def node_of(c, key: str | None) -> str:
    """The breaker's name for the node that owns `key` ("host:port" in a cluster)."""
    if not isinstance(c, RedisCluster):
        return SINGLE
    if key is None:
        return ALL
    try:
        return c.get_node_from_key(key).name
    except FAILURES:
        return ALL


class Script:
    """A Lua script: EVALSHA, and EVAL when the node does not have it (see the module's docstring).
    Called as redis-py's registered scripts are: `script(keys=[...], args=[...], client=c)`."""

    def __init__(self, source: str):
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def __call__(self, keys=(), args=(), client=None):
        c = client if client is not None else _client(nodes())
        try:
            return c.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return c.eval(self.source, len(keys), *keys, *args)


@functools.lru_cache(maxsize=None)
def script(source: str) -> Script:
    return Script(source)


def available(key: str | None = None) -> bool:
    """Whether a call about `key` may be tried now (None: whether the cache as a whole may be)."""
    if breaker.is_open(ALL) or (nodes() == 1 and breaker.is_open(SINGLE)):
        return False
    if key is None:
        return True
    try:
        return not breaker.is_open(node_of(client(), key))
    except FAILURES:
        return False


def guarded(op, key: str | None, layer: Breaker, count):
    """`op(client)`'s result; raises Down when the key's node failed now or moments ago, by
    `layer`'s breaker or the application cache's. `count(name)` counts skipped_down and errors."""
    if layer.is_open(ALL) or breaker.is_open(ALL):
        count("skipped_down")
        raise Down("the cache failed less than %.1f s ago" % BREAKER_S)
    try:
        c = client()
    except FAILURES as exc:  # the cluster could not be reached at all
        layer.trip(ALL, exc)
        count("errors")
        raise Down(str(exc)) from exc
    node = node_of(c, key)
    if layer.is_open(node) or breaker.is_open(node):
        count("skipped_down")
        raise Down("the cache (%s) failed less than %.1f s ago" % (node, BREAKER_S))
    try:
        return op(c)
    except FAILURES as exc:
        layer.trip(node, exc)
        count("errors")
        raise Down(str(exc)) from exc


def run(op, key: str | None = None):
    """`op(client)`'s result, for the application cache; `key`: the (first) key it touches, whose
    node's breaker applies. Raises Down when that node failed now or moments ago."""
    try:
        with request.timed():
            return guarded(op, key, breaker, metrics.count)
    except Down:
        request.mark("down")
        raise
