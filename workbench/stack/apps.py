"""App servers (gunicorn gthread groups, one port each) and the Streamlit dashboard.

`AppTier` carries out the topology's `app_servers`: app-k (k = 1..N, on cfg.app_port(k)) runs for
k <= N. Caddy lists every slot with an active health check on /healthz (caddy.py) and is never
reloaded at run time (a reload closes client keep-alive connections), so rotation follows health:
a started server joins once its check passes; a server to stop first drains, its /healthz
answering 503 (workbench/health.py) so that Caddy takes it out, and only then is it stopped.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import requests

from . import caddy
from .config import MAX_APP_SERVERS, PROJECT_DIR, StackConfig
from .process import ProcessSpec, Supervised

# Caddy checks each upstream's /healthz every second and one failed check takes it out; the margin
# covers a check already under way when the marker appeared and a slow answer on busy cores.
LEAVE_ROTATION_S = 2.5
IN_FLIGHT_WAIT_S = 10.0  # then SIGTERM anyway: gunicorn's graceful stop still finishes what is in flight


def stack_env(cfg: StackConfig) -> dict:
    """What every child Python process needs to find the same stack."""
    return {
        "WORKBENCH_DATA_DIR": str(cfg.data_dir),
        "WORKBENCH_PORT_BASE": str(cfg.port_base),
        "WORKBENCH_SERVICE_PORT_BASE": str(cfg.service_port_base),
        "WORKBENCH_APP_SERVERS": str(cfg.app_servers),
        "WORKBENCH_APP_WORKERS": str(cfg.app_workers),
        "WORKBENCH_APP_THREADS": str(cfg.app_threads),
        "WORKBENCH_SEED_USERS": str(cfg.seed_users),
        "WORKBENCH_SEED_POSTS_PER_USER": str(cfg.seed_posts_per_user),
        "WORKBENCH_RECONCILE_INTERVAL": str(cfg.reconcile_interval_s),
        "DJANGO_SETTINGS_MODULE": "workbench.settings",
        "PYTHONUNBUFFERED": "1",
        **({"DATABASE_URL": cfg.database_url} if cfg.database_url else {}),
        **({"META_DATABASE_URL": cfg.meta_database_url} if cfg.meta_database_url else {}),
        **({"VALKEY_URL": cfg.valkey_url} if cfg.valkey_url else {}),
        **({"VALKEY_STATE_URL": cfg.valkey_state_url} if cfg.valkey_state_url else {}),
        **cfg.extra_env,
    }


def app_server(cfg: StackConfig, index: int) -> ProcessSpec:
    name = f"app-{index}"
    port = cfg.app_port(index)
    argv = [sys.executable, "-m", "gunicorn", "workbench.wsgi:application",
            "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
            "--workers", str(cfg.app_workers), "--threads", str(cfg.app_threads),
            # Keep-alive so Caddy reuses connections; graceful drain on SIGTERM.
            "--keep-alive", "30", "--graceful-timeout", "10", "--timeout", "60",
            # No gunicorn access line: api/logs.py writes a JSON line per request with more in it.
            "--name", f"workbench-{name}"]
    return ProcessSpec(
        name=name, role="app", port=port, log_file=cfg.log_dir / f"{name}.log", argv=argv,
        cwd=PROJECT_DIR, env={**stack_env(cfg), "WORKBENCH_APP_SERVER": name},
        health=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
    )


def draining_marker(cfg: StackConfig, name: str) -> Path:
    """While this file exists, app server `name` answers /healthz with 503 `draining`."""
    return cfg.run_dir / "draining" / name


class AppTier:
    """The controller's app servers: started and drained to match `app_servers` (see the module
    docstring). `scale` runs on the controller's topology thread only, so calls never overlap."""

    def __init__(self, ctl):
        self.ctl, self.cfg = ctl, ctl.cfg
        self.scaling = False  # a scale is under way: a started server may still be booting

    def _supervised(self) -> dict[int, Supervised]:
        """Index -> app server the controller keeps running (restarted if it dies)."""
        with self.ctl.lock:
            return {k: proc for k in range(1, MAX_APP_SERVERS + 1)
                    if (proc := self.ctl.procs.get(f"app-{k}")) and not proc.retired}

    def managed(self) -> list[int]:
        """Indexes of the app servers the controller keeps running: what it has carried out of
        `app_servers` (one that died and awaits its restart still counts: a fault, not a change)."""
        return sorted(self._supervised())

    def running(self) -> list[int]:
        """Indexes of the app servers whose process is alive now (a killed one is not, until the
        supervisor has restarted it)."""
        return [k for k, proc in self._supervised().items() if proc.exited() is None]

    def scale(self, wanted: int) -> None:
        supervised = self._supervised()
        extra = [proc for k, proc in supervised.items() if k > wanted]
        missing = [k for k in range(1, wanted + 1) if k not in supervised]
        if not extra and not missing:
            return
        self.scaling = True
        try:
            if extra:
                self._drain(extra)
            for k in missing:
                draining_marker(self.cfg, f"app-{k}").unlink(missing_ok=True)  # left by a crashed drain
                self.ctl._start(app_server(self.cfg, k))  # returns once its /healthz answers 200
        finally:
            self.scaling = False
        self.ctl.log("scaled", app_servers_before=len(supervised), app_servers=len(self._supervised()))

    def _drain(self, procs: list[Supervised]) -> None:
        """Out of Caddy's rotation first, then stopped; all at once, so a 4 -> 1 waits once."""
        began = time.monotonic()
        names = [proc.spec.name for proc in procs]
        for name in names:
            marker = draining_marker(self.cfg, name)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            self.ctl.log("draining", name=name)
        self.ctl.stopping.wait(LEAVE_ROTATION_S)
        self._wait_in_flight({f"127.0.0.1:{proc.spec.port}" for proc in procs})
        # retire(): SIGTERM (gunicorn finishes in-flight requests, up to --graceful-timeout), and
        # marked so the supervisor does not restart it. In parallel: each may take seconds.
        stoppers = [threading.Thread(target=proc.retire) for proc in procs]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        with self.ctl.lock:
            for name in names:
                self.ctl.procs.pop(name, None)
        self.ctl._save_pids()
        for name in names:
            draining_marker(self.cfg, name).unlink(missing_ok=True)
            self.ctl.log("drained", name=name, seconds=round(time.monotonic() - began, 2))

    def _wait_in_flight(self, addresses: set[str]) -> None:
        """Until Caddy has no request in flight to these servers (bounded; skipped if Caddy is down)."""
        deadline = time.monotonic() + IN_FLIGHT_WAIT_S
        while time.monotonic() < deadline and not self.ctl.stopping.is_set():
            rows = caddy.upstreams(self.cfg)
            if rows is None or not any(r["in_flight"] for r in rows if r["address"] in addresses):
                return
            time.sleep(0.1)


def reconciler(cfg: StackConfig) -> ProcessSpec:
    """Finishes or undoes account protocols whose request died (see api/services.py)."""
    argv = [sys.executable, str(PROJECT_DIR / "manage.py"), "reconcile_accounts",
            "--loop", str(cfg.reconcile_interval_s)]
    return ProcessSpec(name="reconciler", role="worker", port=0, log_file=cfg.log_dir / "reconciler.log",
                       argv=argv, cwd=PROJECT_DIR, env=stack_env(cfg), health=lambda: True)


def flusher(cfg: StackConfig) -> ProcessSpec:
    """Applies the writes that write-behind queued in the state Valkey (api/caching/behind.py).
    Runs in every cache mode: it drains what a previous write-behind period left queued."""
    argv = [sys.executable, str(PROJECT_DIR / "manage.py"), "flush_writes", "--loop"]
    return ProcessSpec(name="flusher", role="worker", port=0, log_file=cfg.log_dir / "flusher.log",
                       argv=argv, cwd=PROJECT_DIR, env=stack_env(cfg), health=lambda: True)


def relay(cfg: StackConfig) -> ProcessSpec:
    """The read model's relay (api/readmodel.py): turns each shard's outbox rows into profile
    documents in the state Valkey. Runs whatever `read_model` says: it drains what is left."""
    argv = [sys.executable, str(PROJECT_DIR / "manage.py"), "relay_outbox", "--loop"]
    return ProcessSpec(name="relay", role="worker", port=0, log_file=cfg.log_dir / "relay.log",
                       argv=argv, cwd=PROJECT_DIR, env=stack_env(cfg), health=lambda: True)


def dashboard(cfg: StackConfig) -> ProcessSpec:
    port = cfg.dashboard_port
    argv = [sys.executable, "-m", "streamlit", "run", str(PROJECT_DIR / "lessons" / "app.py"),
            "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal"]
    return ProcessSpec(
        name="dashboard", role="dashboard", port=port, log_file=cfg.log_dir / "dashboard.log",
        argv=argv, cwd=PROJECT_DIR, env=stack_env(cfg),
        health=lambda: http_ok(f"http://127.0.0.1:{port}/_stcore/health"),
    )


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False
