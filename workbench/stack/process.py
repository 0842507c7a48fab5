"""One supervised OS process: how to start it, whether it is alive, how to stop it by PID."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil


@dataclass
class ProcessSpec:
    name: str            # unique: "pg-primary", "app-1", ...
    role: str            # what it is for: "postgres", "valkey", "app", "caddy", "dashboard"
    argv: list[str]
    port: int
    log_file: Path
    health: Callable[[], bool]
    env: dict = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None          # run as this OS user (PostgreSQL refuses root)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 20.0


def as_user(user: str | None) -> dict:
    """Popen arguments to run as `user` with its own group and no supplementary groups: with the
    user alone, the child keeps root's groups and group permissions would apply, not its own."""
    if not user:
        return {}
    import pwd
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


class Supervised:
    """A running instance of a spec. The controller owns the Popen, so it can reap and restart it."""

    def __init__(self, spec: ProcessSpec):
        self.spec = spec
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.healthy = False
        self.retired = False  # stopped on purpose (a replica the topology no longer wants): no restart

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def start(self) -> None:
        spec = self.spec
        spec.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(spec.log_file, "ab")
        env = {**os.environ, **spec.env}
        self.popen = subprocess.Popen(
            spec.argv, cwd=spec.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, **as_user(spec.user),
            # Its own process group, so stopping it never signals the controller.
            start_new_session=True,
        )
        log.close()
        self.started_at = time.time()
        self.healthy = False

    def exited(self) -> int | None:
        """The exit code if the process has died (reaping it), else None."""
        return self.popen.poll() if self.popen else None

    def kill_leftovers(self) -> None:
        """After the leader died, SIGKILL what is left of its process group (gunicorn workers,
        PostgreSQL backends): they would hold its port and shared memory and fail the restart."""
        if self.popen:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited() is not None:
                return False
            if self.spec.health():
                self.healthy = True
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if not self.popen or self.popen.poll() is not None:
            return
        stop_tree(self.popen.pid, self.spec.stop_signal, self.spec.stop_timeout)
        try:
            self.popen.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass

    def retire(self) -> None:
        self.retired = True
        self.stop()

    def rss_bytes(self) -> int:
        """RSS of the process and all its children (a gunicorn master plus its workers, say)."""
        return tree_rss(self.pid) if self.pid else 0


# psutil's children(recursive=True) reads every process on the machine per call; the status of a
# stack asks for ~2 trees per supervised process, which cost the controller ~0.4 s of CPU per
# /status with ~560 processes on the machine. One parent map, read at most every FAMILY_TTL_S,
# serves all of them (a worker started within that time is counted from the next status).
FAMILY_TTL_S = 0.5
_family_lock = threading.Lock()
_family: tuple[float, dict[int, list[int]]] = (0.0, {})


def _children_map() -> dict[int, list[int]]:
    global _family
    with _family_lock:
        taken, kids = _family
        if time.monotonic() - taken > FAMILY_TTL_S:
            kids = {}
            for proc in psutil.process_iter(["ppid"]):
                kids.setdefault(proc.info["ppid"], []).append(proc.pid)
            _family = (time.monotonic(), kids)
        return kids


def tree(pid: int, children: bool = True) -> list[psutil.Process]:
    """The process and (by default) its live descendants; [] if it is gone."""
    try:
        procs = [psutil.Process(pid)]
    except psutil.Error:
        return []
    if children:
        kids, todo, seen = _children_map(), [pid], {pid}
        while todo:
            for child in kids.get(todo.pop(), ()):
                if child not in seen:
                    seen.add(child)
                    todo.append(child)
                    try:
                        procs.append(psutil.Process(child))
                    except psutil.Error:
                        pass
    return procs


def tree_cpu_seconds(pid: int, children: bool = True) -> float | None:
    """User plus system CPU seconds of the process and (by default) its live descendants; None if
    it is gone. A worker that exited takes its seconds with it: CpuMeter clamps such drops to 0."""
    procs = tree(pid, children)
    if not procs:
        return None
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class CpuMeter:
    """CPU percent of process trees (100 = one core busy) over the time since the previous sample,
    that is since the previous status call. The first call for a tree has no previous sample, so it
    takes a short one (SAMPLE_S, once for all trees). Calls closer together than MIN_INTERVAL_S
    (two clients polling at once) reuse the last figure rather than divide by a few milliseconds."""

    SAMPLE_S = 0.2
    MIN_INTERVAL_S = 0.5

    def __init__(self):
        self.lock = threading.Lock()
        self.last: dict[tuple, tuple[float, float, float]] = {}  # (pid, children) -> (t, cpu s, percent)

    def percents(self, trees: dict[str, tuple[int, bool]]) -> dict[str, float]:
        """{name: (pid, with children)} -> {name: percent}; a tree that is gone is left out."""
        with self.lock:
            keys = {name: tree for name, tree in trees.items() if tree[0]}
            fresh = set()
            for tree in keys.values():
                if tree not in self.last and (seconds := tree_cpu_seconds(*tree)) is not None:
                    self.last[tree] = (time.monotonic(), seconds, 0.0)
                    fresh.add(tree)
            if fresh:
                time.sleep(self.SAMPLE_S)
            out = {}
            for name, tree in keys.items():
                seconds, now = tree_cpu_seconds(*tree), time.monotonic()
                if seconds is None or tree not in self.last:
                    continue
                then, before, percent = self.last[tree]
                if tree in fresh or now - then >= self.MIN_INTERVAL_S:
                    percent = max(0.0, seconds - before) / max(now - then, 1e-3) * 100
                    self.last[tree] = (now, seconds, percent)
                out[name] = round(percent, 1)
            # Forget trees no longer asked about (a restarted server has a new pid).
            for tree in set(self.last) - set(keys.values()):
                del self.last[tree]
            return out


def tree_rss(pid: int) -> int:
    total = 0
    for proc in tree(pid):
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def stop_tree(pid: int, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal one process, wait for it and its children to go, SIGKILL whatever remains."""
    try:
        root = psutil.Process(pid)
        family = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    try:
        root.send_signal(sig)
    except psutil.Error:
        pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


def alive(pid: int, create_time: float | None = None) -> bool:
    """True if `pid` runs and, when given, is the same process (not a reused PID)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False
