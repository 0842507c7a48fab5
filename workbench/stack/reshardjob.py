"""The controller's reshard job: `POST /reshard` starts `manage.py reshard --to N [--strategy S]` as a
child of the controller, `GET /reshard` says how it is going. The dashboard talks to the stack only
over HTTP, so this is how it reshards; the command itself does the moving (api/routing/reshard.py)
and keeps the job's progress in the meta database (the admin shards API's `last_reshard`).

One at a time, and not during a load-test run (a run measured while rows move would measure the
reshard). Its own session, like the load generator, so a signal meant for the controller's group
does not stop it halfway; an interrupted reshard waits for `reshard --resume` or `--rollback`."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time

from workbench import topology

from . import apps, config
from .process import stop_tree

TAIL_BYTES = 65536   # the log's end: enough for the command's summary or its error


class ReshardInputError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _meta(name: str) -> dict:
    return {f.name: f for f in dataclasses.fields(topology.Topology)}[name].metadata


def parse(body) -> tuple[int, str | None]:
    """(to, strategy) from a POST body, or ReshardInputError naming the field at fault."""
    if not isinstance(body, dict):
        raise ReshardInputError("(body)", "the body must be a JSON object like {\"to\": 2}")
    shards, sharding = _meta("shards"), _meta("sharding")
    to = body.get("to")
    if isinstance(to, bool) or not isinstance(to, int) or not shards["low"] <= to <= shards["high"]:
        raise ReshardInputError("to", f"`to` must be a whole number of shards, {shards['low']}..{shards['high']}, "
                                      f"not {json.dumps(to)}")
    strategy = body.get("strategy")
    if strategy is not None and strategy not in sharding["choices"]:
        raise ReshardInputError("strategy", f"`strategy` must be one of {', '.join(sharding['choices'])}, "
                                            f"not {json.dumps(strategy)}")
    return to, strategy


def last_line(text: str, failed: bool = False) -> str | None:
    """The command's newest line (its progress lines end in \\r); on failure its error, if it said one."""
    lines = [x.strip() for x in text.replace("\r", "\n").splitlines() if x.strip()]
    errors = [x for x in lines if "Error" in x] if failed else []
    return ((errors or lines) or [None])[-1]


class ReshardJob:
    def __init__(self, ctl):
        self.ctl = ctl
        self.proc: subprocess.Popen | None = None
        self.job: dict = {"to": None, "strategy": None, "pid": None, "started_at": None, "finished_at": None,
                          "returncode": None}

    @property
    def log_file(self):
        return self.ctl.cfg.log_dir / "reshard.log"

    def state(self) -> dict:
        running = self.proc is not None and self.proc.poll() is None
        tail = ""
        if self.job["started_at"]:
            try:
                with open(self.log_file, "rb") as f:
                    f.seek(max(0, os.path.getsize(self.log_file) - TAIL_BYTES))
                    tail = f.read().decode(errors="replace")
            except OSError:
                pass
        failed = not running and self.job["returncode"] not in (None, 0)
        return {**self.job, "running": running, "last_line": last_line(tail, failed), "log": str(self.log_file)}

    def post(self, headers, rfile) -> tuple[int, dict]:
        """The HTTP answer to POST /reshard: 202 with the state, 400 naming the field, 409 when busy."""
        try:
            body = json.loads(rfile.read(min(int(headers.get("Content-Length") or 0), 65536)) or b"{}")
            to, strategy = parse(body)
        except ReshardInputError as exc:
            return 400, {"error": str(exc), "field": exc.field}
        except ValueError as exc:  # bad JSON or Content-Length
            return 400, {"error": f"bad request: {exc}", "field": "(body)"}
        busy = self.start(to, strategy)
        if busy:
            return 409, {"error": busy, "field": "to"}
        return 202, self.state()

    def start(self, to: int, strategy: str | None) -> str | None:
        """Start the command; None, or why it cannot start now."""
        ctl = self.ctl
        with ctl.lock:
            if self.proc is not None and self.proc.poll() is None:
                return (f"a reshard to {self.job['to']} shards (pid {self.proc.pid}) is still going; one at a time: "
                        "GET /reshard follows it")
            if ctl.run and ctl.run["status"] == "running":
                return f"load-test run {ctl.run['id']} is going; reshard once it has finished"
            if ctl.phase != "ready":
                return f"the stack is {ctl.phase}, not ready"
            args = ["reshard", "--to", str(to)] + (["--strategy", strategy] if strategy else [])
            with open(self.log_file, "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, str(config.PROJECT_DIR / "manage.py"), *args],
                    cwd=config.PROJECT_DIR, env={**os.environ, **apps.stack_env(ctl.cfg)},
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self.job = {"to": to, "strategy": strategy, "pid": self.proc.pid, "started_at": round(time.time(), 3),
                        "finished_at": None, "returncode": None}
        ctl.log("reshard_start", pid=self.proc.pid, to=to, strategy=strategy)
        threading.Thread(target=self._wait, args=(self.proc, self.job), daemon=True).start()
        return None

    def _wait(self, proc: subprocess.Popen, job: dict) -> None:
        code = proc.wait()
        job["returncode"], job["finished_at"] = code, round(time.time(), 3)
        fields = {"pid": proc.pid, "to": job["to"], "strategy": job["strategy"], "returncode": code,
                  "seconds": round(job["finished_at"] - job["started_at"], 1)}
        if code == 0:
            self.ctl.log("reshard_done", **fields)
        else:
            self.ctl.log("reshard_failed", **fields, last_line=self.state()["last_line"])

    def stop(self) -> None:
        """At shutdown, before the databases go: the job stays resumable (`reshard --resume`)."""
        if self.proc is not None and self.proc.poll() is None:
            stop_tree(self.proc.pid, timeout=10)
