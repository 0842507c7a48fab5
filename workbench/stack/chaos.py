"""Fault injection on the running stack (issue 12): the controller's side of `manage.py chaos`,
the dashboard's chaos buttons and the fault tests.

- `kill ROLE`: SIGKILL the process (and its process group: a postmaster's backends, a gunicorn
  master's workers). Supervision restarts it, as it would after any crash.
- `stop ROLE`: SIGKILL it and hold it down: the supervisor leaves it dead until `start ROLE`. A
  machine that is gone, not one that reboots; what a failover is for.
- `start ROLE`: release the hold; the supervisor starts it at once.
- `slow ROLE MS`: every query on that database node waits MS more, through the same injection as
  emulation (api/routing/emulation.py reads it from the node report). 0 removes it.
- `failover [SHARD]`: promote a replica of the shard (workbench/stack/failover.py).

Every action is logged on the controller's event timeline as `chaos_<action>`.
"""
from __future__ import annotations

import os
import signal
import threading
import time

from api.routing import shards

ACTIONS = ("kill", "stop", "start", "slow", "failover")
MAX_SLOW_MS = 10_000


class ChaosError(ValueError):
    """A request that cannot be carried out; `field` names the part at fault."""

    def __init__(self, field: str, detail: str):
        super().__init__(detail)
        self.field = field


def process_name(role: str) -> str:
    """The supervised process a role names. Database aliases (`primary`, `replica-2`, `shard-3`,
    `shard-3-replica-1`, `meta`) map to their processes; process names pass through."""
    if role == "primary":
        return "pg-primary"
    if role == "meta":
        return "pg-meta"
    return role


def node_alias(role: str) -> str | None:
    """The database node a role names, as the router and the node report call it; None if it is
    not a database node."""
    name = {"pg-primary": "primary", "pg-meta": "meta"}.get(role, role)
    return name if name == "meta" or shards.parse_alias(name) else None


class Chaos:
    def __init__(self, ctl):
        self.ctl = ctl
        self.lock = threading.Lock()
        self.held: set[str] = set()          # processes the supervisor must leave down
        self.slow: dict[str, int] = {}       # database node alias -> injected ms per query

    def holds(self, name: str) -> bool:
        with self.lock:
            return name in self.held

    def hold(self, name: str) -> None:
        with self.lock:
            self.held.add(name)

    def release(self, name: str) -> None:
        with self.lock:
            self.held.discard(name)

    def state(self) -> dict:
        with self.lock:
            return {"held": sorted(self.held), "slow_ms": dict(self.slow)}

    def act(self, action: str, role: str, ms=None, shard=None) -> dict:
        if action not in ACTIONS:
            raise ChaosError("action", f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        if action == "failover":
            from . import failover
            return failover.run(self.ctl, _shard(shard), reason="chaos")
        if not isinstance(role, str) or not role:
            raise ChaosError("role", "name a role: a process (app-2, caddy, valkey-cache) or a database "
                                     "node (primary, replica-1, shard-2, meta)")
        if action == "slow":
            return self._slow(role, ms)
        name = process_name(role)
        with self.ctl.lock:
            proc = self.ctl.procs.get(name)
        if proc is None or proc.retired:
            running = sorted(n for n, p in self.ctl.procs.items() if not p.retired)
            raise ChaosError("role", f"no running process {role!r}; running: {', '.join(running)}")
        if action == "start":
            was_held = self.holds(name)
            self.release(name)
            self.ctl.log("chaos_start", name=name, was_held=was_held)
            return {"action": "start", "name": name, "was_held": was_held}
        if action == "stop":
            self.hold(name)
        pid = proc.pid
        if proc.exited() is None and pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # its own session: the group is the process and its children
            except ProcessLookupError:
                pass
        self.ctl.log(f"chaos_{action}", name=name, pid=pid, signal="SIGKILL", held=action == "stop")
        return {"action": action, "name": name, "pid": pid, "signal": "SIGKILL", "held": action == "stop",
                "at": time.time()}

    def _slow(self, role: str, ms) -> dict:
        alias = node_alias(role)
        if alias is None:
            raise ChaosError("role", f"`slow` applies to database nodes (primary, replica-1, shard-2, meta), "
                                     f"not {role!r}")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 <= ms <= MAX_SLOW_MS:
            raise ChaosError("ms", f"ms must be a number from 0 to {MAX_SLOW_MS}")
        with self.lock:
            if ms:
                self.slow[alias] = int(ms)
            else:
                self.slow.pop(alias, None)
        self.ctl.log("chaos_slow", name=alias, ms=int(ms))
        return {"action": "slow", "name": alias, "ms": int(ms)}


def _shard(shard) -> int:
    if shard is None:
        return 1
    if isinstance(shard, bool) or not isinstance(shard, int) or not 1 <= shard <= shards.MAX_SHARDS:
        raise ChaosError("shard", f"shard must be a whole number from 1 to {shards.MAX_SHARDS}")
    return shard
