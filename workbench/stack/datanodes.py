"""The controller's side of the data tier: it makes the running PostgreSQL nodes match the topology
and reports what they are doing.

- `apply` (its own thread) carries out the topology: streaming replicas made with
  `pg_basebackup -R` and started or retired, the replication mode (synchronous_standby_names and
  synchronous_commit on the primary), each replica's apply delay (recovery_min_apply_delay, for
  the stale-read and region lessons), the supporting index (query optimization), and PgBouncer
  in front of the primary when the topology asks for it (workbench/stack/pgbouncer.py).
- `monitor` (another thread) samples every node each `sample_interval_s`: health, replay lag in
  WAL bytes and in milliseconds, connections. It publishes the sample with what runs and what is
  being done (api.routing.nodes), which the router, `status` and the admin API read.

Lag: each replica is asked for its replay position (pg_last_wal_replay_lsn); the primary's
pg_stat_replication only learns it from the replica's status messages, which can be 10 s apart
when the replica is idle. In WAL bytes, lag is the primary's current position minus that. In
milliseconds, the monitor remembers when it first saw each primary WAL position, so a replica that
has not replayed position P is (now - first time P was seen) behind: exact to one sample interval,
and unlike pg_stat_replication.replay_lag it does not go blank while a replica is idle or delayed.
The monitor keeps one connection per node open between samples.
"""
from __future__ import annotations

import bisect
import collections
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import redis

from api import queries
from api.caching import metrics as cache_metrics
from api.routing import nodes, stats
from workbench import parameters, topology

from . import binaries, pgbouncer, ports, postgres
from .process import as_user

MAX_REPLICAS = 4
APPLY_INTERVAL_S = 0.25
REAPPLY_S = 5.0


def slot_name(index: int) -> str:
    return f"replica_{index}"  # also the replica's cluster_name, which it reports as application_name


class DataNodes:
    def __init__(self, ctl):
        self.ctl = ctl
        self.cfg = ctl.cfg
        self.state = redis.Redis.from_url(self.cfg.state_url, socket_timeout=2, socket_connect_timeout=2)
        self.store = topology.Store(self.state)
        self.interval = parameters.lag()["sample_interval_s"]
        self.progress: str | None = None
        self.version = 0
        self.running: dict = {}
        self.history: collections.deque = collections.deque(maxlen=20_000)  # (monotonic time, primary LSN)
        self.down_since: dict[str, float] = {}
        self.conns: dict[str, psycopg.Connection] = {}  # the monitor's own, one per node
        self.state.delete(stats.KEY, cache_metrics.KEY)  # counts start with the stack

    # --- connections ----------------------------------------------------------------------------
    def _url(self, node: str) -> str:
        if node == "primary":
            return self.cfg.data_database_url
        return self.cfg.replica_url(int(node.split("-")[1]))

    def _sql(self, node: str, sql: str, params=(), autocommit=True):
        with psycopg.connect(self._url(node), connect_timeout=2, autocommit=autocommit) as conn:
            return conn.execute(sql, params).fetchall()

    def replica_names(self) -> list[str]:
        with self.ctl.lock:
            return sorted(n for n, p in self.ctl.procs.items() if n.startswith("replica-") and not p.retired)

    # --- carrying out the topology -------------------------------------------------------------
    def apply_forever(self) -> None:
        applied_version, applied_at = -1, 0.0
        while not self.ctl.stopping.wait(APPLY_INTERVAL_S):
            try:
                version = self.store.version()
                # A new version, or a periodic pass that puts back anything changed behind our back.
                if version == applied_version and time.monotonic() - applied_at < REAPPLY_S:
                    continue
                applied_at = time.monotonic()
                doc = self.store.read()
                self.version = doc.version
                self.apply(doc.topology)
                applied_version = doc.version
                self.progress = None
            except Exception as exc:  # report it and try again; the stack keeps running meanwhile
                self.progress = f"failed, retrying: {exc}"
                self.ctl.log("topology_apply_failed", error=str(exc))
                self.ctl.stopping.wait(2.0)

    def apply(self, t: topology.Topology) -> None:
        if t.replication == "async":
            self._set_replication("async")  # before any replica goes, so no commit waits on it
        for i in range(1, MAX_REPLICAS + 1):
            name = f"replica-{i}"
            if i <= t.replicas and name not in self.replica_names():
                self._start_replica(i)
            elif i > t.replicas and name in self.replica_names():
                self._retire_replica(i)
        self._set_replication(t.replication)
        for name, delay in t.replica_delays_ms().items():
            self._set_apply_delay(name, delay)
        self._set_index(t.indexes.post_user_time)
        if t.pgbouncer and not self._pgbouncer_running():
            self._start_pgbouncer()
        elif not t.pgbouncer and self._pgbouncer_running():
            self._retire_pgbouncer()
        self.running = self.read_running()

    def read_running(self) -> dict:
        names = self.replica_names()
        delays = {name: self._apply_delay(name) for name in names}
        index = self._sql("primary", queries.INDEX_STATE, (queries.SUPPORTING_INDEX,))
        return {"replicas": len(names), "replication": self._replication_mode(),
                "replica_delays_ms": delays, "indexes.post_user_time": bool(index and index[0][0]),
                "pgbouncer": self._pgbouncer_running(), "app_servers": self.cfg.app_servers}

    def _say(self, progress: str) -> None:
        self.progress = progress
        self.ctl.log("topology_progress", progress=progress)

    def _start_replica(self, index: int) -> None:
        name = f"replica-{index}"
        data_dir = self.cfg.data_dir / "pg" / name
        if not (data_dir / "PG_VERSION").exists():
            self._say(f"copying the primary into {name} (pg_basebackup)")
            self._base_backup(index, data_dir)
        self._say(f"starting {name}")
        port = self.cfg.replica_port(index)
        if ports.in_use(port):
            raise RuntimeError(f"port {port}, wanted for {name}, is in use: {ports.holder(port)}")
        spec = postgres.spec(name, data_dir, self.cfg.replica_port(index), self.cfg.log_dir / f"pg-{name}.log",
                             settings={"cluster_name": slot_name(index), "hot_standby_feedback": "on"})
        self.ctl._start(spec)
        self.ctl.log("replica_started", name=name, port=spec.port)
        self.running = self.read_running()  # what runs is reported as each step lands

    def _base_backup(self, index: int, data_dir: Path) -> None:
        # A fresh slot keeps the primary from recycling WAL the replica has not received yet.
        self._drop_slot(index)
        if data_dir.exists():
            shutil.rmtree(data_dir)
        port = self.cfg.data_pg_port
        argv = [str(binaries.postgres_bin_dir() / "pg_basebackup"), "-D", str(data_dir), "-h", "127.0.0.1",
                "-p", str(port), "-U", postgres.DB_USER, "-X", "stream", "-R", "-C", "-S", slot_name(index),
                "--checkpoint=fast", "--no-sync"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                **as_user(postgres.run_as()))
        if result.returncode != 0:
            raise RuntimeError(f"pg_basebackup for replica-{index} failed: {result.stderr.strip()[-500:]}")

    def _retire_replica(self, index: int) -> None:
        name = f"replica-{index}"
        self._say(f"stopping {name}")
        with self.ctl.lock:
            proc = self.ctl.procs.get(name)
        if proc:
            proc.retire()
            with self.ctl.lock:
                self.ctl.procs.pop(name, None)
            self.ctl._save_pids()
        self._drop_slot(index)
        # A retired replica's copy only goes staler; the next one starts from a fresh base backup.
        shutil.rmtree(self.cfg.data_dir / "pg" / name, ignore_errors=True)
        self.ctl.log("replica_retired", name=name)
        self.running = self.read_running()

    def _drop_slot(self, index: int) -> None:
        self._sql("primary", "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE slot_name = %s AND NOT active", (slot_name(index),))

    def _replication_mode(self) -> str:
        names, commit = self._sql("primary", "SELECT current_setting('synchronous_standby_names'), "
                                             "current_setting('synchronous_commit')")[0]
        return "async" if not names or commit not in ("remote_write", "remote_apply") else commit

    def _set_replication(self, mode: str) -> None:
        if self._replication_mode() == mode:
            return
        self._say(f"setting replication to {mode}")
        with psycopg.connect(self._url("primary"), autocommit=True, connect_timeout=2) as conn:
            if mode == "async":
                conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
                conn.execute("ALTER SYSTEM RESET synchronous_commit")
            else:
                # Any one replica's confirmation is enough: losing one replica does not stop writes.
                conn.execute("ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (*)'")
                conn.execute(f"ALTER SYSTEM SET synchronous_commit = '{mode}'")
            conn.execute("SELECT pg_reload_conf()")
        self._wait(lambda: self._replication_mode() == mode, f"replication mode {mode}")
        self.ctl.log("replication_set", mode=mode)

    def _apply_delay(self, name: str) -> int:
        """The replica's recovery_min_apply_delay, in ms."""
        return int(self._sql(name, "SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'")[0][0])

    def _set_apply_delay(self, name: str, delay_ms: int) -> None:
        if self._apply_delay(name) == delay_ms:
            return
        self._say(f"setting {name}'s apply delay to {delay_ms} ms")
        with psycopg.connect(self._url(name), autocommit=True, connect_timeout=2) as conn:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(delay_ms)}ms'")
            conn.execute("SELECT pg_reload_conf()")
        self._wait(lambda: self._apply_delay(name) == delay_ms, f"{name}'s apply delay")
        self.ctl.log("apply_delay_set", name=name, delay_ms=delay_ms)

    def _set_index(self, wanted: bool) -> None:
        state = self._sql("primary", queries.INDEX_STATE, (queries.SUPPORTING_INDEX,))
        valid = bool(state and state[0][0])
        if wanted == valid and (wanted or not state):
            return
        with psycopg.connect(self._url("primary"), autocommit=True, connect_timeout=2) as conn:
            if not conn.execute("SELECT pg_try_advisory_lock(%s)", (queries.INDEX_WORK_LOCK,)).fetchone()[0]:
                # A bulk load is rebuilding the indexes; a later pass does this once it is done.
                self._say("waiting for a bulk load to finish before changing the index")
                return
            if state:  # dropping it, or an invalid leftover of an interrupted CREATE ... CONCURRENTLY
                self._say(f"dropping index {queries.SUPPORTING_INDEX}")
                conn.execute(queries.DROP_INDEX)
            if wanted:
                self._say(f"building index {queries.SUPPORTING_INDEX} (concurrently)")
                conn.execute(queries.CREATE_INDEX)
                conn.execute("ANALYZE api_post")
            # The lock goes with the session when this connection closes.
        self.ctl.log("index_set", index=queries.SUPPORTING_INDEX, present=wanted)

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
        with self.ctl.lock:
            proc = self.ctl.procs.get(pgbouncer.NAME)
        if proc:
            proc.retire()
            with self.ctl.lock:
                self.ctl.procs.pop(pgbouncer.NAME, None)
            self.ctl._save_pids()
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

    last_pools: dict = {}

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
                report = self.sample(with_connections=tick % 10 == 0 or tick == 1)
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
                conn = self.conns[node] = psycopg.connect(self._url(node), connect_timeout=1, autocommit=True)
            return conn.execute(sql).fetchall()
        except psycopg.Error:
            self.conns.pop(node, None)
            if conn is not None:
                conn.close()
            raise

    def sample(self, with_connections: bool) -> nodes.Report:
        now = time.monotonic()
        report_nodes: dict[str, dict] = {}
        try:
            current = int(self._query("primary", "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")[0][0])
            rows = self._query("primary", "SELECT application_name, state, sync_state FROM pg_stat_replication")
            if not self.history or current > self.history[-1][1]:
                self.history.append((now, current))
            report_nodes["primary"] = {"healthy": True, "state": "primary", "port": self.cfg.data_pg_port,
                                       "lag_ms": 0.0, "lag_bytes": 0}
        except psycopg.Error:
            rows, current = [], None
            report_nodes["primary"] = {"healthy": False, "state": "down", "port": self.cfg.data_pg_port,
                                       "lag_ms": None, "lag_bytes": None}
        streams = {r[0]: r for r in rows}
        with self.ctl.lock:
            procs = {n: p for n, p in self.ctl.procs.items() if n.startswith("replica-") and not p.retired}
        for name in list(self.conns):
            if name.startswith("replica-") and name not in procs:  # retired
                self.conns.pop(name).close()
        for name, proc in sorted(procs.items()):
            row = streams.get(slot_name(int(name.split("-")[1])))
            streaming = proc.exited() is None and row is not None and row[1] == "streaming"
            # The replay position comes from the replica itself: the primary only learns it from
            # the replica's status messages, up to wal_receiver_status_interval (10 s) late when idle.
            replay = None
            if streaming and current is not None:
                try:
                    replay = self._query(name, "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')")[0][0]
                except psycopg.Error:
                    pass
            node = {"healthy": replay is not None, "state": row[1] if row else "down",
                    "sync_state": row[2] if row else None, "port": proc.spec.port, "pid": proc.pid,
                    "lag_bytes": None, "lag_ms": None}
            if replay is not None:
                node["lag_bytes"] = max(current - int(replay), 0)
                node["lag_ms"] = round(self._lag_ms(int(replay), current, now), 1)
            self._note_health(name, node["healthy"], now)
            report_nodes[name] = node
        # Connections are counted once a second, and at once for a node that has no count yet
        # (a replica just started or back from a restart).
        if with_connections or any(n not in self.last_connections for n, v in report_nodes.items() if v["healthy"]):
            self._connections(report_nodes)
        elif self.last_connections:
            for name, count in self.last_connections.items():
                if name in report_nodes:
                    report_nodes[name]["connections"] = count
        # Queries each node has answered since the stack started, as counted by the app workers.
        # Meta is listed for its count only: its health is the process table's, not sampled here.
        for name, count in stats.totals(self.state).items():
            if name in report_nodes or name == "meta":
                report_nodes.setdefault(name, {})["queries"] = count
        self._sample_pgbouncer(report_nodes, with_connections)
        return nodes.Report(time.time(), report_nodes, self.running, self.progress, self.version)

    last_connections: dict = {}
    last_report: nodes.Report | None = None

    def _lag_ms(self, replay: int, current: int, now: float) -> float:
        """How long ago the primary first had WAL that this replica has not replayed yet."""
        if replay >= current:
            return 0.0
        lsns = [lsn for _, lsn in self.history]
        k = bisect.bisect_right(lsns, replay)  # the first sample that was past the replay position
        return (now - self.history[k][0]) * 1000 if k < len(self.history) else 0.0

    def _note_health(self, name: str, healthy: bool, now: float) -> None:
        """Log the moment a replica leaves or rejoins the rotation (the router follows the report)."""
        if not healthy and name not in self.down_since:
            self.down_since[name] = now
            self.ctl.log("replica_out_of_rotation", name=name)
        elif healthy and name in self.down_since:
            down = now - self.down_since.pop(name)
            self.ctl.log("replica_back_in_rotation", name=name, out_s=round(down, 2))

    def _connections(self, report_nodes: dict) -> None:
        counts = {}
        for name, node in report_nodes.items():
            if not node.get("healthy") and name != "primary":
                continue
            try:
                counts[name] = self._query(name, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                                                 "'client backend' AND datname = 'workbench' AND pid <> pg_backend_pid()")[0][0]
            except psycopg.Error:
                continue
            node["connections"] = counts[name]
        self.last_connections = counts
