"""App servers (gunicorn gthread groups, one port each) and the Streamlit dashboard."""
from __future__ import annotations

import sys

import requests

from .config import PROJECT_DIR, StackConfig
from .process import ProcessSpec


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
            "--name", f"workbench-{name}", "--access-logfile", "-", "--access-logformat",
            '%(h)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s']
    return ProcessSpec(
        name=name, role="app", port=port, log_file=cfg.log_dir / f"{name}.log", argv=argv,
        cwd=PROJECT_DIR, env={**stack_env(cfg), "WORKBENCH_APP_SERVER": name},
        health=lambda: http_ok(f"http://127.0.0.1:{port}/healthz"),
    )


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
