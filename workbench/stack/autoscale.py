"""The autoscaler: a controller thread that sets the topology's `app_servers` from what the app
servers are doing (the settings are the topology's `autoscale` group; off by default).

Each second it samples, per running app server: requests in flight (Caddy's `num_requests`, the
load balancer's own count), CPU (the gunicorn master and workers, percent of one core) and memory
(their RSS, percent of the machine's). `decide` (pure) looks at the means of the last few samples:
- out when any signal is above its target, to ceil(servers x load / target) at once, as
  Kubernetes' HPA does, since load arriving now needs the capacity now;
- in one server at a time, and only while the remaining servers would stay well under every
  target (SCALE_IN_HEADROOM): hysteresis, so that the scale-in does not itself trigger a scale-out;
- `cooldown_s` after any change before the next; the bounds `min`, `max` and, in `peak_hours`,
  `peak_min` are put right at once, cooldown or not.
p95 latency is not a signal: nothing measures it per second cheaply here (Caddy's metrics are off,
and the app servers' histograms are per worker process); in-flight is its leading indicator.

The thread writes `app_servers` into the topology store, so the change is carried out by the same
path as a manual one (apps.AppTier: started, or drained before stopping), and logs each decision
as an `autoscale` event with its reason.
"""
from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil

from workbench import topology

from . import caddy
from .process import tree_rss

SAMPLE_S = 1.0
WINDOW = 5           # decide on the mean of this many samples...
MIN_SAMPLES = 3      # ...once there are at least this many since the last change
SCALE_IN_HEADROOM = 0.6  # scale in only if one server fewer stays under 60% of every target


@dataclass(frozen=True)
class Signals:
    """Means per running app server; None: not measured (Caddy did not answer, say)."""
    in_flight: float | None = None
    cpu_pct: float | None = None
    memory_pct: float | None = None


@dataclass(frozen=True)
class Decision:
    target: int
    action: str   # "out", "in" or "hold"
    reason: str
    kind: str     # stable across samples (no numbers): only a change of kind is logged for holds


def in_peak(peak_hours: str, hour: int) -> bool:
    """`HH-HH` in UTC, the end excluded; it may wrap past midnight (`22-06`)."""
    if not peak_hours:
        return False
    start, end = int(peak_hours[:2]), int(peak_hours[3:])
    return start <= hour < end if start < end else hour >= start or hour < end


SIGNALS = ("in_flight", "cpu_pct", "memory_pct")  # each one's target is the autoscale field of its name


def load(signals: Signals, policy: topology.Autoscale) -> tuple[float, str] | None:
    """The highest signal as a fraction of its target, and which signal it is."""
    ratios = [(value / target, name) for name in SIGNALS
              if (value := getattr(signals, name)) is not None and (target := getattr(policy, name)) > 0]
    return max(ratios) if ratios else None


def decide(*, current: int, signals: Signals, policy: topology.Autoscale, since_change_s: float,
           hour: int) -> Decision:
    """What `app_servers` should be now (see the module docstring)."""
    floor = max(policy.min, policy.peak_min) if in_peak(policy.peak_hours, hour) else policy.min
    if current < floor:
        why = f"peak hours {policy.peak_hours} UTC hold at least {floor}" if floor > policy.min else f"min is {floor}"
        return Decision(floor, "out", f"{current} is below the floor: {why}", "floor")
    if current > policy.max:
        return Decision(policy.max, "in", f"{current} is above max {policy.max}", "ceiling")
    measured = load(signals, policy)
    if measured is None:
        return Decision(current, "hold", "no signal measured", "no-signal")
    ratio, name = measured
    shown = f"{name} {getattr(signals, name):.1f} against a target of {getattr(policy, name):g} per server"
    cooling = since_change_s < policy.cooldown_s
    if ratio > 1:
        target = min(policy.max, max(current + 1, math.ceil(current * ratio)))
        if target == current:
            return Decision(current, "hold", f"{shown}, but already at max {policy.max}", "at-max")
        if cooling:
            return Decision(current, "hold", f"{shown}; cooling down ({policy.cooldown_s} s)", "cooldown-out")
        return Decision(target, "out", shown, "out")
    if current > floor and ratio * current / (current - 1) < SCALE_IN_HEADROOM:
        if cooling:
            return Decision(current, "hold", f"{shown}; cooling down ({policy.cooldown_s} s)", "cooldown-in")
        return Decision(current - 1, "in", f"{shown}: {current - 1} would stay under "
                                           f"{SCALE_IN_HEADROOM:.0%} of it", "in")
    return Decision(current, "hold", "within targets", "steady")


class Autoscaler:
    def __init__(self, ctl):
        self.ctl, self.cfg = ctl, ctl.cfg
        self.store = topology.Store(ctl.data_nodes.state)
        self.window: collections.deque[Signals] = collections.deque(maxlen=WINDOW)
        self.cpu_seen: dict[int, tuple[float, float]] = {}  # master pid -> (monotonic time, CPU seconds)
        self.changed_at = -math.inf
        self.last_wanted: int | None = None
        self.last_kind: str | None = None

    def run_forever(self) -> None:
        while not self.ctl.stopping.wait(SAMPLE_S):
            try:
                self.step()
            except Exception as exc:  # never let the thread die; say why and try again
                self.ctl.log("autoscale_failed", error=str(exc))
                self.ctl.stopping.wait(5.0)

    def step(self) -> None:
        t = self.store.read().topology
        if t.app_servers != self.last_wanted:  # a change by anyone restarts the cooldown and the window
            self.last_wanted, self.changed_at = t.app_servers, time.monotonic()
            self.window.clear()
        if not t.autoscale.enabled:
            self.window.clear()
            self.last_kind = None
            return
        running = self.ctl.apps.running()
        if self.ctl.apps.scaling or len(running) != t.app_servers:
            # A change is being carried out (or a server restarts): its samples would mislead, and
            # the cooldown counts from when it is done, not from when it was asked for.
            self.changed_at = time.monotonic()
            self.window.clear()
            return
        self.window.append(self.sample(running))
        if len(self.window) < MIN_SAMPLES:
            return
        decision = decide(current=t.app_servers, signals=mean(self.window), policy=t.autoscale,
                          since_change_s=time.monotonic() - self.changed_at, hour=datetime.now(timezone.utc).hour)
        if decision.action != "hold":
            self.store.patch({"app_servers": decision.target}, "autoscaler")
        if decision.action != "hold" or decision.kind != self.last_kind:
            self.ctl.log("autoscale", action=decision.action, app_servers=t.app_servers, target=decision.target,
                         reason=decision.reason)
        self.last_kind = decision.kind

    def sample(self, running: list[int]) -> Signals:
        rows = caddy.upstreams(self.cfg)
        in_flight = None
        if rows is not None:
            by_address = {row["address"]: row["in_flight"] for row in rows}
            in_flight = sum(by_address.get(f"127.0.0.1:{self.cfg.app_port(k)}", 0) for k in running) / len(running)
        pids = [pid for k in running if (pid := self._pid(k))]
        cpu = [c for pid in pids if (c := self._cpu_pct(pid)) is not None]
        self.cpu_seen = {pid: seen for pid, seen in self.cpu_seen.items() if pid in pids}  # drop stopped ones
        total = psutil.virtual_memory().total
        memory = [100 * tree_rss(pid) / total for pid in pids]
        return Signals(in_flight, sum(cpu) / len(cpu) if cpu else None, sum(memory) / len(memory) if memory else None)

    def _pid(self, k: int) -> int | None:
        with self.ctl.lock:
            proc = self.ctl.procs.get(f"app-{k}")
        return proc.pid if proc else None

    def _cpu_pct(self, pid: int) -> float | None:
        """CPU of a gunicorn master and its workers since the last sample, percent of one core."""
        try:
            root = psutil.Process(pid)
            seconds = 0.0
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                seconds += times.user + times.system
        except psutil.Error:
            return None
        now = time.monotonic()
        before = self.cpu_seen.get(pid)
        self.cpu_seen[pid] = (now, seconds)
        if before is None or now <= before[0]:
            return None
        return max(0.0, 100 * (seconds - before[1]) / (now - before[0]))  # a worker restarted: its time is gone


def mean(samples) -> Signals:
    def avg(name):
        values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return sum(values) / len(values) if values else None
    return Signals(*map(avg, SIGNALS))
