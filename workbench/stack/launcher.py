"""`up`, `down` and `status` as functions, shared by the management commands and the tests."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import psutil
import requests

from . import apps, config
from .ports import busy_ports
from .process import alive, stop_tree


class StackError(RuntimeError):
    pass


def controller_pid(cfg: config.StackConfig) -> int | None:
    try:
        info = json.loads((cfg.run_dir / "controller.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return info["pid"] if alive(info["pid"], info.get("create_time")) else None


def _get(cfg: config.StackConfig, path: str, timeout: float = 5) -> dict:
    headers = cfg.operator_headers()
    response = requests.get(cfg.controller_url + path, headers=headers, timeout=timeout)
    response.raise_for_status()
    return response.json()


def chaos(cfg: config.StackConfig, action: str, role: str | None = None, timeout: float = 120,
          **extra) -> tuple[int, dict]:
    """Ask the controller for a chaos action (workbench/stack/chaos.py): (HTTP status, its answer).
    The CLI, the dashboard, the fault runner and the tests all go through here."""
    body = {"action": action, "role": role, **{k: v for k, v in extra.items() if v is not None}}
    response = requests.post(cfg.controller_url + "/chaos", json=body, headers=cfg.operator_headers(),
                             timeout=timeout)
    return response.status_code, response.json()


def status(cfg: config.StackConfig) -> dict | None:
    """The controller's view of the stack, or None when no controller runs."""
    if not controller_pid(cfg):
        return None
    try:
        return _get(cfg, "/status")
    except requests.RequestException:
        return None


def _leftovers(cfg: config.StackConfig) -> list[tuple[str, int]]:
    """Children of a controller that died without stopping them."""
    try:
        entries = json.loads((cfg.run_dir / "processes.json").read_text())
    except (FileNotFoundError, ValueError):
        return []
    return [(name, e["pid"]) for name, e in entries.items() if alive(e["pid"], e.get("create_time"))]


def up(cfg: config.StackConfig, out=print, timeout: float = 900.0) -> dict:
    if controller_pid(cfg):
        current = status(cfg)
        if current and current["phase"] == "ready":
            out("The workbench is already running.")
            return current
        raise StackError(f"a controller is running but not ready (phase: {current and current['phase']}); "
                         "try `python manage.py status`, or `down` then `up`")
    for name, pid in _leftovers(cfg):
        out(f"stopping {name} (pid {pid}), left by a controller that died")
        stop_tree(pid)
    problems = busy_ports(cfg.front_ports())
    if problems:
        raise StackError("cannot start: " + "; ".join(problems)
                         + ". Stop that process or choose another WORKBENCH_PORT_BASE.")

    for directory in (cfg.data_dir, cfg.run_dir, cfg.log_dir):
        directory.mkdir(parents=True, exist_ok=True)
    if not cfg.controller_token():
        cfg.token_file.write_text(secrets.token_urlsafe(32))
        cfg.token_file.chmod(0o600)

    with open(cfg.log_dir / "controller.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workbench.stack.controller"], cwd=config.PROJECT_DIR,
                                env={**os.environ, **apps.stack_env(cfg)}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    out(f"controller started (pid {proc.pid}); logs in {cfg.log_dir}")
    deadline = time.monotonic() + timeout
    last_phase = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the controller exited with code {proc.returncode}; see {cfg.log_dir / 'controller.log'}")
        try:
            health = requests.get(cfg.controller_url + "/health", timeout=2).json()
        except requests.RequestException:
            time.sleep(0.2)
            continue
        if health["phase"] != last_phase:
            last_phase = health["phase"]
            out(f"  {last_phase}...")
        if health["phase"] == "ready":
            return _get(cfg, "/status")
        if health["phase"] == "failed":
            down(cfg, out=lambda *_: None)
            raise StackError(f"bring-up failed: {health['error']}")
        time.sleep(0.2)
    down(cfg, out=lambda *_: None)
    raise StackError(f"the stack was not ready within {timeout:.0f}s")


def down(cfg: config.StackConfig, out=print, timeout: float = 120.0) -> None:
    pid = controller_pid(cfg)
    if pid:
        try:
            requests.post(cfg.controller_url + "/shutdown", timeout=5,
                          headers=cfg.operator_headers())
        except requests.RequestException:
            os.kill(pid, 15)  # the API is wedged: SIGTERM runs the same clean shutdown
        try:
            psutil.Process(pid).wait(timeout=timeout)
        except psutil.TimeoutExpired:
            out(f"controller (pid {pid}) did not stop in {timeout:.0f}s; killing it")
            stop_tree(pid, timeout=5)
        except psutil.Error:
            pass
        out(f"stopped the controller (pid {pid}) and everything it started")
    for name, child in _leftovers(cfg):
        out(f"stopping {name} (pid {child})")
        stop_tree(child)
    (cfg.run_dir / "processes.json").unlink(missing_ok=True)
    (cfg.run_dir / "controller.json").unlink(missing_ok=True)
    if not pid:
        out("the workbench is not running")
