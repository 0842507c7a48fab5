"""Backups of every PostgreSQL primary (each shard's and `meta`'s), consistent across them at a
named point, and point-in-time restore from them with the archived WAL (archive.py).

A backup is a base backup (pg_basebackup) of each lineage's current primary, then one consistency
barrier over all of them: on every node in a fixed order (meta, then shards 1..N), a transaction
LOCKs every table IN EXCLUSIVE MODE (writes wait, reads go on); with all of them held,
pg_create_restore_point(name) on each, and the snapshot of that instant is exported; then all
commit. No write commits on any node between the first lock and the last restore point, so the
points together are one cut of the whole system: a write acknowledged before the barrier began is
before it on its node, one sent after it ended is after it. Each node's tables are counted and
checksummed in the exported snapshot (after the locks are released), into the manifest, which a
restore to the point is checked against.

A restore copies each lineage's base backup, then replays the archive (restore_command) up to the
point, a time (recovery_target_time), or the end of what was archived, and promotes. As a drill
it runs in <data dir>/backup/drill on ports of its own beside the live stack and is thrown away
after; in place it replaces the stack's data directories while the stack is down.
"""
from __future__ import annotations

import datetime as dt
import json
import pwd
import signal
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import psycopg
import redis

from api.routing import shards
from workbench import parameters, topology

from . import archive, binaries, config, launcher, ports, postgres
from .process import ProcessSpec, Supervised, alive, as_user, stop_tree

DRILL_PORT_OFFSET = 150  # drill nodes at service base + 150.. (free: see config.py's port map)
LOCK_TIMEOUT_S = 2.0
BARRIER_ATTEMPTS = 5
ARCHIVE_WAIT_S = 60.0
RECOVERY_TIMEOUT_S = 600.0
TABLES = ("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
          "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")
# Order-free: a sum of 64-bit hashes of each row's text, with the row count.
CHECKSUM = "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text FROM {} t"
NOT_REACHED = "recovery ended before configured recovery target was reached"


class BackupError(RuntimeError):
    """Said to the user as it is: what is wrong and what to do."""


@dataclass(frozen=True)
class Node:
    lineage: str   # meta, primary, shard-k
    url: str       # its current primary
    database: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%dT%H%M%S") + f"{moment.microsecond // 1000:03d}Z"


def _lineage_port(cfg: config.StackConfig, lineage: str) -> int:
    if lineage == "meta":
        return cfg.meta_pg_port
    return cfg.shard_pg_port(shards.parse_alias(lineage)[0])


def _url(port: int, database: str) -> str:
    return f"postgres://{postgres.DB_USER}@127.0.0.1:{port}/{database}"


def _in_recovery(url: str) -> bool | None:
    """None when nothing answers there."""
    try:
        with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except psycopg.OperationalError:
        return None


def primaries(cfg: config.StackConfig) -> list[Node]:
    """Meta, then every shard that has data on disk, each with the one node of it that is not in
    recovery (after a failover, a promoted replica)."""
    if cfg.database_url or cfg.meta_database_url:
        raise BackupError("the stack uses an external PostgreSQL (DATABASE_URL / META_DATABASE_URL): back it "
                          "up with its own provider's tools; `backup` covers the databases `up` runs")
    found = [Node("meta", cfg.meta_db_url, "workbench_meta")]
    if _in_recovery(cfg.meta_db_url) is None:
        raise BackupError(f"meta does not answer on port {cfg.meta_pg_port}: is the stack up? (`python manage.py up`)")
    for k in range(1, shards.MAX_SHARDS + 1):
        aliases = [shards.primary_alias(k)] + [shards.replica_alias(k, i) for i in range(1, shards.MAX_REPLICAS + 1)]
        if not any((cfg.data_dir / "pg" / a).exists() for a in aliases):
            continue
        ports_ = [cfg.shard_pg_port(k)] + [cfg.shard_replica_port(k, i) for i in range(1, shards.MAX_REPLICAS + 1)]
        writable = [_url(p, "workbench") for a, p in zip(aliases, ports_)
                    if (cfg.data_dir / "pg" / a).exists() and _in_recovery(_url(p, "workbench")) is False]
        if len(writable) > 1:
            raise BackupError(f"{shards.primary_alias(k)} has {len(writable)} nodes accepting writes "
                              f"({', '.join(writable)}): fence the old primary before backing up")
        if not writable:
            raise BackupError(f"{shards.primary_alias(k)} has no primary answering: is the stack up, "
                              "or is a failover in progress?")
        found.append(Node(shards.primary_alias(k), writable[0], "workbench"))
    return found


def _check_archiving(nodes: list[Node]) -> None:
    for node in nodes:
        with psycopg.connect(node.url, connect_timeout=2, autocommit=True) as conn:
            mode = conn.execute("SHOW archive_mode").fetchone()[0]
        if mode not in ("on", "always"):
            raise BackupError(f"{node.lineage} runs without WAL archiving (archive_mode={mode}): it was started "
                              "before archiving was added; restart the stack (`down`, then `up`) and back up again")


def _own(path: Path) -> None:
    """Directories PostgreSQL's OS user writes into (its archive, base backups, restored copies)."""
    path.mkdir(parents=True, exist_ok=True)
    user = postgres.run_as()
    if user:
        postgres.ensure_reachable(path)
        entry = pwd.getpwnam(user)
        shutil.chown(path, entry.pw_uid, entry.pw_gid)


def _run(argv: list[str], what: str, timeout: float = 1800) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **as_user(postgres.run_as()))
    if result.returncode != 0:
        raise BackupError(f"{what} failed: {(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


# --- backup ------------------------------------------------------------------------------------------
def take(cfg: config.StackConfig, out=print, keep: int | None = None) -> dict:
    """A base backup of every primary, then the barrier; returns the manifest (also written to disk)."""
    nodes = primaries(cfg)
    _check_archiving(nodes)
    started = _now()
    backup_id = _stamp(started)
    root = archive.backup_root(cfg.data_dir)
    directory = root / "base" / backup_id
    for node in nodes:
        _own(archive.wal_dir(cfg.data_dir, node.lineage))  # archiving of this lineage starts now
    _own(directory)
    manifest = {"id": backup_id, "started": started.isoformat(), "placement": _placement(cfg), "nodes": {}}
    try:
        _take(cfg, nodes, directory, manifest, out)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # a backup without its manifest is no backup
        raise
    out(f"backup {backup_id} in {directory} ({(_now() - started).total_seconds():.1f}s)")
    prune(cfg, keep if keep is not None else parameters.load().get("backup", {}).get("keep", 2), out=out)
    return manifest


def _take(cfg: config.StackConfig, nodes: list[Node], directory: Path, manifest: dict, out) -> None:
    bindir = binaries.postgres_bin_dir()
    backup_id = manifest["id"]
    for node in nodes:
        t0 = time.monotonic()
        info = psycopg.conninfo.conninfo_to_dict(node.url)
        _run([str(bindir / "pg_basebackup"), "-D", str(directory / node.lineage), "-h", info["host"],
              "-p", str(info["port"]), "-U", postgres.DB_USER, "-X", "stream", "--checkpoint=fast",
              "--label", f"workbench {backup_id}"], f"pg_basebackup of {node.lineage}")
        size = sum(f.stat().st_size for f in (directory / node.lineage).rglob("*") if f.is_file())
        manifest["nodes"][node.lineage] = {"database": node.database, "source": node.url,
                                           "base_s": round(time.monotonic() - t0, 2), "base_bytes": size}
        out(f"  base backup of {node.lineage}: {size / 2**20:.0f} MiB in {time.monotonic() - t0:.1f}s")
    point = f"backup-{backup_id}"
    cut = barrier(nodes, point)
    for lineage, values in cut["nodes"].items():
        manifest["nodes"][lineage].update(values)
    manifest.update(point=point, point_time=cut["time"], barrier_began=cut["began"], barrier_ended=cut["ended"],
                    write_pause_ms=cut["write_pause_ms"], barrier_attempts=cut["attempts"])
    out(f"  restore point {point} on {len(nodes)} nodes at {cut['time']} "
        f"(writes paused {cut['write_pause_ms']:.1f} ms)")
    archive_now(cfg, nodes)
    manifest["finished"] = _now().isoformat()
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _placement(cfg: config.StackConfig) -> dict | None:
    """Shard count and strategy at backup time (the topology, kept in the state Valkey, is not
    restored: a restore in place must run under the same placement)."""
    try:
        t = topology.Store(redis.Redis.from_url(cfg.state_url, socket_timeout=2)).read().topology
        return {"shards": t.shards, "sharding": t.sharding}
    except redis.RedisError:
        return None


def barrier(nodes: list[Node], point: str) -> dict:
    """The same restore point on every node, with writes everywhere paused across all of them."""
    tables = {}
    for node in nodes:
        with psycopg.connect(node.url, connect_timeout=5, autocommit=True) as conn:
            tables[node.lineage] = [row[0] for row in conn.execute(TABLES)]
    for attempt in range(1, BARRIER_ATTEMPTS + 1):
        lockers = [psycopg.connect(n.url, connect_timeout=5) for n in nodes]
        readers = []
        try:
            for conn in lockers:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            t0, began = time.monotonic(), _now()
            for node, conn in zip(nodes, lockers):
                # LOCK takes no snapshot: the snapshot of this repeatable-read transaction is taken by
                # the first query after it, so it sees every write that committed before the lock.
                conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT_S * 1000)}ms'")
                if tables[node.lineage]:
                    conn.execute(f"LOCK TABLE {', '.join(tables[node.lineage])} IN EXCLUSIVE MODE")
            moment = _now()
            # pg_walfile_name(lsn - 1): the segment holding the record's last byte (an LSN on a
            # segment boundary names the next segment).
            marks = [conn.execute("SELECT lsn::text, pg_walfile_name(lsn - 1), pg_export_snapshot(), "
                                  "(SELECT timeline_id FROM pg_control_checkpoint()) "
                                  "FROM pg_create_restore_point(%s) AS lsn", (point,)).fetchone() for conn in lockers]
            for node, (_, _, snapshot, _) in zip(nodes, marks):
                reader = psycopg.connect(node.url, connect_timeout=5)
                readers.append(reader)
                reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                reader.execute(f"SET TRANSACTION SNAPSHOT '{snapshot}'")
            for conn in lockers:
                conn.commit()
            pause_ms, ended = (time.monotonic() - t0) * 1000, _now()
        except psycopg.errors.LockNotAvailable:
            # A long transaction holds a table: give the writers queued behind our locks their turn.
            for conn in lockers + readers:
                conn.close()
            time.sleep(0.5 * attempt)
            continue
        finally:
            for conn in lockers:
                conn.close()
        result = {"time": moment.isoformat(), "began": began.isoformat(), "ended": ended.isoformat(),
                  "write_pause_ms": round(pause_ms, 1), "attempts": attempt, "nodes": {}}
        for node, reader, (lsn, walfile, _, timeline) in zip(nodes, readers, marks):
            sums = {t: dict(zip(("rows", "sum"), reader.execute(CHECKSUM.format(t)).fetchone()))
                    for t in tables[node.lineage]}
            reader.close()
            result["nodes"][node.lineage] = {"point_lsn": lsn, "point_wal": walfile, "timeline": timeline,
                                             "tables": sums}
        return result
    raise BackupError(f"writes could not be paused on every node within {LOCK_TIMEOUT_S:.0f}s in "
                      f"{BARRIER_ATTEMPTS} attempts (a long transaction, such as a seed or a reshard, holds "
                      "a table): try again once it is done")


def archive_now(cfg: config.StackConfig, nodes: list[Node], strict: bool = True) -> None:
    """Close each node's current WAL segment and wait until it is archived: from then on the archive
    holds everything the node had written, and survives the loss of its disk. Not strict (a drill
    beside a stack that may be partly down), a node that does not answer or archive is passed over."""
    for node in nodes:
        try:
            with psycopg.connect(node.url, connect_timeout=5, autocommit=True) as conn:
                walfile = conn.execute("SELECT pg_walfile_name(pg_switch_wal() - 1)").fetchone()[0]
        except psycopg.OperationalError:
            if strict:
                raise
            continue
        path = archive.wal_dir(cfg.data_dir, node.lineage) / walfile
        deadline = time.monotonic() + ARCHIVE_WAIT_S
        while not path.exists():
            if time.monotonic() > deadline:
                if not strict:
                    break
                raise BackupError(f"WAL segment {walfile} of {node.lineage} was not archived within "
                                  f"{ARCHIVE_WAIT_S:.0f}s; see pg_stat_archiver on it and its log in {cfg.log_dir}")
            time.sleep(0.05)


def manifests(cfg: config.StackConfig) -> list[dict]:
    """Every finished backup, oldest first."""
    found = []
    for path in sorted((archive.backup_root(cfg.data_dir) / "base").glob("*/manifest.json")):
        found.append(json.loads(path.read_text()))
    return found


def prune(cfg: config.StackConfig, keep: int, out=print) -> None:
    """Keep the newest `keep` backups, and the archived WAL from the oldest of them on."""
    if keep < 1:
        raise BackupError("keep must be at least 1")
    kept = manifests(cfg)[-keep:]
    root = archive.backup_root(cfg.data_dir) / "base"
    for path in root.iterdir() if root.exists() else []:
        if path.is_dir() and path.name not in {m["id"] for m in kept} and (path / "manifest.json").exists():
            shutil.rmtree(path)
            out(f"  removed backup {path.name} (keeping {keep})")
    if not kept:
        return
    for lineage in kept[0]["nodes"]:
        label = (root / kept[0]["id"] / lineage / "backup_label").read_text()
        oldest = label.split("(file ", 1)[1].split(")", 1)[0]  # START WAL LOCATION: 0/2000028 (file ...)
        _run([str(binaries.postgres_bin_dir() / "pg_archivecleanup"),
              str(archive.wal_dir(cfg.data_dir, lineage)), oldest], f"pg_archivecleanup of {lineage}")


# --- restore -----------------------------------------------------------------------------------------
@dataclass
class Restored:
    """What a restore made: each lineage's node (URL), how long it took, and the checks."""
    target: dict
    manifest: dict
    urls: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    mismatches: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)
    pids: dict = field(default_factory=dict)  # a drill's running nodes


def parse_time(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError:
        raise BackupError(f"--to-time {text!r} is not an ISO 8601 time, e.g. 2026-11-28T12:30:05.250+00:00") from None
    if moment.tzinfo is None:
        raise BackupError(f"--to-time {text!r} has no time zone: add one, e.g. +00:00 or Z")
    return moment


def choose(cfg: config.StackConfig, point: str | None = None, moment: dt.datetime | None = None,
           to_end: bool = False) -> tuple[dict, dict]:
    """The backup to start from and the recovery target; BackupError for what cannot be restored."""
    if sum(x is not None and x is not False for x in (point, moment, to_end)) > 1:
        raise BackupError("give one target: --to-point, --to-time or --to-end")
    found = manifests(cfg)
    if not found:
        raise BackupError(f"no backups in {archive.backup_root(cfg.data_dir) / 'base'}: "
                          "take one first (`python manage.py backup`)")
    if moment is not None:
        if moment > _now():
            raise BackupError(f"--to-time {moment.isoformat()} is in the future")
        earlier = [m for m in found if dt.datetime.fromisoformat(m["point_time"]) <= moment]
        if not earlier:
            raise BackupError(f"--to-time {moment.isoformat()} is before the oldest backup's point "
                              f"({found[0]['point_time']}): the earliest time that can be restored")
        return earlier[-1], {"time": moment.isoformat()}
    if to_end:
        return found[-1], {"end": True}
    if point is None:
        return found[-1], {"point": found[-1]["point"]}
    for m in found:
        if m["point"] == point:
            return m, {"point": point}
    raise BackupError(f"no restore point named {point!r}; known: {', '.join(m['point'] for m in found)}")


def _settings(target: dict, wal: Path) -> dict:
    settings = {"restore_command": archive.restore_command(wal), "recovery_target_action": "promote",
                "recovery_target_timeline": "latest",
                # Settings an ALTER SYSTEM on the source may have left in postgresql.auto.conf that
                # would stall a restored node: a replica's apply delay, a synchronous standby to wait for.
                "recovery_min_apply_delay": "0", "synchronous_standby_names": ""}
    if "point" in target:
        settings["recovery_target_name"] = target["point"]
    elif "time" in target:
        settings["recovery_target_time"] = target["time"]
    return settings


def drill_root(cfg: config.StackConfig) -> Path:
    return archive.backup_root(cfg.data_dir) / "drill"


def stack_is_down(cfg: config.StackConfig) -> None:
    if launcher.controller_pid(cfg) or launcher._leftovers(cfg):
        raise BackupError("the stack is running: an in-place restore replaces its data directories, so stop it "
                          "first (`python manage.py down`), or restore as a drill (`--drill`) beside it")


def restore(cfg: config.StackConfig, *, point: str | None = None, moment: dt.datetime | None = None,
            to_end: bool = False, in_place: bool = False, out=print) -> Restored:
    """Restore every lineage of the chosen backup. A drill leaves its nodes running (discard_drill
    stops them); in place, the nodes are stopped again once promoted, for `up` to start."""
    manifest, target = choose(cfg, point, moment, to_end)
    if in_place:
        stack_is_down(cfg)
        newer = [p.name for p in sorted((cfg.data_dir / "pg").glob("shard-*")) if archive.lineage(p.name) == p.name
                 and p.name not in manifest["nodes"]]
        if newer:
            raise BackupError(f"{', '.join(newer)} exist now but not in backup {manifest['id']} (of "
                              f"{', '.join(manifest['nodes'])}): restored in place, the others would not know "
                              "their users. Reshard back to the backup's shard count first, or restore as a drill")
    else:
        discard_drill(cfg)
        try:
            archive_now(cfg, primaries(cfg), strict=False)
        except BackupError:
            pass  # the stack is down: the archive holds all there is
    result = Restored(target, manifest)
    base = archive.backup_root(cfg.data_dir) / "base" / manifest["id"]
    stamp = _stamp(_now())
    jobs = []
    for i, lineage in enumerate(manifest["nodes"]):
        if in_place:
            data_dir, port = cfg.data_dir / "pg" / lineage, _lineage_port(cfg, lineage)
            _set_aside(cfg, lineage, stamp, out)
        else:
            data_dir, port = drill_root(cfg) / lineage, cfg.service_port_base + DRILL_PORT_OFFSET + i
        if ports.in_use(port):
            raise BackupError(f"port {port}, wanted for the restored {lineage}, is in use by {ports.holder(port)}")
        jobs.append((lineage, data_dir, port))
    _own(drill_root(cfg) if not in_place else cfg.data_dir / "pg")
    errors: list[Exception] = []
    threads = [threading.Thread(target=_guard(errors, _recover_one),
                                args=(cfg, result, base, lineage, data_dir, port, in_place, out))
               for lineage, data_dir, port in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not in_place:
        _save_drill(cfg, result)
    if errors:
        if not in_place:
            discard_drill(cfg)
        raise errors[0]
    if "point" in target:
        _compare(result, manifest)
    return result


def _guard(errors: list, fn):
    def run(*args):
        try:
            fn(*args)
        except Exception as exc:
            errors.append(exc)
    return run


def _set_aside(cfg: config.StackConfig, lineage: str, stamp: str, out) -> None:
    """In place: the lineage's current directories go (its replicas are made again by `up` from the
    restored primary); the primary's own is moved aside, not deleted, in case it is wanted back."""
    aside = archive.backup_root(cfg.data_dir) / "replaced" / stamp
    for alias in _aliases(lineage):
        path = cfg.data_dir / "pg" / alias
        if not path.exists():
            continue
        if alias == lineage:
            aside.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(aside / alias))
            out(f"  moved the old {alias} aside to {aside / alias} (delete it once the restore is accepted)")
        else:
            shutil.rmtree(path)  # a replica (or a promoted one): `up` copies the restored primary again


def _aliases(lineage: str) -> list[str]:
    if lineage == "meta":
        return ["meta"]
    k = shards.parse_alias(lineage)[0]
    return [shards.primary_alias(k)] + [shards.replica_alias(k, i) for i in range(1, shards.MAX_REPLICAS + 1)]


def _recover_one(cfg, result: Restored, base: Path, lineage: str, data_dir: Path, port: int,
                 in_place: bool, out) -> None:
    t0 = time.monotonic()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    _run(["cp", "-a", str(base / lineage), str(data_dir)], f"copying the base backup of {lineage}")
    (data_dir / "standby.signal").unlink(missing_ok=True)
    _run(["touch", str(data_dir / "recovery.signal")], f"writing recovery.signal for {lineage}")
    settings = _settings(result.target, archive.wal_dir(cfg.data_dir, lineage))
    if not in_place:
        settings["archive_mode"] = "off"  # a drill never writes into the real archive
    url = _url(port, result.manifest["nodes"][lineage]["database"])
    proc = _start(cfg, lineage, data_dir, port, settings)
    try:
        _wait_promoted(proc, url, lineage)
    except _NotReached:
        # No commit after the target time reached this lineage's archive: every commit it has is at
        # or before the target, so the end of its archive is the state at that time.
        proc.stop()
        settings.pop("recovery_target_time")
        result.notes.append(f"{lineage}: no commit after the target time in its archive; restored to its end")
        proc = _start(cfg, lineage, data_dir, port, settings)
        _wait_promoted(proc, url, lineage)
    result.urls[lineage] = url
    result.seconds[lineage] = round(time.monotonic() - t0, 2)
    result.tables[lineage] = _checksums(url)
    if in_place:
        proc.stop()  # a clean shutdown; `up` starts it as the stack's node
    else:
        result.pids[lineage] = proc.pid
    out(f"  restored {lineage} in {result.seconds[lineage]:.1f}s" + ("" if in_place else f" (port {port})"))


class _NotReached(Exception):
    pass


def _start(cfg, lineage: str, data_dir: Path, port: int, settings: dict) -> Supervised:
    spec: ProcessSpec = postgres.spec(f"restore-{lineage}", data_dir, port,
                                      cfg.log_dir / f"restore-{lineage}.log", settings=settings)
    proc = Supervised(spec)
    proc.start()
    return proc


def _wait_promoted(proc: Supervised, url: str, lineage: str) -> None:
    log = proc.spec.log_file
    offset = log.stat().st_size if log.exists() else 0
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.exited() is not None:
            with open(log, errors="replace") as f:
                f.seek(max(offset - 4000, 0) if offset else 0)
                tail = f.read()[-2000:]
            if NOT_REACHED in tail:
                raise _NotReached()
            raise BackupError(f"restoring {lineage} failed; the end of its log ({log}):\n{tail}")
        if _in_recovery(url) is False:
            return
        time.sleep(0.1)
    proc.stop()
    raise BackupError(f"{lineage} was still recovering after {RECOVERY_TIMEOUT_S:.0f}s; see {log}")


def _checksums(url: str) -> dict:
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(TABLES)]
        return {t: dict(zip(("rows", "sum"), conn.execute(CHECKSUM.format(t)).fetchone())) for t in tables}


def _compare(result: Restored, manifest: dict) -> None:
    for lineage, node in manifest["nodes"].items():
        restored = result.tables.get(lineage, {})
        for table, expected in node["tables"].items():
            got = restored.get(table)
            if got != expected:
                result.mismatches.append(f"{lineage} {table}: expected {expected}, restored {got}")


# --- drills --------------------------------------------------------------------------------------------
def _save_drill(cfg: config.StackConfig, result: Restored) -> None:
    entries = {}
    for lineage, pid in result.pids.items():
        try:
            entries[lineage] = {"pid": pid, "create_time": psutil.Process(pid).create_time(),
                                "url": result.urls.get(lineage)}
        except psutil.Error:
            pass
    (drill_root(cfg) / "drill.json").write_text(json.dumps(entries))


def discard_drill(cfg: config.StackConfig) -> bool:
    """Stop a drill's nodes (by their recorded PIDs) and delete its copies; False if there was none."""
    root = drill_root(cfg)
    if not root.exists():
        return False
    try:
        entries = json.loads((root / "drill.json").read_text())
    except (FileNotFoundError, ValueError):
        entries = {}
    for entry in entries.values():
        if alive(entry["pid"], entry.get("create_time")):
            stop_tree(entry["pid"], sig=signal.SIGINT, timeout=30)  # PostgreSQL's fast shutdown
    shutil.rmtree(root)
    return True

