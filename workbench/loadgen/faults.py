"""Fault runs: a load run from the load generator with a real fault in the middle, and the books
checked afterwards (issue 12). One code path serves `manage.py faults` (figures for
docs/reliability.md) and the fault tests (which assert the behaviour).

A run applies the scenario's topology, starts an open-loop load (reads and post creations, each
write made by its owner), injects the fault through the controller's chaos API at `fault_at_s`,
optionally recovers it `hold_s` later, and then:
- counts failures by request kind, and when the first and last happened (the outage window);
- checks the ledger: every post the API acknowledged (201 with its Location) must be in the
  database; the ones missing are writes lost;
- reports availability (successes / requests) and the error budget that burned against 99.99%.

Given a `label`, the run is also saved like every run (<data dir>/results/<id>.json, so the
controller's GET /runs/{id} and the Load test page serve it), with the outcome under "fault"; the
dashboard's Follow-ups page shows it from there. `on_progress` gets the live counts each second.
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import re
import urllib.parse
import threading
import time
from dataclasses import asdict, dataclass, field

import psycopg

from workbench.stack import config, launcher

from . import engine, runs
from .client import TopologyClient
from .runs import load_keys, load_tokens, shard_groups
from .workload import Workload

SLO_AVAILABILITY = 0.9999
POST_LOCATION = re.compile(r"/users/([0-9]+)/posts/([0-9]+)$")
READS = {"user": 0.5, "user_posts": 0.5}


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str                      # the fault, in words
    topology: dict                 # patched before the run
    fault: tuple                   # (action, role) for the chaos API, or a callable doing the fault itself
    recover: tuple | None = None   # the same, `hold_s` after the fault, if the fault needs a hand
    hold_s: float = 3.0
    target: str = ""               # what the issue asks of it
    # Single requests sent once while the fault holds (1 s after it): what works and what does not.
    probes: tuple = ()
    # The controller event (and process name) that marks it recovered: the recovery time runs from
    # the chaos event to it.
    recovered: tuple = ("restarted", None)


SCENARIOS = {
    "replica": Scenario("replica", "replica-1 SIGKILLed (restarted by supervision)", {"replicas": 2},
                        ("kill", "replica-1"), target="zero failed reads: a read retries on another node",
                        recovered=("replica_back_in_rotation", "replica-1")),
    "cache-node": Scenario("cache-node", "the cache Valkey SIGKILLed", {"cache": {"mode": "cache-aside"}},
                           ("kill", "valkey-cache"), target="zero 5xx: reads fall through to the database",
                           recovered=("restarted", "valkey-cache")),
    "app-server": Scenario("app-server", "app-2 SIGKILLed", {"app_servers": 2}, ("kill", "app-2"),
                           target="failures only within Caddy's health interval, none after",
                           recovered=("restarted", "app-2")),
    "primary": Scenario("primary", "the primary SIGKILLed and held down; automatic failover after 2 s",
                        {"replicas": 2, "failover": {"auto": True, "grace_s": 2}}, ("stop", "primary"),
                        target="reads continue; writes 503 until the failover; zero lost with sync replication",
                        recovered=("failover_done", None)),
    "meta": Scenario("meta", "meta SIGKILLed and held down for 3 s, then started", {}, ("stop", "meta"),
                     recover=("start", "meta"),
                     probes=(("sign-up", "POST", "/api/v1/users",
                              {"username": "probe_{n}", "email": "probe_{n}@example.org", "password": "a long secret"}),
                             ("sign-in", "POST", "/api/v1/auth/token", {"username": "nobody_{n}", "password": "wrong"}),
                             ("read a user", "GET", "/api/v1/users/{user}", None)),
                     target="shows what needs meta (sign-in, sign-up, the directory) and what does not",
                     recovered=("restarted", "pg-meta")),
}


@dataclass
class Outcome:
    scenario: str
    replication: str
    rate: float
    duration_s: float
    fault_at_s: float
    requests: int
    ok: int
    errors: dict
    failed_by_kind: dict
    by_kind: dict
    fault_s: float                 # when the chaos event happened, on the load's timeline
    first_failure_s: float | None
    last_failure_s: float | None
    acknowledged_writes: int
    writes_lost: int
    lost_ids: list = field(default_factory=list)
    probes: dict = field(default_factory=dict)   # label -> (HTTP status or error, ms)
    events: list = field(default_factory=list)
    valid: bool = True
    run_id: str | None = None      # the saved run, when run() was given a label

    @property
    def failed(self) -> int:
        return self.requests - self.ok

    @property
    def availability(self) -> float:
        return self.ok / self.requests if self.requests else 0.0

    @property
    def budget_burned(self) -> float:
        """The share of a 99.99% error budget this run's failures used (1.0: all of it)."""
        return (1 - self.availability) / (1 - SLO_AVAILABILITY)

    recovered: tuple = ("restarted", None)

    @property
    def recovery_s(self) -> float | None:
        """From the chaos event to the scenario's recovery event, by the controller's clock."""
        fault = next((e for e in self.events if e["event"].startswith("chaos_")), None)
        event, name = self.recovered
        done = next((e for e in self.events if fault and e["ts"] >= fault["ts"] and e["event"] == event
                     and (name is None or e.get("name") == name)), None)
        return round(done["ts"] - fault["ts"], 2) if done else None

    @property
    def outage_s(self) -> float:
        if self.first_failure_s is None:
            return 0.0
        return self.last_failure_s - self.first_failure_s

    def five_xx(self) -> int:
        return sum(n for code, n in self.errors.items() if code.isdigit() and code.startswith("5"))

    def failed_reads(self) -> int:
        return sum(n for kind, n in self.failed_by_kind.items() if kind in READS)

    def failed_writes(self) -> int:
        return self.failed_by_kind.get("create_post", 0)


def run(cfg: config.StackConfig, scenario: Scenario, *, rate: float = 50, duration_s: float = 8,
        fault_at_s: float = 2, replication: str = "async", seed: int = 1, label: str | None = None,
        on_progress=None) -> Outcome:
    topo = TopologyClient(cfg)
    patch = dict(scenario.topology)
    if "replicas" in patch:
        patch["replication"] = replication
    if patch:
        topo.apply(patch)
    w = Workload(mode="open", rate=rate, duration_s=duration_s, read_ratio=0.8, reads=READS,
                 writes={"create_post": 1.0}, seed=seed, timeout_s=10).validate()
    users, posts = load_keys(cfg)
    tokens = load_tokens(cfg, users)
    since = time.time()  # the controller keeps its last 200 events: a count would slide once it is full
    box: dict = {}
    counters = multiprocessing.get_context("fork").Array("q", 2)
    loader = threading.Thread(target=lambda: box.update(
        rec=engine.run(w, cfg.api_url, users, posts, 1, counters, tokens)))
    started = time.monotonic()
    with runs.CpuSampler() as cpu:
        loader.start()
        if on_progress:
            threading.Thread(target=_report, args=(on_progress, loader, counters, started, duration_s, box),
                             daemon=True).start()
        try:
            _at(started + engine.START_LEAD_S + fault_at_s)
            box["fault_ts"] = time.time()
            _act(cfg, scenario.fault)
            fault_time = time.monotonic()
            if scenario.probes:
                _at(fault_time + 1.0)
                box["probes"] = probe(cfg, scenario.probes, users[0])
            if scenario.recover:
                _at(fault_time + scenario.hold_s)
                _act(cfg, scenario.recover)
        finally:
            loader.join()
    rec = box["rec"]
    lost = verify_ledger(cfg, rec.created)
    failed_at = sorted(rec.failed_at)
    summary = rec.summary(duration_s)
    outcome = Outcome(
        scenario=scenario.name, replication=replication, rate=rate, duration_s=duration_s, fault_at_s=fault_at_s,
        fault_s=round(box["fault_ts"] - rec.started_at, 3) if rec.started_at else fault_at_s,
        requests=rec.ok + sum(rec.errors.values()), ok=rec.ok, errors=dict(rec.errors),
        failed_by_kind=dict(rec.failed_by_kind), by_kind=dict(rec.by_kind),
        first_failure_s=failed_at[0] if failed_at else None, last_failure_s=failed_at[-1] if failed_at else None,
        acknowledged_writes=len(rec.created), writes_lost=len(lost), lost_ids=lost[:20],
        events=[e for e in _events(cfg) if e["ts"] >= since], valid=summary["valid"], probes=box.get("probes", {}),
        recovered=scenario.recovered)
    if label is not None:
        outcome.run_id = save(cfg, outcome, rec, w, label, time.monotonic() - started, cpu)
    return outcome


def _report(on_progress, loader, counters, started: float, duration_s: float, box: dict) -> None:
    """The live counts, as the controller relays a run's, and when the fault went in (time.time(), or None)."""
    while loader.is_alive():
        on_progress({"elapsed_s": round(time.monotonic() - started, 1), "ok": counters[0], "errors": counters[1],
                     "duration_s": duration_s, "fault_ts": box.get("fault_ts")})
        loader.join(1.0)


def save(cfg: config.StackConfig, o: Outcome, rec, w: Workload, label: str, wall_s: float, cpu) -> str:
    """The run saved as the controller saves one (workbench/loadgen/runs.py), the outcome under "fault"."""
    run_id = runs.new_run_id()
    result = {
        "id": run_id, "label": label, "target": cfg.api_url, "started_at": runs.started_iso(rec),
        "wall_s": round(wall_s, 2), "workload": w.to_dict(), "processes": 1, "topology": runs.topology_of(cfg),
        "machine": {**runs.machine(), "cpu": cpu.summary()}, "versions": runs.versions(),
        "model": "open (latency from intended send time)", "summary": rec.summary(w.duration_s),
        "timeseries": rec.timeseries(), "histogram": rec.histogram.encode().decode(), "warnings": [],
        "fault": {**asdict(o), "failed": o.failed, "availability": o.availability,
                  "budget_burned": o.budget_burned, "recovery_s": o.recovery_s, "outage_s": o.outage_s,
                  "failed_reads": o.failed_reads(), "failed_writes": o.failed_writes(), "five_xx": o.five_xx()},
    }
    (runs.results_dir(cfg) / f"{run_id}.json").write_text(json.dumps(result, indent=1))
    return run_id


def probe(cfg: config.StackConfig, probes: tuple, user: int) -> dict:
    """Send each probe once, from a loopback address of its own (127.0.0.x), so that the per-IP
    sign-up limit spent by earlier runs does not answer in the fault's place."""
    out = {}
    n = time.time_ns() % 10**12
    url = urllib.parse.urlsplit(cfg.api_url)
    source = f"127.0.{n % 200 + 10}.{n % 250 + 2}"
    for label, method, path, body in probes:
        payload = json.dumps({k: v.format(n=n) for k, v in body.items()}).encode() if body else None
        started = time.monotonic()
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=15, source_address=(source, 0))
        try:
            conn.request(method, path.format(user=user), body=payload, headers={"Content-Type": "application/json"})
            outcome = conn.getresponse().status
        except OSError as exc:
            outcome = type(exc).__name__
        finally:
            conn.close()
        out[label] = (outcome, round((time.monotonic() - started) * 1000, 1))
    return out


def verify_ledger(cfg: config.StackConfig, locations: list[str]) -> list[int]:
    """The acknowledged posts that no shard primary holds: writes lost."""
    wanted = set()
    for location in locations:
        match = POST_LOCATION.search(location)
        if match:
            wanted.add(int(match.group(2)))
    found = set()
    for shard in range(1, shard_groups(cfg) + 1):
        with _connect(cfg.shard_url(shard)) as conn:
            rows = conn.execute("SELECT id FROM api_post WHERE id = ANY(%s)", (list(wanted),)).fetchall()
        found.update(r[0] for r in rows)
    return sorted(wanted - found)


def _connect(url: str, wait_s: float = 60) -> psycopg.Connection:
    """A shard primary may still be coming back when the load ends (a failover that outlasts a short
    run): the ledger waits for it rather than failing the run."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return psycopg.connect(url, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _act(cfg, step) -> None:
    step() if callable(step) else _chaos(cfg, *step)


def _chaos(cfg, action: str, role: str) -> None:
    code, answer = launcher.chaos(cfg, action, role)
    if code != 200:
        raise RuntimeError(f"chaos {action} {role}: {answer}")


def _events(cfg) -> list[dict]:
    return launcher._get(cfg, "/events")["events"]


def _at(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def row(o: Outcome, command: str) -> str:
    """One line of the fault table in docs/reliability.md."""
    errors = ", ".join(f"{n} × {code}" for code, n in sorted(o.errors.items())) or "none"
    window = (f"{o.outage_s:.2f} s ({o.first_failure_s - o.fault_s:+.2f} s to "
              f"{o.last_failure_s - o.fault_s:+.2f} s from the fault)" if o.first_failure_s is not None else "no failure")
    recovery = f"{o.recovery_s:.2f} s ({o.recovered[0]})" if o.recovery_s is not None else "not seen"
    if o.probes:
        errors += "; while down: " + ", ".join(f"{label} {status} in {ms:g} ms" for label, (status, ms) in o.probes.items())
    return (f"| {o.scenario}{' (' + o.replication + ')' if o.scenario == 'primary' else ''} | {o.rate:g} req/s × "
            f"{o.duration_s:g} s, fault at {o.fault_at_s:g} s | {o.failed:,} of {o.requests:,} ({errors}); reads "
            f"{o.failed_reads()}, writes {o.failed_writes()} | {window} | {recovery} | {o.writes_lost} of "
            f"{o.acknowledged_writes:,} | {o.availability:.4%} | {o.budget_burned:,.1f}× | `{command}` |")


def timeline(o: Outcome) -> list[str]:
    """The controller events of the run, as offsets from the first one."""
    if not o.events:
        return []
    t0 = o.events[0]["ts"]
    return [f"+{e['ts'] - t0:.2f}s {e['event']} {e.get('name', '')}".rstrip() for e in o.events
            if e["event"] not in ("topology_progress", "monitor_failed")]
