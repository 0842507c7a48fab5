"""The stack controller: brings the stack up, supervises it, and answers a small HTTP API.

Run by `manage.py up` as a detached process (`python -m workbench.stack.controller`). The CLI,
the dashboard and the tests talk to it over loopback with the bearer token in the data dir.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil

from . import apps, autoscale, caddy, chaos, config, datanodes, failover, postgres, reshardjob, valkey
from .process import CpuMeter, ProcessSpec, Supervised, stop_tree
from api import served  # noqa: E402 - plain module: counters in the state Valkey, no Django needed

HEALTH_INTERVAL = 1.0
ENGINE_ROLES = ("postgres", "pgbouncer", "valkey")  # what the app tier depends on: stopped last
MAX_BACKOFF = 30.0


class BringUpError(RuntimeError):
    pass


class RunBusy(RuntimeError):
    pass


class Controller:
    def __init__(self, cfg: config.StackConfig):
        self.cfg = cfg
        self.token = cfg.controller_token() or ""
        self.procs: dict[str, Supervised] = {}
        self.events: collections.deque = collections.deque(maxlen=200)
        self.logged = 0  # events logged since the start: the newest one's number (GET /live's cursor)
        self.events_lock = threading.Lock()
        self.phase = "starting"
        self.error: str | None = None
        self.started_at = time.time()
        self.stopping = threading.Event()
        self.lock = threading.RLock()
        self.run: dict | None = None          # the measurement run in progress (one at a time)
        self.run_proc: subprocess.Popen | None = None
        self.data_nodes: datanodes.DataNodes | None = None
        self.cpu = CpuMeter()  # CPU percent between status calls (process.py)
        self.apps: apps.AppTier | None = None  # set when bring-up reaches the app tier; scaling waits till then
        self.chaos = chaos.Chaos(self)  # processes held down, nodes slowed (chaos.py)
        self.reshard = reshardjob.ReshardJob(self)  # POST/GET /reshard: `manage.py reshard` as a child

    # --- events -------------------------------------------------------------------------------
    def log(self, event: str, **fields) -> None:
        record = {"ts": round(time.time(), 3), "event": event, **fields}
        with self.events_lock:
            self.logged += 1
            self.events.append(record)
        print(json.dumps(record), flush=True)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.log("phase", phase=phase)

    # --- bring-up -----------------------------------------------------------------------------
    def bring_up(self) -> None:
        cfg = self.cfg
        if not cfg.meta_database_url:
            self._start_postgres("pg-meta", "meta", cfg.meta_pg_port, "workbench_meta")
        if not cfg.database_url:
            self._start_postgres("pg-primary", "primary", cfg.data_pg_port, "workbench")
            datanodes.start_async(datanodes.node_url(cfg, "primary"))
        if not cfg.valkey_state_url:
            self._start(valkey.spec("state", cfg.valkey_state_port, cfg.data_dir / "valkey" / "state",
                                    cfg.log_dir / "valkey-state.log"))
        if not cfg.valkey_url:
            self._start(valkey.spec("cache", cfg.valkey_cache_port, cfg.data_dir / "valkey" / "cache",
                                    cfg.log_dir / "valkey-cache.log"))
        self.set_phase("migrating")
        self._manage("migrate", "--database", "default", "--noinput")
        self._manage("migrate", "--database", "primary", "--noinput")
        self.set_phase("seeding")
        self._manage("seed", "--if-empty", "--users", str(cfg.seed_users),
                     "--posts-per-user", str(cfg.seed_posts_per_user), "--no-progress")
        self._manage("demo_accounts")
        self.set_phase("starting shards and replicas")
        self.data_nodes = datanodes.DataNodes(self)
        stored = None
        try:  # the topology kept in the state Valkey may ask for shards and replicas: start them before serving
            stored = self.data_nodes.store.read().topology
            self.data_nodes.apply(stored)
        except Exception as exc:  # the apply thread keeps trying; the stack can serve from the primary
            self.log("topology_apply_failed", error=str(exc))
        threading.Thread(target=self.data_nodes.monitor_forever, daemon=True).start()
        self.set_phase("starting app servers")
        shutil.rmtree(cfg.run_dir / "draining", ignore_errors=True)  # a drain the last controller left half done
        self.apps = apps.AppTier(self)
        self.apps.scale(stored.app_servers if stored else cfg.app_servers)  # as many as the topology says
        self._start(apps.reconciler(cfg))
        self._start(apps.flusher(cfg))
        self._start(apps.relay(cfg))
        self._start(caddy.spec(cfg))
        self._start(apps.dashboard(cfg))
        try:  # again, now that the app servers and Caddy run, so that the report says so before `ready`
            self.data_nodes.apply(self.data_nodes.store.read().topology)
        except Exception as exc:  # as above: the apply thread keeps trying
            self.log("topology_apply_failed", error=str(exc))
        threading.Thread(target=self.data_nodes.apply_forever, daemon=True).start()
        threading.Thread(target=autoscale.Autoscaler(self).run_forever, daemon=True).start()
        threading.Thread(target=failover.Watcher(self).run_forever, daemon=True).start()
        self.set_phase("ready")

    def _start_postgres(self, name: str, role: str, port: int, database: str) -> None:
        data_dir = self.cfg.data_dir / "pg" / role
        self.set_phase(f"initialising {name}")
        postgres.init_cluster(data_dir)
        self._start(postgres.spec(name, data_dir, port, self.cfg.log_dir / f"{name}.log"))
        postgres.ensure_database(port, database)

    def _start(self, spec: ProcessSpec, timeout: float = 60.0) -> Supervised:
        proc = Supervised(spec)
        with self.lock:
            self.procs[spec.name] = proc
        proc.start()
        self._save_pids()
        self.log("started", name=spec.name, pid=proc.pid, port=spec.port)
        if not proc.wait_healthy(timeout):
            code = proc.exited()
            what = (f"exited with code {code} after {time.time() - proc.started_at:.1f}s" if code is not None
                    else f"did not become healthy within {timeout:.0f}s")
            raise BringUpError(f"{spec.name} {what}; see {spec.log_file}")
        return proc

    def _manage(self, *args: str) -> None:
        log_file = self.cfg.log_dir / "manage.log"
        with open(log_file, "ab") as log:
            result = subprocess.run([sys.executable, str(config.PROJECT_DIR / "manage.py"), *args],
                                    cwd=config.PROJECT_DIR, env={**os.environ, **apps.stack_env(self.cfg)},
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise BringUpError(f"`manage.py {' '.join(args)}` failed; see {log_file}")

    def _save_pids(self) -> None:
        """Record every child, so `down` can stop them by PID even if the controller has died."""
        entries = {}
        with self.lock:
            for name, proc in self.procs.items():
                if proc.pid:
                    try:
                        entries[name] = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
                    except psutil.Error:
                        pass
        path = self.cfg.run_dir / "processes.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        tmp.replace(path)

    # --- supervision --------------------------------------------------------------------------
    def supervise_forever(self) -> None:
        """Restart what dies (with a doubling backoff) and refresh health once a second."""
        backoff: dict[str, float] = {}
        restart_at: dict[str, float] = {}
        last_health = 0.0
        while not self.stopping.wait(0.25):
            now = time.monotonic()
            check_health = now - last_health >= HEALTH_INTERVAL
            if check_health:
                last_health = now
            with self.lock:
                procs = list(self.procs.values())
            # A restart pending for a process since stopped on purpose (an app server scaled away
            # while it was down) must not carry over to a new one of that name.
            for name in set(restart_at) - {p.spec.name for p in procs if not p.retired}:
                del restart_at[name]
            for proc in procs:
                if self.stopping.is_set():
                    return
                name = proc.spec.name
                if proc.retired:
                    continue
                code = proc.exited()
                if code is None:
                    if check_health:
                        proc.healthy = proc.spec.health()
                    if proc.healthy and time.time() - proc.started_at > 60:
                        backoff.pop(name, None)  # stable again
                    continue
                if name not in restart_at:
                    proc.healthy = False
                    proc.kill_leftovers()
                    delay = backoff.get(name, 0.5)
                    backoff[name] = min(delay * 2, MAX_BACKOFF)
                    restart_at[name] = now + delay
                    self.log("died", name=name, pid=proc.pid, exit_code=code, restart_in_s=delay)
                elif now >= restart_at[name] and not self.chaos.holds(name):  # `chaos stop` holds it down
                    del restart_at[name]
                    proc.restarts += 1
                    proc.start()
                    self._save_pids()
                    self.log("restarted", name=name, pid=proc.pid, restarts=proc.restarts)

    def shutdown(self) -> None:
        self.stopping.set()
        self.set_phase("stopping")
        with self.lock:
            procs = list(self.procs.values())
            if self.run_proc and self.run_proc.poll() is None:
                stop_tree(self.run_proc.pid, timeout=5)
        self.reshard.stop()
        # Front to back: nothing accepts requests while what it depends on goes away. Data nodes
        # started after the app servers (shards, replicas added live) still go after them.
        for proc in sorted(reversed(procs), key=lambda p: p.spec.role in ENGINE_ROLES):
            proc.stop()
            self.log("stopped", name=proc.spec.name, pid=proc.pid)
        (self.cfg.run_dir / "processes.json").unlink(missing_ok=True)
        self.set_phase("stopped")

    # --- measurement runs -----------------------------------------------------------------------
    def start_run(self, spec: dict, label: str) -> dict:
        """Start a load-generator run in its own process; the controller only relays its progress."""
        from workbench.loadgen import runs
        from workbench.loadgen.workload import Workload

        workload = Workload.from_dict(spec)  # raises WorkloadError naming the field
        with self.lock:
            if self.run and self.run["status"] == "running":
                raise RunBusy(self.run["id"])
            run_id = runs.new_run_id()
            self.run = {"id": run_id, "status": "running", "label": label, "progress": {},
                        "workload": workload.to_dict(), "error": None}
            log = open(self.cfg.log_dir / f"run-{run_id}.log", "wb")
            self.run_proc = subprocess.Popen(
                [sys.executable, "-m", "workbench.loadgen", run_id, json.dumps(workload.to_dict()), label],
                cwd=config.PROJECT_DIR, env={**os.environ, **apps.stack_env(self.cfg)},
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
            log.close()
        threading.Thread(target=self._follow_run, args=(self.run, self.run_proc), daemon=True).start()
        self.log("run_started", id=run_id, label=label, rate=workload.rate, mode=workload.mode)
        return dict(self.run)

    def _follow_run(self, run: dict, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "progress" in message:
                run["progress"] = message["progress"]
        code = proc.wait()
        run["status"] = "done" if code == 0 else "failed"
        if code != 0:
            run["error"] = f"the run exited with code {code}; see logs/run-{run['id']}.log"
        self.log("run_finished", id=run["id"], status=run["status"])

    # --- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        cfg = self.cfg
        me = psutil.Process()
        rows = [{"role": "controller", "name": "controller", "pid": me.pid, "port": cfg.controller_port,
                 "healthy": True, "uptime_s": round(time.time() - self.started_at, 1),
                 "rss_bytes": me.memory_info().rss, "restarts": 0}]
        with self.lock:
            procs = list(self.procs.values())
        report = self.data_nodes.last_report if self.data_nodes else None
        for proc in procs:
            running = proc.exited() is None
            rows.append({"role": proc.spec.role, "name": proc.spec.name, "pid": proc.pid if running else None,
                         "port": proc.spec.port, "healthy": running and proc.healthy,
                         "uptime_s": round(time.time() - proc.started_at, 1) if running else 0,
                         "rss_bytes": proc.rss_bytes() if running else 0, "restarts": proc.restarts})
        # The controller alone (its tree holds every supervised process); the others with their
        # children, so a gunicorn master counts its workers and the postmaster its backends.
        cpu = self.cpu.percents({row["name"]: (row["pid"], row["role"] != "controller") for row in rows})
        for row in rows:
            row["cpu_percent"] = cpu.get(row["name"], 0.0) if row["pid"] else None
        return {
            "phase": self.phase, "error": self.error,
            "api_url": cfg.api_url, "https_url": cfg.https_url,  # TLS: verify with cfg.caddy_root_ca
            "direct_urls": [cfg.direct_url(i) for i in (self.apps.running() if self.apps else [])],
            "dashboard_url": cfg.dashboard_url,
            "controller_url": cfg.controller_url,
            "data_dir": str(cfg.data_dir),
            "processes": rows,
            "data_nodes": report.to_dict() if report else None,
            # Per app server, from Caddy's upstream stats (GET /reverse_proxy/upstreams).
            "upstreams": caddy.upstreams(cfg) if self.phase == "ready" else None,
            # Requests each app server answered since the start, as the servers counted them (api/served.py).
            "served": self._served(),
            "chaos": self.chaos.state(),
        }

    def _served(self) -> dict:
        try:
            return served.totals(self.data_nodes.state) if self.data_nodes else {}
        except Exception:  # noqa: BLE001 - the state Valkey down: the status still answers
            return {}


class _Handler(BaseHTTPRequestHandler):
    controller: Controller

    def log_message(self, *args):  # keep the controller log for events, not access lines
        pass

    def _send(self, code: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _authorized(self) -> bool:
        return config.bearer_matches(self.headers.get("Authorization", ""), self.controller.token)

    def do_GET(self):
        ctl = self.controller
        if self.path == "/health":
            return self._send(200, {"ok": True, "phase": ctl.phase, "error": ctl.error})
        if not self._authorized():
            return self._send(401, {"error": "missing or wrong controller token"})
        if self.path == "/status":
            return self._send(200, ctl.status())
        if self.path == "/events":
            return self._send(200, {"events": list(ctl.events)})
        if self.path == "/metrics":  # the whole stack in the Prometheus text format (metrics.py)
            from . import metrics
            payload = metrics.collect(ctl)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return None
        if self.path.split("?")[0] == "/live":  # the dashboard's Live metrics page: one request per refresh
            from . import live
            try:
                since = live.cursor(self.path)
            except live.QueryError as exc:
                return self._send(400, {"error": str(exc), "field": exc.field})
            return self._send(200, live.snapshot(ctl, since))
        if self.path == "/reshard":
            return self._send(200, ctl.reshard.state())
        if self.path == "/runs":
            from workbench.loadgen import runs
            return self._send(200, {"current": ctl.run, "runs": runs.list_results(ctl.cfg)})
        if self.path.startswith("/runs/"):
            from workbench.loadgen import runs
            run_id = self.path.removeprefix("/runs/")
            if ctl.run and ctl.run["id"] == run_id and ctl.run["status"] == "running":
                return self._send(200, {"status": "running", **ctl.run})
            result = runs.load_result(ctl.cfg, run_id)
            if result is None:
                if ctl.run and ctl.run["id"] == run_id:
                    return self._send(200, ctl.run)  # failed before saving a result
                return self._send(404, {"error": f"no run {run_id}"})
            return self._send(200, {"status": "done", **result})
        return self._send(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self):
        if not self._authorized():
            return self._send(401, {"error": "missing or wrong controller token"})
        if self.path == "/runs":
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                run = self.controller.start_run(body.get("workload") or {}, str(body.get("label", ""))[:100])
            except (ValueError, TypeError) as exc:
                return self._send(400, {"error": f"bad request: {exc}", "field": getattr(exc, "field", "(body)")})
            except RunBusy as exc:
                return self._send(409, {"error": f"run {exc} is still going; one run at a time", "run": str(exc)})
            return self._send(202, run)
        if self.path == "/reshard":  # {"to": N, "strategy": optional} (reshardjob.py)
            return self._send(*self.controller.reshard.post(self.headers, self.rfile))
        if self.path == "/chaos":  # kill | stop | start | slow | failover (chaos.py)
            try:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
                if not isinstance(body, dict):
                    raise chaos.ChaosError("(body)", "the body must be a JSON object")
                result = self.controller.chaos.act(body.get("action"), body.get("role"), body.get("ms"),
                                                   body.get("shard"))
            except chaos.ChaosError as exc:
                return self._send(400, {"error": str(exc), "field": exc.field})
            except json.JSONDecodeError as exc:
                return self._send(400, {"error": f"bad JSON: {exc}", "field": "(body)"})
            except RuntimeError as exc:  # a failover that could not be carried out: nothing changed
                return self._send(409, {"error": str(exc), "field": "action"})
            return self._send(200, result)
        if self.path == "/shutdown":
            self._send(202, {"stopping": True})
            threading.Thread(target=lambda: os.kill(os.getpid(), signal.SIGTERM), daemon=True).start()
            return None
        return self._send(404, {"error": f"no such endpoint {self.path}"})


def main() -> int:
    cfg = config.load()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ctl = Controller(cfg)
    handler = type("Handler", (_Handler,), {"controller": ctl})
    server = ThreadingHTTPServer(("127.0.0.1", cfg.controller_port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    me = psutil.Process()
    (cfg.run_dir / "controller.json").write_text(json.dumps({"pid": me.pid, "create_time": me.create_time()}))

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())

    def run():
        try:
            ctl.bring_up()
        except Exception as exc:  # report it to `up`, then stop what did start
            ctl.error = str(exc)
            ctl.set_phase("failed")
            ctl.log("bring_up_failed", error=str(exc))
            return
        ctl.supervise_forever()

    threading.Thread(target=run, daemon=True).start()
    done.wait()
    ctl.shutdown()
    server.shutdown()
    (cfg.run_dir / "controller.json").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
