"""The one injection mechanism (DESIGN.md section 5) on the query path: an injected round trip and a
per-node concurrency limit. Replica apply delay, its third part, is a server setting the controller
applies (workbench/stack/replicas.py). Chaos `slow` adds its delay to the same round trip.

The limit must hold across every app-server process, as a real node's capacity would, so it is a
set of lock files per node: a query holds one slot's flock(2) for its round trip and its run. A
process that dies releases its locks with it, so a SIGKILL never leaks a slot.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import random
import threading
import time
from pathlib import Path

from django.conf import settings

from workbench.topology import Emulation

# A query that finds every slot taken tries again after WAIT_STEP_S, doubling up to WAIT_MAX_S:
# a fixed 0.2 ms poll burnt the CPU that emulated separate machines are meant to leave idle, and
# 1 ms bounds what the backoff adds to a wait (small against the round trips emulated).
WAIT_STEP_S = 0.0002
WAIT_MAX_S = 0.001
WAIT_LIMIT_S = 30.0

_local = threading.local()  # each thread its own descriptors: flock is per open file description


class SlotTimeout(RuntimeError):
    pass


def _slot_dir() -> Path:
    path = settings.STACK.run_dir / "node-slots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fd(node: str, slot: int) -> int:
    fds = getattr(_local, "fds", None)
    if fds is None:
        fds = _local.fds = {}
    key = (node, slot)
    if key not in fds:
        fds[key] = os.open(_slot_dir() / f"{node}.{slot}", os.O_RDWR | os.O_CREAT, 0o600)
    return fds[key]


@contextlib.contextmanager
def node_slot(node: str, limit: int):
    """Hold one of `limit` slots of `node` across all processes; 0 means no limit."""
    if limit <= 0:
        yield
        return
    deadline = time.monotonic() + WAIT_LIMIT_S
    start = random.randrange(limit)  # spread the first tries over the slots
    step = WAIT_STEP_S
    while True:
        for k in range(limit):
            fd = _fd(node, (start + k) % limit)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return
        if time.monotonic() > deadline:
            raise SlotTimeout(f"{node}: no free slot of {limit} within {WAIT_LIMIT_S:.0f}s")
        time.sleep(step)
        step = min(step * 2, WAIT_MAX_S)


def round_trip_ms(node: str, emulation: Emulation) -> float:
    """The round trip injected before a query on `node`: the emulated network, plus the region hop
    for a replica placed in another region."""
    rtt = emulation.rtt_ms if emulation.enabled else 0.0
    # Replica N of every shard ("replica-N" on shard 1, "shard-K-replica-N" beyond), as the
    # stale replica is chosen (topology.py): the region holds a copy of each shard.
    n = emulation.remote_replica
    if n and (node == f"replica-{n}" or node.endswith(f"-replica-{n}")):
        rtt += emulation.region_rtt_ms
    return rtt + chaos_slow_ms(node)


def chaos_slow_ms(node: str) -> float:
    """What `manage.py chaos slow` adds to each query on `node` (workbench/stack/chaos.py): the
    controller publishes it in the node report, which every worker keeps a fresh copy of."""
    from . import nodes
    return float(nodes.current().nodes.get(node, {}).get("slow_ms") or 0)


@contextlib.contextmanager
def chaos_delay(node: str):
    """The chaos delay alone, for meta, which emulation leaves alone."""
    delay = chaos_slow_ms(node)
    if delay > 0:
        time.sleep(delay / 1000)
    yield


@contextlib.contextmanager
def inject(node: str, emulation: Emulation):
    """Wrap one query on a data node: hold a node slot (when emulating separate machines) for the
    injected round trip and the query itself."""
    rtt = round_trip_ms(node, emulation)
    limit = emulation.node_concurrency if emulation.enabled else 0
    if rtt <= 0 and limit <= 0:
        yield
        return
    with node_slot(node, limit):
        if rtt > 0:
            time.sleep(rtt / 1000)
        yield
