"""Primary failover: when a shard's primary is gone, make its most advanced replica the primary.

The primary's port is the shard's stable address, as a floating IP or a DNS name is in a data
centre: the router, PgBouncer and the other replicas all point at it. Failover moves that address
to the promoted node rather than telling every client about a new one:

1. Choose: ask every live replica of the shard how much WAL it has received; the furthest one wins
   (with synchronous replication it holds every acknowledged commit).
2. Fence the old primary, so that two primaries never run: hold it down (the supervisor leaves it
   dead), SIGKILL its process group, and move its data directory aside (`<alias>.fenced-<time>`),
   so nothing can start it again as it was. Its unreplicated writes stay readable there.
3. Promote the chosen replica (`pg_promote`), give it replication slots for the other replicas, stop
   it, move its directory into the primary's place, and let the supervisor start it on the
   primary's port. The other replicas reconnect to that port within a second and follow the new
   timeline (recovery_target_timeline = latest). One that cannot is rebuilt by the next topology
   pass, as is a replica in the promoted one's place.

Reads keep going to the replicas while the primary is down (the node report keeps them in rotation);
writes get 503 with Retry-After until the promoted node answers on the primary's port.
"""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import psycopg

from api.routing import shards

from .chaos import ChaosError
from .datanodes import node_url, slot_name

RECEIVED_LSN = ("SELECT pg_wal_lsn_diff(greatest(coalesce(pg_last_wal_receive_lsn(), '0/0'), "
                "pg_last_wal_replay_lsn()), '0/0')")
START_TIMEOUT_S = 60.0
REJOIN_TIMEOUT_S = 20.0
WATCH_INTERVAL_S = 0.25


def run(ctl, shard: int, reason: str) -> dict:
    dn = ctl.data_nodes
    if dn is None or ctl.phase != "ready":
        raise RuntimeError("the stack is not ready; failover needs a running data tier")
    group = dn.group(shard)
    if shard != 1 and group.primary not in dn.ready:
        raise ChaosError("shard", f"shard {shard} is not running")
    with dn.lock:  # no topology pass changes the shard meanwhile
        started = time.monotonic()
        replicas = dn.replica_names(group)
        if not _positions(dn, replicas):
            raise RuntimeError(f"{group.primary} has no live replica to promote; nothing was changed "
                               f"(set replicas >= 1, and keep one running)")
        ctl.log("failover_started", shard=shard, primary=group.primary, reason=reason, replicas=replicas)
        fenced_dir = _fence(ctl, group)
        positions = _positions(dn, replicas)  # again: nothing can reach them from the old primary now
        if not positions:  # the replicas died meanwhile: put the old primary back rather than lose it
            _unfence(ctl, group, fenced_dir)
            raise RuntimeError(f"no replica of {group.primary} answered after fencing it; it was put back")
        chosen = max(positions, key=lambda name: (positions[name], -replicas.index(name)))
        _promote(dn, group, chosen, [r for r in replicas if r != chosen])
        ctl.chaos.release(group.process)  # the supervisor starts it on the primary's port
        _wait_primary(dn, group)
        dn._set_replication(group, dn.store.read().topology.replication)
        took = time.monotonic() - started
        dn.running = dn.read_running()
    result = {"shard": shard, "promoted": chosen, "primary": group.primary, "received_lsn": positions[chosen],
              "others": {name: lsn for name, lsn in positions.items() if name != chosen},
              "fenced_dir": str(fenced_dir), "took_s": round(took, 2), "reason": reason}
    ctl.log("failover_done", **result)
    threading.Thread(target=_rejoin, args=(ctl, group, [r for r in replicas if r != chosen]), daemon=True).start()
    return result


def _positions(dn, replicas: list[str]) -> dict[str, int]:
    """WAL received (or replayed, whichever is further) per replica that answers."""
    out = {}
    for name in replicas:
        try:
            out[name] = int(dn._sql(name, RECEIVED_LSN)[0][0] or 0)
        except psycopg.Error:
            pass
    return out


def _fence(ctl, group):
    ctl.chaos.hold(group.process)
    time.sleep(0.3)  # past one supervision pass: a restart it had already begun is now running
    with ctl.lock:
        proc = ctl.procs.get(group.process)
    if proc is not None and proc.pid and proc.exited() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while proc.exited() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    if proc is not None:
        proc.kill_leftovers()
    data_dir = group.data_dir(group.primary)
    fenced = data_dir.with_name(f"{data_dir.name}.fenced-{time.strftime('%Y%m%dT%H%M%S')}")
    data_dir.rename(fenced)
    ctl.log("primary_fenced", name=group.process, data_dir=str(fenced))
    return fenced


def _unfence(ctl, group, fenced_dir) -> None:
    fenced_dir.rename(group.data_dir(group.primary))
    ctl.chaos.release(group.process)
    ctl.log("primary_unfenced", name=group.process)


def _promote(dn, group, chosen: str, others: list[str]) -> None:
    with psycopg.connect(node_url(dn.cfg, chosen), autocommit=True, connect_timeout=2) as conn:
        if not conn.execute("SELECT pg_promote(true, 30)").fetchone()[0]:
            raise RuntimeError(f"pg_promote on {chosen} did not finish within 30 s")
        for name in others:  # so they can stream from it at once, and it keeps their WAL
            slot = dn_slot(name)
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true) "
                         "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)", (slot, slot))
        conn.execute("ALTER SYSTEM RESET primary_conninfo")
        conn.execute("ALTER SYSTEM RESET primary_slot_name")
    dn.ctl.log("replica_promoted", name=chosen)
    dn._stop_process(chosen)  # a clean shutdown: its checkpoint makes the restart quick
    shutil.rmtree(group.data_dir(group.primary), ignore_errors=True)
    group.data_dir(chosen).rename(group.data_dir(group.primary))


def dn_slot(replica: str) -> str:
    return slot_name(shards.parse_alias(replica)[1])


def _wait_primary(dn, group) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if not dn._sql(group.primary, "SELECT pg_is_in_recovery()")[0][0]:
                return
        except psycopg.Error:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the promoted {group.primary} did not accept writes within {START_TIMEOUT_S:.0f}s")


def _rejoin(ctl, group, others: list[str]) -> None:
    """A replica that does not stream from the new primary in time (it had WAL the promoted one
    lacked, say) is retired with its data; the next topology pass makes it afresh."""
    dn = ctl.data_nodes
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    waiting = set(others)
    while waiting and time.monotonic() < deadline and not ctl.stopping.is_set():
        try:
            streaming = {row[0] for row in dn._sql(group.primary, "SELECT application_name FROM pg_stat_replication "
                                                                  "WHERE state = 'streaming'")}
        except psycopg.Error:
            streaming = set()
        waiting = {r for r in waiting if dn_slot(r) not in streaming}
        time.sleep(0.25)
    for name in sorted(waiting):
        with dn.lock:
            index = shards.parse_alias(name)[1]
            if name in dn.replica_names(group):
                dn._retire_replica(group, index)
                ctl.log("replica_rebuilt_after_failover", name=name)
    ctl.log("failover_rejoined", shard=group.number, rejoined=sorted(set(others) - waiting),
            rebuilt=sorted(waiting))


class Watcher:
    """Automatic failover (topology `failover.auto`): a primary reported down for `grace_s` is
    failed over, one shard at a time. A failover that cannot run (no replica) is tried again after
    another grace period, and logged each time."""

    def __init__(self, ctl):
        self.ctl = ctl
        self.down_since: dict[int, float] = {}
        # Per shard, the wall time a failover finished: a report sampled before then still shows
        # the fenced primary down, and once counted as a second outage (the promoted primary was
        # fenced in turn 0.8 s after `failover_done`).
        self.failed_over_at: dict[int, float] = {}

    def run_forever(self) -> None:
        while not self.ctl.stopping.wait(WATCH_INTERVAL_S):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - logged; the next pass tries again
                self.ctl.log("auto_failover_failed", error=str(exc)[:300])

    def check(self) -> None:
        dn = self.ctl.data_nodes
        t = dn.topology  # as the apply loop last read it: no extra Valkey call here
        report = dn.last_report
        if t is None or not t.failover.auto or report is None:
            self.down_since.clear()
            return
        now = time.monotonic()
        for group in dn.running_groups():
            node = report.nodes.get(group.primary, {})
            if node.get("healthy", True) or report.at <= self.failed_over_at.get(group.number, 0.0):
                self.down_since.pop(group.number, None)
                continue
            since = self.down_since.setdefault(group.number, now)
            if now - since >= t.failover.grace_s:
                self.down_since[group.number] = now  # if it cannot run, try again a grace period later
                run(self.ctl, group.number, reason=f"auto: down for {now - since:.1f}s")
                self.failed_over_at[group.number] = time.time()
                self.down_since.pop(group.number, None)
