"""A calibration run on the live stack: the controller runs an open-model load test (RunClient, as
every run), while this samples the CPU seconds of each tier's process trees, then the run's result,
Caddy's access log of its window and the samples become a calibration (calibration.calibrate).

Tiers: Caddy (lb), the app servers (app), PostgreSQL (db, every node and meta), the cache Valkey
(cache), the state Valkey (state: topology, rate limits), the controller with the load generator it
runs (generator), and the stack's background workers (workers). CPU is sampled every SAMPLE_S; the
stack's idle use per tier is sampled for IDLE_S first and taken off (it costs the same at any rate).
"""
from __future__ import annotations

import threading
import time

import psutil

from workbench.loadgen.client import RunClient
from workbench.stack import launcher

from . import calibration

SAMPLE_S = 0.5
IDLE_S = 2.0
TRIM_START_S, TRIM_END_S = 1.0, 0.5  # generator start-up and the last answers are not steady sending


def tier_of(proc: dict) -> str | None:
    role, name = proc.get("role"), proc.get("name", "")
    if role == "valkey":
        return "state" if name == "valkey-state" else "cache"
    return {"caddy": "lb", "app": "app", "postgres": "db", "controller": "generator",
            "worker": "workers", "pgbouncer": "db"}.get(role)


def _tree_seconds(root: psutil.Process) -> float:
    """CPU seconds of a process and its descendants, reaped children included (children_* fields)."""
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


class Sampler:
    """Cumulative CPU seconds per tier, every SAMPLE_S, on its own thread."""

    def __init__(self, processes: list[dict]):
        self.roots: dict[str, list[psutil.Process]] = {}
        for proc in processes:
            tier = tier_of(proc)
            if tier and proc.get("pid"):
                try:
                    self.roots.setdefault(tier, []).append(psutil.Process(proc["pid"]))
                except psutil.Error:
                    pass
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> dict:
        return {"t": time.monotonic(), "machine": _machine_busy(),
                "tiers": {tier: sum(_tree_seconds(p) for p in roots) for tier, roots in self.roots.items()}}

    def _loop(self):
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(SAMPLE_S)

    def idle(self, seconds: float = IDLE_S) -> dict:
        """Cores each tier keeps busy with no load."""
        a = self.sample()
        time.sleep(seconds)
        b = self.sample()
        dt = b["t"] - a["t"]
        return {tier: max(b["tiers"][tier] - a["tiers"][tier], 0.0) / dt for tier in b["tiers"]}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.append(self.sample())


def measured_run(cfg, workload: dict, label: str = "capacity calibration", idle_s: float = IDLE_S) -> tuple[dict, dict]:
    """Run `workload` (open model) through the controller while sampling CPU. Returns the run's
    result and its CPU costs (calibration.cpu_costs)."""
    state = launcher.status(cfg)
    if not state:
        raise RuntimeError("the stack is not running: start it with `python manage.py up`")
    sampler = Sampler(state["processes"])
    idle = sampler.idle(idle_s)
    client = RunClient(cfg)
    with sampler:
        run_id = client.start({**workload, "mode": "open"}, label)
        began = None
        while True:
            run = client.get(run_id)
            progress = run.get("progress") or {}
            if began is None and progress.get("elapsed_s") is not None:
                began = time.monotonic() - float(progress["elapsed_s"])
            if run["status"] in ("done", "failed"):
                break
            time.sleep(0.2)
    if run["status"] != "done":
        raise RuntimeError(run.get("error") or "the calibration run failed")
    duration = float(workload["duration_s"])
    if began is None:  # too short to report progress: the run ended when we saw it done
        began = sampler.samples[-1]["t"] - duration - 1.0
    cpu = calibration.cpu_costs(sampler.samples, float(workload["rate"]), began + TRIM_START_S,
                                began + duration - TRIM_END_S, idle)
    cpu["idle_cores"] = {k: round(v, 4) for k, v in idle.items()}
    return run, cpu


def calibrate_live(cfg, workloads: list[dict], label: str = "capacity calibration", idle_s: float = IDLE_S) -> dict:
    """One measured run per workload (e.g. the learner's reads, then their writes), then the
    calibration from all of them."""
    results, cpu, records = [], {}, {}
    for w in workloads:
        run, costs = measured_run(cfg, w, label, idle_s)
        results.append(run)
        cpu[run["id"]] = costs
        records[run["id"]] = calibration.read_access_log(cfg.log_dir, run)
    cal = calibration.calibrate(results, records, cpu, source="measured")
    cal["idle_cores"] = {r["id"]: cpu[r["id"]]["idle_cores"] for r in results}
    return cal


def cache_probe(cfg, commands: int = 2000) -> dict:
    """The cache round trip and Valkey's CPU per command: `commands` GETs of one key, one at a time,
    against the cache Valkey (cfg.cache_url), timed at the client; the server's CPU
    from its process. A probe of the engine alone, no load generator."""
    import redis
    state = launcher.status(cfg) or {}
    proc = next((p for p in state.get("processes", []) if tier_of(p) == "cache"), None)
    client = redis.Redis.from_url(cfg.cache_url, socket_timeout=2)
    server = psutil.Process(proc["pid"]) if proc else None
    try:
        client.set("workbench:capacity:probe", "x" * 300)
        before = _tree_seconds(server) if server else None
        times = []
        for _ in range(commands):
            t = time.perf_counter()
            client.get("workbench:capacity:probe")
            times.append((time.perf_counter() - t) * 1000)
        used = (_tree_seconds(server) - before) if server else None
        client.delete("workbench:capacity:probe")
    finally:
        client.close()
    return {"rtt_ms": calibration._d(calibration.Spread.of(times)), "commands": commands,
            "cpu_ms_per_op": round(used * 1000 / commands, 5) if used is not None else None}
