"""A follow-up's experiment runs in a process of its own; the page starts it and follows it.

The load generator never runs inside Streamlit (DESIGN.md section 1), and an experiment that
changes the stack must finish and put the stack back even if the browser tab goes away. So the
page starts `python -m lessons.followups.<key> '<options as JSON>'`; the experiment prints one JSON
object per line (progress, each step's outcome, errors, what it restored) and the page draws them
as they come. Its stderr goes to <data dir>/logs/followup-<key>.log.

Only one experiment runs on a stack at a time (a lock file in the data directory), and none while
the controller measures a run: both would disturb each other's figures.

`page` is the page's side: the button's run drawn live in place, then the last one kept in the
session (so a rerun of the page redraws it without running anything).
"""
from __future__ import annotations

import fcntl
import http.client
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

from workbench.stack import config

LOCK_FILE = "followup-experiment.lock"


def emit(message: dict) -> None:
    """In the experiment's process: one message to the page. A page that went away (its tab closed,
    the dashboard stopped) must not stop the experiment before it has put the stack back."""
    try:
        print(json.dumps(message, default=str), flush=True)
    except (BrokenPipeError, ValueError):  # ValueError: stdout already closed after a broken pipe
        pass


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


def call(cfg, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
    """In the experiment's process: one request through Caddy, from a loopback address of its own
    (127.0.x.y, as faults.probe sends), so that a limit per IP, if the learner turned rate limiting
    on, does not answer in the experiment's place. What came back, headers and body, and how long."""
    url = urllib.parse.urlsplit(cfg.api_url)
    n = time.time_ns() // 1000
    source = f"127.0.{n % 200 + 10}.{n // 200 % 250 + 2}"
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    shown = {k: v for k, v in (body or {}).items() if k != "password"}
    started = time.monotonic()
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        raw = r.read()
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = {"text": raw[:300].decode(errors="replace")}
        out = {"status": r.status, "content_type": r.getheader("Content-Type"), "body": answer,
               "db_node": r.getheader("X-DB-Node"), "retry_after": r.getheader("Retry-After"),
               "location": r.getheader("Location")}
    except OSError as exc:
        out = {"status": type(exc).__name__, "body": {"error": str(exc)}}
    finally:
        conn.close()
    return {"request": f"{method} {path}" + (f" {json.dumps(shown)}" if shown else ""), **out,
            "ms": round((time.monotonic() - started) * 1000, 1)}


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


def page(key: str, start: bool, options: dict, timeout_s: float, draw) -> None:
    """Run the experiment `key` if `start`, drawing its messages live with draw(messages, running=True);
    then draw(messages) of the last experiment this session ran."""
    import streamlit as st

    state = f"fu_{key}_messages"
    if start:
        live = st.empty()

        def redraw(messages: list[dict]) -> None:
            with live.container():
                draw(messages, running=True)

        st.session_state[state] = run(key, options, redraw, timeout_s)
        live.empty()
    if st.session_state.get(state):
        draw(st.session_state[state])


def per_second(result: dict, height: int = 170) -> None:
    """A saved run's successes and failures per second: where the fault's window was."""
    import pandas as pd
    import streamlit as st

    series = pd.DataFrame([{"second": r["t"], "ok": r["ok"], "failed": sum(r["errors"].values())}
                           for r in result["timeseries"]]).set_index("second")
    st.bar_chart(series, color=["#2ca02c", "#d62728"], height=height, x_label="second of the run",
                 y_label="requests")


def saved_run(run_id: str, title: str | None = None) -> dict | None:
    """A fault run as saved (read back through the controller), shown as measured.run_card shows any
    run; None, with the reason on the page, when it cannot be read."""
    from lessons import measured
    from lessons.client import ApiError
    import streamlit as st

    try:
        result = measured.saved(run_id)
    except ApiError as exc:
        st.error(str(exc))
        return None
    measured.run_card(result, title)
    s = result["summary"]
    if not s["valid"]:  # as the Load test page does: kept apart, collapsed, and said to be no result
        with st.expander(f"Latency figures of this INVALID run: {measured.INVALID_NOTE}", icon=":material/block:"):
            for col, p in zip(st.columns(3), ("p50", "p95", "p99")):
                col.metric(f"{p} latency", measured.ms(s["latency"][f"{p}_ms"]))
    return result


def error_kinds(fault: dict) -> str:
    return ", ".join(f"{n} \u00d7 {code}" for code, n in sorted(fault["errors"].items())) or "none"


def load_progress(p: dict | None, waiting: str, extra: str = "") -> None:
    """The load's live counts (faults.run's on_progress) as a progress bar."""
    import streamlit as st

    if p is None:
        st.progress(0.0, text=waiting)
        return
    elapsed, duration = p["elapsed_s"], p["duration_s"]
    st.progress(min(1.0, elapsed / duration), text=f"Load: {elapsed:.1f} of {duration:g} s, {p['ok']:,} ok, "
                                                   f"{p['errors']:,} errors{extra}")
