"""The controller's side of the data tier: it makes the running PostgreSQL nodes match the topology
and reports what they are doing.

The data tier is `shard_groups` shard groups (api/routing/shards.py names their nodes): shard 1 is
the data primary that bring-up starts (process pg-primary, alias `primary`) with `replica-1..4`;
shard k >= 2 is a PostgreSQL primary of its own, `shard-k`, with `shard-k-replica-1..4`. Each
group is carried out alike (a ShardGroup knows its nodes' aliases, URLs, ports and directories).

- `apply` (its own thread) carries out the topology: shard primaries started (initdb, then
  `migrate --database shard-k`) or retired (only once they hold no users: a reshard moves them
  off first), and for every shard its streaming replicas made with `pg_basebackup -R` from its own
  primary and started or retired, the replication mode (synchronous_standby_names and
  synchronous_commit on its primary), each replica's apply delay (recovery_min_apply_delay, for
  the stale-read and region lessons) and the supporting index (query optimization); PgBouncer
  in front of shard 1's primary when the topology asks for it (workbench/stack/pgbouncer.py);
  and the state Valkey's persistence (`cache.state_fsync`, CONFIG SET), put back at once when that
  Valkey was restarted, since a restart starts it with the default of its command line.
- `monitor` (another thread) samples every node each `sample_interval_s`: health, replay lag in
  WAL bytes and in milliseconds, and once a second connections, plus each primary's users and
  posts (n_live_tup, cheap). It publishes the sample with what runs and what is being done
  (api.routing.nodes), which the router, `status` and the admin API read.

Lag: each replica is asked for its replay position (pg_last_wal_replay_lsn); the primary's
pg_stat_replication only learns it from the replica's status messages, which can be 10 s apart
when the replica is idle. In WAL bytes, lag is its primary's current position minus that. In
milliseconds, the monitor remembers when it first saw each WAL position of each shard's primary,
so a replica that has not replayed position P is (now - first time P was seen) behind: exact to
one sample interval, and unlike pg_stat_replication.replay_lag it does not go blank while a
replica is idle or delayed. The monitor keeps one connection per node open between samples.
"""
from __future__ import annotations

import bisect
import collections
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from api import queries
from api.caching import metrics as cache_metrics
from api.routing import nodes, shards, stats
from workbench import parameters, topology

from . import binaries, caddy, cachecluster, config, pgbouncer, ports, postgres, valkey
from .process import Supervised, as_user

MAX_REPLICAS = shards.MAX_REPLICAS
APPLY_INTERVAL_S = 0.25
RETIRE_GRACE_S = topology.REFRESH_S + nodes.REFRESH_S + 1.0
REAPPLY_S = 5.0
DATA_DATABASE = "workbench"
CURRENT_LSN = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"
REPLAY_LSN = "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')"
STREAMS = "SELECT application_name, state, sync_state FROM pg_stat_replication"
CONNECTIONS = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
               "AND datname = 'workbench' AND pid <> pg_backend_pid()")
# The statistics' live-row estimates: no table scan, exact enough for "how many users on this shard".
ROW_COUNTS = "SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE relname IN ('api_user', 'api_post')"
# Exact users per shard under `directory` (its index on shard makes this an index-only scan). The
# statistics above can trail inserts by seconds (a backend flushes them when idle, at most once a
# second), so sign-ups placed by them alone would pile onto one shard until the counts caught up.
DIRECTORY_COUNTS = "SELECT shard, count(*) FROM meta_shard_directory GROUP BY shard"


def start_async(url: str) -> None:
    """A primary stopped in synchronous mode starts again with that setting and no replica yet to
    confirm a commit: its migrations would wait forever. It runs async until the topology pass has
    started its replicas and sets the mode the topology asks for again (_apply_group)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT current_setting('synchronous_standby_names')").fetchone()[0]:
            conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            conn.execute("ALTER SYSTEM RESET synchronous_commit")
            conn.execute("SELECT pg_reload_conf()")


def slot_name(index: int) -> str:
    return f"replica_{index}"  # also the replica's cluster_name, which it reports as application_name


def node_url(cfg: config.StackConfig, alias: str) -> str:
    if alias == "meta":
        return cfg.meta_db_url
    shard, index = shards.parse_alias(alias)
    return cfg.shard_replica_url(shard, index) if index else cfg.shard_url(shard)


@dataclass(frozen=True)
class ShardGroup:
    """Shard `number`'s nodes: its primary and replicas 1..MAX_REPLICAS. Their aliases are the
    Django database aliases, the names in the report and the process names (but for shard 1's
    primary, which bring-up starts as pg-primary); each has a URL, a port and a data directory."""
    cfg: config.StackConfig
    number: int

    @property
    def primary(self) -> str:
        return shards.primary_alias(self.number)

    @property
    def process(self) -> str:
        return "pg-primary" if self.number == 1 else self.primary

    @property
    def source(self) -> str:
        """How progress messages name its primary."""
        return "the primary" if self.number == 1 else self.primary

    @property
    def port(self) -> int:
        return self.cfg.shard_pg_port(self.number)

    def replica(self, index: int) -> str:
        return shards.replica_alias(self.number, index)

    def replica_port(self, index: int) -> int:
        return self.cfg.shard_replica_port(self.number, index)

    def data_dir(self, alias: str) -> Path:
        return self.cfg.data_dir / "pg" / alias


def _agreed(per_shard: dict):
    """One value when every shard runs the same (what the topology asks for is one value), else the
    value per shard primary, so a change that has reached some shards only still shows as pending."""
    values = list(per_shard.values())
    return values[0] if all(v == values[0] for v in values) else per_shard


class DataNodes:
    def __init__(self, ctl):
        self.ctl = ctl
        self.cfg = ctl.cfg
        self.state = redis.Redis.from_url(self.cfg.state_url, socket_timeout=2, socket_connect_timeout=2)
        self.store = topology.Store(self.state)
        self.interval = parameters.lag()["sample_interval_s"]
        self.progress: str | None = None
        self.lock = threading.RLock()  # one change of the data tier at a time: a topology pass or a failover
        self.refusals: list[str] = []  # what the last apply pass would not do (a shard still holding users)
        self.version = 0
        self.topology: topology.Topology | None = None  # as the last apply pass read it
        self.running: dict = {}
        self.ready: set[str] = set()  # shard primaries (k >= 2) started and migrated
        self.refused: set[str] = set()  # shard primaries not retired since they hold users
        self.history: dict[str, collections.deque] = {}  # per shard primary: (monotonic time, its LSN)
        self.down_since: dict[str, float] = {}
        self.analyzed: dict[str, int | None] = {}  # per shard primary: the pid its tables were analyzed in
        self.last_lag: dict[str, float] = {}  # per replica, its lag while its primary last answered
        self.conns: dict[str, psycopg.Connection] = {}  # the monitor's own, one per node
        self.last_counts: dict[str, dict] = {}  # per node: connections, and on primaries users, posts
        self.last_report: nodes.Report | None = None
        self.last_pools: dict = {}
        self.cache_cluster = cachecluster.CacheCluster(self)  # topology `cache_nodes`
        # Counts start with the stack: queries per node, every caching layer's, the gateway's.
        from api import served
        from api.gateway import ratelimit, shedding
        self.state.delete(stats.KEY, cache_metrics.KEY, cache_metrics.L1_KEY, cache_metrics.QUERY_KEY,
                          ratelimit.COUNTS_KEY, shedding.COUNTS_KEY, served.KEY)

    # --- connections and what runs ---------------------------------------------------------------
    def _sql(self, node: str, sql: str, params=(), autocommit=True):
        with psycopg.connect(node_url(self.cfg, node), connect_timeout=2, autocommit=autocommit) as conn:
            return conn.execute(sql, params).fetchall()

    def group(self, number: int) -> ShardGroup:
        return ShardGroup(self.cfg, number)

    def _live(self) -> dict[str, Supervised]:
        with self.ctl.lock:
            return {name: proc for name, proc in self.ctl.procs.items() if not proc.retired}

    def _shard_processes(self, live: dict | None = None) -> list[ShardGroup]:
        """Shard 1, and every shard whose primary process runs (migrated or not yet)."""
        live = self._live() if live is None else live
        return [self.group(k) for k in range(1, shards.MAX_SHARDS + 1) if k == 1 or self.group(k).primary in live]

    def running_groups(self) -> list[ShardGroup]:
        """The shard groups that serve: shard 1, and every shard started and migrated."""
        return [g for g in self._shard_processes() if g.number == 1 or g.primary in self.ready]

    def replica_names(self, group: ShardGroup, live: dict | None = None) -> list[str]:
        live = self._live() if live is None else live
        return [group.replica(i) for i in range(1, MAX_REPLICAS + 1) if group.replica(i) in live]

    # --- carrying out the topology -------------------------------------------------------------
    def apply_forever(self) -> None:
        applied_version, applied_at, applied_state = -1, 0.0, None
        while not self.ctl.stopping.wait(APPLY_INTERVAL_S):
            try:
                version = self.store.version()
                state_pid = self._state_valkey_pid()
                # A new version, a restarted state Valkey (its persistence is the command line's
                # again), or a periodic pass that puts back anything changed behind our back.
                if version == applied_version and state_pid == applied_state and \
                        time.monotonic() - applied_at < REAPPLY_S:
                    continue
                applied_at = time.monotonic()
                doc = self.store.read()
                self.version, self.topology = doc.version, doc.topology
                with self.lock:
                    self.apply(doc.topology)
                applied_version, applied_state = doc.version, state_pid
                self.progress = "; ".join(self.refusals) or None
            except Exception as exc:  # report it and try again; the stack keeps running meanwhile
                self.progress = f"failed, retrying: {exc}"
                self.ctl.log("topology_apply_failed", error=str(exc))
                self.ctl.stopping.wait(2.0)

    def apply(self, t: topology.Topology) -> None:
        """Every shard group is carried out on its own: one that fails (a port in use, a primary
        restarting) does not hold up the others; the first failure is raised at the end."""
        self.refusals = []
        errors = []

        def attempt(step, *args):
            try:
                step(*args)
            except Exception as exc:
                errors.append(exc)

        for k in range(2, t.shard_groups + 1):
            if self.group(k).primary not in self.ready:
                attempt(self._start_shard, self.group(k))
        for group in self.running_groups():
            if group.number <= t.shard_groups:
                attempt(self._apply_group, group, t)
        for group in reversed(self._shard_processes()):
            if group.number > t.shard_groups:
                attempt(self._retire_shard, group)
        if t.pgbouncer and not self._pgbouncer_running():
            attempt(self._start_pgbouncer)
        elif not t.pgbouncer and self._pgbouncer_running():
            attempt(self._retire_pgbouncer)
        attempt(self._set_state_fsync, t.cache.state_fsync)
        attempt(self.cache_cluster.apply, t.cache_nodes)
        attempt(caddy.set_policy, self.cfg, t.lb())  # live, through Caddy's admin API
        if self.ctl.apps:  # app servers started or drained (stack/apps.py), once bring-up has reached them
            attempt(self.ctl.apps.scale, t.app_servers)
        self.running = self.read_running()
        if errors:
            raise errors[0]

    def _apply_group(self, group: ShardGroup, t: topology.Topology) -> None:
        """One shard's replicas, replication mode, apply delays and supporting index."""
        if t.replication == "async":
            self._set_replication(group, "async")  # before any replica goes, so no commit waits on it
        for i in range(1, MAX_REPLICAS + 1):
            running = group.replica(i) in self.replica_names(group)
            if i <= t.replicas and not running:
                self._start_replica(group, i)
            elif i > t.replicas and running:
                self._retire_replica(group, i)
        self._set_replication(group, t.replication)
        delays = t.replica_delays_ms()
        for i in range(1, t.replicas + 1):
            self._set_apply_delay(group.replica(i), delays.get(group.replica(i), 0))
        self._set_index(group, t.indexes.post_user_time)

    def read_running(self) -> dict:
        groups = self.running_groups()
        live = self._live()
        replicas = {g.primary: self.replica_names(g, live) for g in groups}
        return {"shard_groups": len(groups),
                "replicas": _agreed({primary: len(names) for primary, names in replicas.items()}),
                "replication": _agreed({g.primary: self._replication_mode(g) for g in groups}),
                "replica_delays_ms": {name: self._apply_delay(name) for names in replicas.values() for name in names},
                "indexes.post_user_time": _agreed({g.primary: self._index_state(g)[0] for g in groups}),
                "pgbouncer": self._pgbouncer_running(),
                "app_servers": len(self.ctl.apps.managed()) if self.ctl.apps else 0,
                "cache.state_fsync": self._state_fsync(), "cache_nodes": self.cache_cluster.running(),
                "lb_policy": caddy.running_policy(self.cfg)}

    def _say(self, progress: str) -> None:
        self.progress = progress
        self.ctl.log("topology_progress", progress=progress)

    def _start_postgres(self, name: str, port: int, data_dir: Path, settings: dict | None = None) -> None:
        """Start a data node the controller owns (a shard primary, a replica) on its port."""
        if ports.in_use(port):
            raise RuntimeError(f"port {port}, wanted for {name}, is in use: {ports.holder(port)}")
        self._say(f"starting {name}")
        self.ctl._start(postgres.spec(name, data_dir, port, self.cfg.log_dir / f"pg-{name}.log", settings=settings))

    def _stop_process(self, name: str) -> None:
        """Stop a process on purpose: retired, the supervisor does not restart it."""
        with self.ctl.lock:
            proc = self.ctl.procs.get(name)
        if proc:
            proc.retire()
            with self.ctl.lock:
                self.ctl.procs.pop(name, None)
            self.ctl._save_pids()

    # --- shard primaries ---------------------------------------------------------------------------
    def _start_shard(self, group: ShardGroup) -> None:
        """Shard k >= 2: its own cluster (made once), started, then migrated like the primary. It
        serves (counts in `shard_groups`) only once migrated; a failed migration is retried."""
        name = group.primary
        if name not in self._live():
            data_dir = group.data_dir(name)
            if not (data_dir / "PG_VERSION").exists():
                self._say(f"initialising {name} (initdb)")
                postgres.init_cluster(data_dir)
            self._start_postgres(name, group.port, data_dir)
            postgres.ensure_database(group.port, DATA_DATABASE)
            start_async(node_url(self.cfg, name))
        self._say(f"migrating {name}")
        self.ctl._manage("migrate", "--database", name, "--noinput")
        self.ready.add(name)
        self.ctl.log("shard_started", name=name, port=group.port)
        self.running = self.read_running()

    def _stored_users(self, group: ShardGroup) -> int:
        try:
            return int(self._sql(group.primary, "SELECT count(*) FROM api_user")[0][0])
        except psycopg.errors.UndefinedTable:  # never migrated: it holds nothing
            return 0

    def _retire_shard(self, group: ShardGroup) -> None:
        """Stop a shard the topology no longer runs and delete its data: only when it holds no
        users. One that still does is left running and said so (a reshard moves them off first)."""
        name = group.primary
        users = self._stored_users(group)  # raises while it is down: nothing is deleted then
        if users:
            refusal = f"not retiring {name}: it still holds {users:,} users (a reshard moves them off first)"
            if name not in self.refused:  # logged once, said on every pass
                self.ctl.log("shard_retire_refused", name=name, users=users)
            self.refused.add(name)
            self.refusals.append(refusal)
            self.progress = refusal
            return
        self._say(f"retiring {name}")
        # App workers see the topology without this shard within about REFRESH_S; until then one
        # may still send it a query (a scatter-gather read), which would wait out its pool's
        # timeout against a stopped server. Stop it once they have all moved on.
        time.sleep(RETIRE_GRACE_S)
        if self.store.version() != self.version or self._stored_users(group):
            # A newer topology (a reshard wanting this shard again) or a user arrived meanwhile:
            # the next pass decides.
            self._say(f"not retiring {name}: the topology changed meanwhile")
            return
        for i in range(MAX_REPLICAS, 0, -1):
            if group.replica(i) in self.replica_names(group):
                self._retire_replica(group, i)
        self.ready.discard(name)
        self._stop_process(name)
        for alias in [name] + [group.replica(i) for i in range(1, MAX_REPLICAS + 1)]:
            shutil.rmtree(group.data_dir(alias), ignore_errors=True)
        self.refused.discard(name)
        self.ctl.log("shard_retired", name=name)
        self.running = self.read_running()

    # --- replicas ------------------------------------------------------------------------------------
    def _start_replica(self, group: ShardGroup, index: int) -> None:
        name = group.replica(index)
        data_dir = group.data_dir(name)
        if not (data_dir / "PG_VERSION").exists():
            self._say(f"copying {group.source} into {name} (pg_basebackup)")
            self._base_backup(group, index, data_dir)
        # After a failover its primary's port answers again within seconds: retry the stream each
        # second rather than the default five (workbench/stack/failover.py).
        self._start_postgres(name, group.replica_port(index), data_dir,
                             settings={"cluster_name": slot_name(index), "hot_standby_feedback": "on",
                                       "wal_retrieve_retry_interval": "1s"})
        self.ctl.log("replica_started", name=name, port=group.replica_port(index))
        self.running = self.read_running()  # what runs is reported as each step lands

    def _base_backup(self, group: ShardGroup, index: int, data_dir: Path) -> None:
        # A fresh slot keeps the primary from recycling WAL the replica has not received yet.
        self._drop_slot(group, index)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        argv = [str(binaries.postgres_bin_dir() / "pg_basebackup"), "-D", str(data_dir), "-h", "127.0.0.1",
                "-p", str(group.port), "-U", postgres.DB_USER, "-X", "stream", "-R", "-C", "-S", slot_name(index),
                "--checkpoint=fast", "--no-sync"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                **as_user(postgres.run_as()))
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup for {group.replica(index)} failed: {result.stderr.strip()[-500:]}")

    def _retire_replica(self, group: ShardGroup, index: int) -> None:
        name = group.replica(index)
        self._say(f"stopping {name}")
        self._stop_process(name)
        self._drop_slot(group, index)
        # A retired replica's copy only goes staler; the next one starts from a fresh base backup.
        shutil.rmtree(group.data_dir(name), ignore_errors=True)
        self.ctl.log("replica_retired", name=name)
        self.running = self.read_running()

    def _drop_slot(self, group: ShardGroup, index: int) -> None:
        self._sql(group.primary, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 "WHERE slot_name = %s AND NOT active", (slot_name(index),))

    # --- replication mode, apply delay, supporting index ---------------------------------------------
    def _replication_mode(self, group: ShardGroup) -> str:
        names, commit = self._sql(group.primary, "SELECT current_setting('synchronous_standby_names'), "
                                                 "current_setting('synchronous_commit')")[0]
        return "async" if not names or commit not in ("remote_write", "remote_apply") else commit

    def _set_replication(self, group: ShardGroup, mode: str) -> None:
        if self._replication_mode(group) == mode:
            return
        self._say(f"setting replication to {mode}" if group.number == 1
                  else f"setting {group.primary}'s replication to {mode}")
        with psycopg.connect(node_url(self.cfg, group.primary), autocommit=True, connect_timeout=2) as conn:
            if mode == "async":
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("ALTER SYSTEM RESET synchronous_commit")
            else:
                # Any one replica's confirmation is enough: losing one replica does not stop writes.
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'")
                conn.execute(f"ALTER SYSTEM SET synchronous_commit = '{mode}'")
            conn.execute("SELECT pg_reload_conf()")
        self._wait(lambda: self._replication_mode(group) == mode, f"{group.primary}'s replication mode {mode}")
        self.ctl.log("replication_set", name=group.primary, mode=mode)

    def _apply_delay(self, name: str) -> int:
        """The replica's recovery_min_apply_delay, in ms."""
        return int(self._sql(name, "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'")[0][0])

    def _set_apply_delay(self, name: str, delay_ms: int) -> None:
        if self._apply_delay(name) == delay_ms:
            return
        self._say(f"setting {name}'s apply delay to {delay_ms} ms")
        with psycopg.connect(node_url(self.cfg, name), autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(delay_ms)}ms'")
            conn.execute("SELECT pg_reload_conf()")
        self._wait(lambda: self._apply_delay(name) == delay_ms, f"{name}'s apply delay")
        self.ctl.log("apply_delay_set", name=name, delay_ms=delay_ms)

    def _index_state(self, group: ShardGroup) -> tuple[bool, bool]:
        """(valid, present) of the supporting index on the shard's primary."""
        state = self._sql(group.primary, queries.INDEX_STATE, (queries.SUPPORTING_INDEX,))
        return bool(state and state[0][0]), bool(state)

    def _set_index(self, group: ShardGroup, wanted: bool) -> None:
        valid, present = self._index_state(group)
        if wanted == valid and (wanted or not present):
            return
        where = "" if group.number == 1 else f" on {group.primary}"
        with psycopg.connect(node_url(self.cfg, group.primary), autocommit=True, connect_timeout=2) as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (queries.INDEX_WORK_LOCK,)).fetchone()[0]:
                # A bulk load is rebuilding the indexes; a later pass does this once it is done.
                self._say(f"waiting for a bulk load to finish before changing the index{where}")
                return
            if present:  # dropping it, or an invalid leftover of an interrupted CREATE ... CONCURRENTLY
                self._say(f"dropping index {queries.SUPPORTING_INDEX}{where}")
                conn.execute(queries.DROP_INDEX)
            if wanted:
                self._say(f"building index {queries.SUPPORTING_INDEX}{where} (concurrently)")
                conn.execute(queries.CREATE_INDEX)
                conn.execute("ANALYZE api_post")
            # The lock goes with the session when this connection closes.
        self.ctl.log("index_set", name=group.primary, index=queries.SUPPORTING_INDEX, present=wanted)

    # --- the state Valkey's persistence (write-behind's queue lives there) ---------------------------
    def _state_valkey_pid(self) -> int | None:
        with self.ctl.lock:
            proc = self.ctl.procs.get("valkey-state")
        return proc.pid if proc else None

    def _state_fsync(self) -> str | None:
        try:
            return valkey.fsync_mode(self.state)
        except redis.RedisError:
            return None  # down or restarting: reported as not running what the topology asks

    def _set_state_fsync(self, mode: str) -> None:
        if self._state_fsync() == mode:
            return
        self._say(f"setting the state Valkey's persistence to {mode}")
        valkey.set_fsync(self.state, mode)
        self.ctl.log("state_fsync_set", mode=mode)

    # --- PgBouncer, the optional external pooler (workbench/stack/pgbouncer.py) ---------------------
    def _pgbouncer_running(self) -> bool:
        with self.ctl.lock:
            proc = self.ctl.procs.get(pgbouncer.NAME)
        return proc is not None and not proc.retired

    def _start_pgbouncer(self) -> None:
        self._say("starting pgbouncer")
        port = self.cfg.pgbouncer_port
        if ports.in_use(port):
            raise RuntimeError(f"port {port}, wanted for pgbouncer, is in use: {ports.holder(port)}")
        try:
            self.ctl._start(pgbouncer.spec(self.cfg))
        except Exception:
            self._retire_pgbouncer(grace_s=0)  # so the next pass tries again, not the supervisor forever
            raise
        self.ctl.log("pgbouncer_started", port=port)

    def _retire_pgbouncer(self, grace_s: float = topology.REFRESH_S + nodes.REFRESH_S + 0.5) -> None:
        self._say("stopping pgbouncer")
        # The app servers stop opening connections through it once they see the topology (within
        # about a second); then its safe shutdown (SIGINT) lets the requests still on it finish.
        time.sleep(grace_s)
        self._stop_process(pgbouncer.NAME)
        self.ctl.log("pgbouncer_retired")

    def _sample_pgbouncer(self, report_nodes: dict, with_counts: bool) -> None:
        """Its health from the process table (at once after a SIGKILL, so the app servers stop using
        it) and, once a second, its pool counts from the admin console's SHOW POOLS."""
        with self.ctl.lock:
            proc = self.ctl.procs.get(pgbouncer.NAME)
        if proc is None or proc.retired:
            self.last_pools = {}
            return
        node = {"healthy": proc.exited() is None and proc.healthy, "state": "pooler", "port": proc.spec.port}
        if with_counts:
            try:
                self.last_pools = pgbouncer.pools(self.cfg) if node["healthy"] else {}
            except psycopg.Error:
                self.last_pools = {}
        node.update(self.last_pools)
        if self.last_pools:  # its client connections; the primary's count holds its server connections
            node["connections"] = self.last_pools["clients_active"] + self.last_pools["clients_waiting"]
        report_nodes[pgbouncer.NAME] = node

    def _wait(self, done, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not take effect within {timeout:.0f}s")
            time.sleep(0.05)

    # --- monitoring -----------------------------------------------------------------------------
    def monitor_forever(self) -> None:
        tick = 0
        while not self.ctl.stopping.wait(self.interval):
            tick += 1
            try:
                report = self.sample(with_counts=tick % 10 == 0 or tick == 1)
                self.last_report = report
                nodes.publish(self.state, report)
            except Exception as exc:  # the primary or the state Valkey may be restarting
                self.ctl.log("monitor_failed", error=str(exc)[:300])
                self.ctl.stopping.wait(1.0)

    def _query(self, node: str, sql: str):
        """One query on a node over the monitor's own connection to it, kept open between samples
        (connecting ten times a second would fork a backend each time); reopened after an error."""
        conn = self.conns.get(node)
        try:
            if conn is None or conn.closed:
                conn = self.conns[node] = psycopg.connect(node_url(self.cfg, node), connect_timeout=1,
                                                          autocommit=True)
            return conn.execute(sql).fetchall()
        except psycopg.Error:
            self.conns.pop(node, None)
            if conn is not None:
                conn.close()
            raise

    def sample(self, with_counts: bool) -> nodes.Report:
        now = time.monotonic()
        live = self._live()
        report_nodes: dict[str, dict] = {}
        for group in self._shard_processes(live):
            self._sample_group(group, live, report_nodes, now)
        report_nodes["meta"] = self._sample_meta(live)
        for name in set(self.conns) - set(report_nodes):  # retired
            self.conns.pop(name).close()
        for name in set(self.history) - set(report_nodes):
            del self.history[name]
        # Connections and row counts are taken once a second, and at once for a node that has none
        # yet (one just started or back from a restart).
        if with_counts or any(n not in self.last_counts for n, v in report_nodes.items() if v["healthy"]):
            self._count(report_nodes)
        for name, counts in self.last_counts.items():
            if name in report_nodes or name == "meta":
                report_nodes.setdefault(name, {}).update(counts)
        # Queries each node has answered since the stack started, as counted by the app workers.
        # Meta is listed for its count only: its health is the process table's, not sampled here.
        for name, count in stats.totals(self.state).items():
            if name in report_nodes or name == "meta":
                report_nodes.setdefault(name, {})["queries"] = count
        self._sample_pgbouncer(report_nodes, with_counts)
        for name, ms in self.ctl.chaos.state()["slow_ms"].items():  # `chaos slow`: the workers add it
            report_nodes.setdefault(name, {})["slow_ms"] = ms
        return nodes.Report(time.time(), report_nodes, self.running, self.progress, self.version)

    def _sample_meta(self, live: dict) -> dict:
        """Meta's health, so that the app workers fail fast (503) while it is down, not after the
        pool's timeout: accounts, sign-ups and the shard directory live there."""
        proc = live.get("pg-meta")
        try:
            healthy = proc is not None and proc.exited() is None and bool(self._query("meta", "SELECT 1"))
        except psycopg.Error:
            healthy = False
        return {"healthy": healthy, "state": "meta" if healthy else "down", "port": self.cfg.meta_pg_port,
                "pid": getattr(proc, "pid", None), "lag_ms": 0.0, "lag_bytes": 0}

    def _sample_group(self, group: ShardGroup, live: dict, report_nodes: dict, now: float) -> None:
        """A shard's primary and its replicas; their lag is measured against that primary's WAL."""
        history = self.history.setdefault(group.primary, collections.deque(maxlen=20_000))
        # Its pid tells the app workers that the primary was started again (pools to drop).
        pid = getattr(live.get(group.process), "pid", None)
        try:
            current = int(self._query(group.primary, CURRENT_LSN)[0][0])
            rows = self._query(group.primary, STREAMS)
            if not history or current > history[-1][1]:
                history.append((now, current))
            if pid != self.analyzed.get(group.primary):
                self._analyze(group.primary, pid)
            report_nodes[group.primary] = {"healthy": True, "state": "primary", "port": group.port, "pid": pid,
                                           "shard": group.number, "lag_ms": 0.0, "lag_bytes": 0}
        except psycopg.Error:
            rows, current = [], None
            report_nodes[group.primary] = {"healthy": False, "state": "down", "port": group.port, "pid": pid,
                                           "shard": group.number, "lag_ms": None, "lag_bytes": None}
        streams = {r[0]: r for r in rows}
        for index in range(1, MAX_REPLICAS + 1):
            name = group.replica(index)
            proc = live.get(name)
            if proc is None:
                continue
            row = streams.get(slot_name(index))
            streaming = proc.exited() is None and row is not None and row[1] == "streaming"
            # The replay position comes from the replica itself: the primary only learns it from
            # the replica's status messages, up to wal_receiver_status_interval (10 s) late when idle.
            replay = None
            if (streaming and current is not None) or (current is None and proc.exited() is None):
                try:
                    replay = self._query(name, REPLAY_LSN)[0][0]
                except psycopg.Error:
                    pass
            node = {"healthy": replay is not None, "state": row[1] if row else "down",
                    "sync_state": row[2] if row else None, "port": proc.spec.port, "pid": proc.pid,
                    "shard": group.number, "lag_bytes": None, "lag_ms": None}
            if replay is not None and current is None:
                # Its primary is down: nothing new is written, so the replica is as fresh as it will
                # get and keeps serving reads (the lag it had when the primary went is kept).
                node.update(state="primary down", lag_ms=self.last_lag.get(name, 0.0))
            elif replay is not None:
                node["lag_bytes"] = max(current - int(replay), 0)
                node["lag_ms"] = round(_lag_ms(history, int(replay), current, now), 1)
                self.last_lag[name] = node["lag_ms"]
            self._note_health(name, node["healthy"], now)
            report_nodes[name] = node

    def _analyze(self, name: str, pid: int | None) -> None:
        """Once per primary process: its row counts come from the statistics, which a crash restart
        resets and a promoted standby never had, so the report would count 0 users until
        autovacuum came by. ANALYZE samples the tables (about 0.1 s for the demo data)."""
        self.analyzed[name] = pid
        try:
            self._query(name, "ANALYZE api_user, api_post")
        except psycopg.Error:
            pass  # not migrated yet: a new shard's statistics start at 0 and count its inserts

    def _note_health(self, name: str, healthy: bool, now: float) -> None:
        """Log the moment a replica leaves or rejoins the rotation (the router follows the report)."""
        if not healthy and name not in self.down_since:
            self.down_since[name] = now
            self.ctl.log("replica_out_of_rotation", name=name)
        elif healthy and name in self.down_since:
            down = now - self.down_since.pop(name)
            self.ctl.log("replica_back_in_rotation", name=name, out_s=round(down, 2))

    def _count(self, report_nodes: dict) -> None:
        """Client connections on every node that is up; on each primary also its users and posts; and
        meta's directory: its users per shard, exact."""
        counts = {}
        for name, node in report_nodes.items():
            if not node.get("healthy"):
                continue
            try:
                counts[name] = {"connections": self._query(name, CONNECTIONS)[0][0]}
                if node["state"] == "primary":
                    rows = dict(self._query(name, ROW_COUNTS))
                    counts[name].update(users=rows.get("api_user"), posts=rows.get("api_post"))
            except psycopg.Error:
                counts.pop(name, None)
        try:
            counts.setdefault("meta", {})["directory"] = {str(k): users for k, users in
                                                          self._query("meta", DIRECTORY_COUNTS)}
        except psycopg.Error:
            pass
        self.last_counts = counts


def _lag_ms(history, replay: int, current: int, now: float) -> float:
    """How long ago the primary first had WAL that this replica has not replayed yet."""
    if replay >= current:
        return 0.0
    lsns = [lsn for _, lsn in history]
    k = bisect.bisect_right(lsns, replay)  # the first sample that was past the replay position
    return (now - history[k][0]) * 1000 if k < len(history) else 0.0
