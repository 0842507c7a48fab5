"""A follow-up's experiment runs in a process of its own; the page starts it and follows it.

The load generator never runs inside Streamlit (DESIGN.md section 1), and an experiment that
changes the stack must finish and put the stack back even if the browser tab goes away. So the
page starts `python -m lessons.followups.<key> '<options as JSON>'`; the experiment prints one JSON
object per line (progress, each step's outcome, errors, what it restored) and the page draws them
as they come. Its stderr goes to <data dir>/logs/followup-<key>.log.

Only one experiment runs on a stack at a time (a lock file in the data directory), and none while
the controller measures a run: both would disturb each other's figures.
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback

from workbench.stack import config

LOCK_FILE = "followup-experiment.lock"


def emit(message: dict) -> None:
    """In the experiment's process: one message to the page."""
    print(json.dumps(message, default=str), flush=True)


def prioritise() -> None:
    """As the controller's generator (workbench/loadgen/runs.py prioritise): real-time priority, so that
    sends leave on time on a busy machine; but reset on fork, so that the commands the experiment
    starts (reshard, mint-tokens) compete with the stack as equals."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
    except (OSError, AttributeError):
        pass


def main(experiment) -> int:
    """The experiment's process: `experiment(cfg, options, emit)` under the stack's lock, every failure
    said as an {"error": ...} message rather than a traceback on the page."""
    prioritise()
    cfg = config.load()
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.data_dir / LOCK_FILE, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            emit({"error": "Another follow-up experiment is running on this stack (from another tab or browser). "
                           "Wait for it to finish, then try again."})
            return 1
        try:
            busy = _run_going(cfg)
            if busy:
                emit({"error": f"The controller is measuring run {busy}; the experiment would disturb it. Wait "
                               "for it (the Load test page follows it), then try again."})
                return 1
            experiment(cfg, options, emit)
        except Exception as exc:  # noqa: BLE001 - said on the page, with the log for the details
            traceback.print_exc()
            emit({"error": f"The experiment stopped: {type(exc).__name__}: {exc}. Details in "
                           f"{cfg.log_dir}/followup-*.log; check the stack with `python manage.py status`."})
            return 1
    emit({"done": True})
    return 0


def _run_going(cfg) -> str | None:
    from workbench.loadgen.client import RunClient
    current = RunClient(cfg).list().get("current") or {}
    return current.get("id") if current.get("status") == "running" else None


def run(key: str, options: dict, on_message, timeout_s: float) -> list[dict]:
    """On the page: start the experiment `key`, call on_message(all messages so far) for each new one,
    and return them all. A process that dies or overruns adds an {"error": ...} of its own."""
    cfg = config.load()
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = cfg.log_dir / f"followup-{key}.log"
    messages: list[dict] = []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"lessons.followups.{key}", json.dumps(options)],
                                cwd=config.PROJECT_DIR, env=os.environ.copy(), stdout=subprocess.PIPE,
                                stderr=log, stdin=subprocess.DEVNULL, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            messages.append({"error": f"The experiment did not finish within {timeout_s:.0f} s; it goes on in "
                                      f"process {proc.pid} and puts the stack back when it ends (log: {log_path})."})
            on_message(messages)
            return messages
        if line is None:
            break
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            messages.append(message)
            on_message(messages)
    code = proc.wait()
    if code and not any("error" in m for m in messages):
        messages.append({"error": f"The experiment's process exited with code {code}; see {log_path}."})
        on_message(messages)
    return messages
