"""The Trade-offs experiments, written once for the Trade-offs page and the follow-ups that reuse them
(lessons/followups/invalidation.py, cost.py). No Streamlit widgets here: each experiment takes a
`slot` (an st.empty()) for its progress and returns what it measured, or raises ApiError saying
what failed and what to do.

Every experiment that changes the topology records it first and puts it back afterwards (PUT of the
whole document as it was, then a check that every setting reads back the same), and says so in its
result's `restored`. The measurements are the product's own: load runs through the controller
(lessons/measured.py), the stale-read probe (workbench/loadgen/staleprobe.py, in-process, bounded,
and `manage.py stale_probe` for the caching strategies), `manage.py write_behind_loss`, the admin
read-model API, and the capacity model (workbench/capacity/) for what is modelled.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import requests

from lessons import measured
from lessons.client import ApiError, StackClient
from workbench import topology
from workbench.capacity import calibration, cost, costs, fleet
from workbench.loadgen.client import TopologyClient, TopologyError
from workbench.loadgen.staleprobe import Probe
from workbench.stack import config

ROOT = Path(__file__).resolve().parents[1]
PROBE_USERS = 10          # as `manage.py stale_probe` (one writer thread each)
PROBE_READERS = 4
OWN_PAIRS = 5            # the writer's own reads: a write, then at once a read of it
SETTLE_S = topology.REFRESH_S + 0.3   # every app worker has picked a topology change up
COMMAND_GRACE_S = 90      # a management command's start-up, topology changes and restore, beyond its runs


def _cfg():
    return config.load()


def api_root() -> str:
    return _cfg().api_url + "/api/v1"


# --- the topology: change it, and put it back exactly ------------------------------------------------
def _topo() -> TopologyClient:
    return TopologyClient(_cfg())


def _failed(what: str, exc: Exception) -> ApiError:
    fix = ("Check the stack with `python manage.py status`; `python manage.py topology show` prints the topology.")
    return ApiError(f"{what}: {exc}. {fix}")


def read_topology(topo: TopologyClient | None = None) -> dict:
    try:
        return (topo or _topo()).data()["topology"]
    except (TopologyError, requests.RequestException, ValueError, KeyError) as exc:
        raise _failed("The topology could not be read (admin API)", exc) from None


def apply(patch: dict, topo: TopologyClient | None = None) -> int:
    """Merge `patch` into the topology and wait until the controller runs it, then until every app
    worker has seen it; the topology's new version."""
    try:
        version = (topo or _topo()).apply(patch)["version"]
    except (TopologyError, requests.RequestException, ValueError, KeyError) as exc:
        raise _failed(f"The topology change {json.dumps(patch)} was not applied", exc) from None
    time.sleep(SETTLE_S)
    return version


def differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    """The dotted names of the settings whose values differ."""
    names = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(prefix + key)
    return names


def restore(before: dict, topo: TopologyClient | None = None) -> str:
    """Put the whole topology back as `before` (placement is changed only by resharding, so it is
    left out) and say whether every setting reads back the same."""
    topo = topo or _topo()
    try:
        topo.apply({k: v for k, v in before.items() if k not in topology.PLACEMENT_FIELDS}, replace=True)
    except (TopologyError, requests.RequestException, ValueError) as exc:
        raise _failed("The topology could NOT be put back as it was before the experiment", exc) from None
    time.sleep(SETTLE_S)
    left = differences(before, read_topology(topo))
    if left:
        return (f"The topology was put back, but these settings differ from before the experiment: "
                f"{', '.join(left)} (another change was made meanwhile?). See the Stack status page.")
    return "Topology restored: every setting is as it was before the experiment (checked after the controller applied it)."


@contextlib.contextmanager
def changed_topology(notes: list):
    """Records the topology, yields, and puts it back whatever happened: what `restore` said goes to
    `notes`, or onto the message of the ApiError that stopped the experiment."""
    topo = _topo()
    before = read_topology(topo)
    try:
        yield topo
    except ApiError as exc:
        raise ApiError(f"{exc} {restore(before, topo)}", exc.status, exc.field) from None
    except BaseException:  # a bug, or Streamlit stopping the script for a rerun: put it back all the same
        restore(before, topo)
        raise
    notes.append(restore(before, topo))


# --- helpers shared by the experiments ---------------------------------------------------------------
def probe_users(n: int = PROBE_USERS) -> list[int]:
    """The first n users, as `manage.py stale_probe` picks them."""
    try:
        users = [u["id"] for u in requests.get(f"{api_root()}/users?limit={n}", timeout=10).json()["data"]["results"]]
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise ApiError(f"Could not list users at {api_root()}/users ({type(exc).__name__}). Start the workbench "
                       "with `python manage.py up`.") from None
    if len(users) < n:
        raise ApiError(f"The stack has {len(users)} users; the probe needs {n}. Seed it: `python manage.py seed`.")
    return users


def _follow(work, seconds: float, slot, text: str, tick=None):
    """Run work() in a thread while `slot` shows the time spent against `seconds` (and `tick()` is
    called about every quarter second meanwhile); its result."""
    box: dict = {}

    def run():
        try:
            box["result"] = work()
        except Exception as exc:  # noqa: BLE001 - said to the learner below, not lost in a thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        elapsed = time.monotonic() - started
        if slot is not None:
            slot.progress(min(1.0, elapsed / max(seconds, 0.1)), text=f"{text}: {elapsed:.1f} of about {seconds:g} s")
        if tick is not None:
            tick()
        thread.join(0.25)
    if slot is not None:
        slot.empty()
    if "error" in box:
        exc = box["error"]
        raise ApiError(f"{text} failed: {type(exc).__name__}: {exc}. Check the stack with `python manage.py status`.")
    return box["result"]


def stale_probe(users: list[int], duration_s: float, slot=None, label: str = "stale-read probe", tick=None) -> dict:
    """The stale-read probe for `duration_s` (workbench/loadgen/staleprobe.py): writers as the
    operator, readers as other, anonymous clients."""
    probe = Probe(api_root(), users, duration_s=duration_s, readers=PROBE_READERS,
                  headers=_cfg().operator_headers())
    return _follow(probe.run, duration_s, slot, label, tick)


def own_reads(user_id: int, pairs: int = OWN_PAIRS) -> dict:
    """The writer's own reads: `pairs` times, a profile update then at once a read of it, both as one
    client (`X-Client-Id`, what read-your-writes keys on). How many reads missed the write just
    acknowledged, and which node answered (X-DB-Node)."""
    client = f"tradeoffs-{uuid.uuid4().hex[:12]}"
    url = f"{api_root()}/users/{user_id}"
    nodes: collections.Counter = collections.Counter()
    versions = set()   # X-Topology-Version: which topology the app servers answered under
    stale = errors = 0
    with requests.Session() as http:
        http.headers.update({"X-Client-Id": client})
        for i in range(pairs):
            bio = f"own-read {client} {i}"
            try:
                wrote = http.patch(url, json={"bio": bio}, headers=_cfg().operator_headers(), timeout=10)
                read = http.get(url, timeout=10)
            except requests.RequestException:
                errors += 1
                continue
            if wrote.status_code != 200 or read.status_code != 200:
                errors += 1
                continue
            nodes[read.headers.get("X-DB-Node", "?")] += 1
            versions.update(r.headers.get("X-Topology-Version", "?") for r in (wrote, read))
            stale += read.json()["data"].get("bio") != bio
    return {"pairs": pairs, "stale": stale, "errors": errors, "nodes": dict(nodes), "versions": sorted(versions)}


def replica_lag(user_id: int, reads: int = 1) -> list[float]:
    """The replay lag (ms) that a replica answering anonymous reads reported (X-DB-Lag-Ms), now."""
    lags = []
    with requests.Session() as http:
        for _ in range(reads):
            try:
                r = http.get(f"{api_root()}/users/{user_id}", timeout=10)
                if r.headers.get("X-DB-Node", "primary") != "primary" and r.headers.get("X-DB-Lag-Ms"):
                    lags.append(float(r.headers["X-DB-Lag-Ms"]))
            except (requests.RequestException, ValueError):
                continue
    return lags


# --- 1. consistency vs availability --------------------------------------------------------------------
RYW_S = 5.0
CONSISTENCY_CASES = {   # label: what the case sets on top of the lagging replica
    "async, read-your-writes off": {"replication": "async", "read_your_writes_s": 0},
    "async, read-your-writes on": {"replication": "async", "read_your_writes_s": RYW_S},
    "sync remote_write": {"replication": "remote_write", "read_your_writes_s": 0},
    "sync remote_apply": {"replication": "remote_apply", "read_your_writes_s": 0},
}
WRITES = {"read_ratio": 0.0, "writes": {"create_post": 1}}   # bench_topology's replication suite's workload


def lagging_replica(delay_ms: float) -> dict:
    """One replica replaying `delay_ms` late (emulation.stale_replica), every read on it, no cache in
    front: the stale reads are the replica's alone."""
    return {"replicas": 1, "read_policy": "round_robin", "max_lag_ms": max(1000.0, delay_ms + 1000.0),
            "emulation": {"stale_replica": 1, "apply_delay_ms": float(delay_ms)},
            "cache": {"mode": "off", "l1": False, "query_cache": False}}


def consistency(cases: list[str], delay_ms: float, duration_s: float, rate: float, slot=None) -> dict:
    """Per case: the stale-read probe, the writer's own reads, then a measured run of writes (their
    latency is the price of synchronous replication). The topology is put back at the end."""
    users = probe_users()
    rows, notes = [], []
    with changed_topology(notes) as topo:
        if slot is not None:
            slot.info(f"Starting a replica that applies {delay_ms:g} ms late...")
        apply(lagging_replica(delay_ms), topo)
        for case in cases:
            if slot is not None:
                slot.info(f"{case}: applying the topology...")
            version = apply(CONSISTENCY_CASES[case], topo)
            lag: list[float] = []   # sampled while the probe writes: an idle replica has nothing to lag behind
            probe = stale_probe(users, duration_s, slot, f"{case}: stale-read probe",
                                tick=lambda: lag.extend(replica_lag(users[-1])))
            own = own_reads(users[0])
            run = measured.measure({"mode": "open", "rate": rate, "duration_s": duration_s, **WRITES},
                                   f"trade-offs: writes, {case}", slot)
            rows.append({"case": case, "set": CONSISTENCY_CASES[case], "version": version, "probe": probe, "own": own,
                         "lag_ms": lag, "run": run})
    return {"delay_ms": delay_ms, "duration_s": duration_s, "rate": rate, "rows": rows, "restored": notes[-1],
            "at": _now()}


# --- 2. cache invalidation: `manage.py stale_probe` and `manage.py write_behind_loss` -------------------
def invalidation_groups() -> list[str]:
    """The stale-probe command's cases, its TTL-only rows as one group (their TTLs chosen apart)."""
    from workbench.management.commands.stale_probe import cases
    groups = []
    for label, _ in cases([1]):
        group = label.split(", TTL 1 s")[0]
        if group not in groups:
            groups.append(group)
    return groups


def _env() -> dict:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the product's settings, as `python manage.py` runs them
    return env


def manage(args: list[str], seconds: float, slot, text: str, lines_expected: int = 0) -> str:
    """Run `python manage.py ARGS` for this stack (a child of the dashboard, bounded in time); its
    output. Progress: lines starting with two spaces, out of `lines_expected`, else the time."""
    command = [sys.executable, str(ROOT / "manage.py"), *args]
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    started, limit = time.monotonic(), seconds + COMMAND_GRACE_S
    while proc.poll() is None:
        elapsed = time.monotonic() - started
        if elapsed > limit:
            proc.kill()
            proc.wait()
            raise ApiError(f"`{' '.join(['python manage.py', *args])}` took over {limit:.0f} s and was stopped. "
                           "Check the stack with `python manage.py status`.")
        if slot is not None:
            done = sum(1 for line in out if line.startswith("  "))
            share = done / lines_expected if lines_expected else min(1.0, elapsed / max(seconds, 0.1))
            slot.progress(min(1.0, share), text=f"{text}: {elapsed:.0f} s" + (f", {done} of {lines_expected} cases done"
                                                                              if lines_expected else ""))
        time.sleep(0.3)
    reader.join(5)
    if slot is not None:
        slot.empty()
    if proc.returncode != 0:
        error = "".join(out).strip().splitlines()
        raise ApiError(f"`python manage.py {' '.join(args)}` failed: {error[-1] if error else 'no message'}. "
                       "Check the stack with `python manage.py status`.")
    return "".join(out)


def invalidation(groups: list[str], ttls: list[int], duration_s: float, slot=None) -> dict:
    """`manage.py stale_probe` for the chosen strategies (it applies each case's topology and puts the
    topology back itself; --no-write leaves docs/benchmarks.md alone), then its saved table as the
    admin cache API serves it. The topology is compared before and after."""
    before = read_topology()
    started = datetime.now(timezone.utc)
    from workbench.management.commands.stale_probe import cases
    expected = [label for label, _ in cases(ttls) if any(label.startswith(g) for g in groups)]
    manage(["stale_probe", "--no-write", "--duration", f"{duration_s:g}", "--users", str(PROBE_USERS),
            "--readers", str(PROBE_READERS), "--ttl", *[str(t) for t in ttls], "--only", *groups],
           len(expected) * (duration_s + 3), slot, "manage.py stale_probe", len(expected))
    table = latest_stale_table()
    if not table or datetime.fromisoformat(table["at"]) < started:
        raise ApiError("The stale-read probe ran, but the admin cache API does not show its table: check that the "
                       "dashboard and the stack share WORKBENCH_DATA_DIR.")
    left = differences(before, read_topology())
    restored = ("Topology restored by `manage.py stale_probe`: every setting is as it was before (checked)." if not left
                else f"After `manage.py stale_probe` these settings differ from before: {', '.join(left)}.")
    return {"table": table, "restored": restored}


def latest_stale_table() -> dict | None:
    """The newest table `manage.py stale_probe` saved, through GET /api/v1/admin/cache."""
    data = StackClient().cache()
    if "error" in data:
        raise ApiError(f"The admin cache API did not answer: {data['error']}. Check the stack with "
                       "`python manage.py status`.")
    return data.get("stale_probe")


def write_behind_loss(fsync: str, writes: int, slot=None) -> dict:
    """`manage.py write_behind_loss`: write-behind with the flusher paused, `writes` post creates,
    the state Valkey SIGKILLed, then the acknowledged posts counted in PostgreSQL. It puts the cache
    settings back itself."""
    before = read_topology()
    out = manage(["write_behind_loss", "--writes", str(writes), "--fsync", fsync, "--json"], 30 + writes / 20,
                 slot, f"manage.py write_behind_loss --fsync {fsync}")
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise ApiError(f"`manage.py write_behind_loss` printed no result: {out[-300:]!r}") from None
    left = differences(before, read_topology())
    result["restored"] = ("Topology restored by `manage.py write_behind_loss`: every setting is as it was before "
                          "(checked)." if not left else
                          f"After `manage.py write_behind_loss` these settings differ from before: {', '.join(left)} "
                          "(with fsync `off` the restarted state Valkey reloads an older topology; docs/reliability.md).")
    result.pop("acknowledged_ids", None)
    return result


# --- 3. latency vs cost (modelled) ------------------------------------------------------------------------
CURVE_UTILS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def design_from(answers: dict, cores: int) -> fleet.Design:
    """The capacity model's design from the Clarify answers (lessons/interview.py), sized for the
    peak rate, as the Capacity model page checks a budget against the peak fleet."""
    return fleet.Design(rps=float(answers["qps_peak"]), p95_ms=float(answers["p95_ms"]),
                        read_ratio=answers["read_percent"] / 100, spike=1.0, regions=int(answers["regions"]),
                        app_cores=cores, lb_cores=cores, db_cores=cores)


def cost_curve(design: fleet.Design) -> dict:
    """The model's p95 against the month's cost as the utilisation ceiling moves (cost.curve), with
    the per-request costs this stack's calibration measured, or the defaults."""
    try:
        cal = calibration.load(_cfg().data_dir, "calibration")
    except Exception:  # noqa: BLE001 - no data dir or an unreadable file: the defaults, said so
        cal = None
    c = costs.from_calibration(cal)
    return {"rows": cost.curve(design, c, utils=CURVE_UTILS), "costs": c.to_dict(), "calibrated": bool(cal)}


# --- 4. SQL vs NoSQL: the read model against the SQL path ---------------------------------------------------
PROFILES = {"read_ratio": 0.95, "popularity": "zipf", "zipf_s": 1.1, "reads": {"user_profile": 1}}  # bench readmodel
READ_MODEL_CASES = {"SQL path (read_model off)": False, "read model (read_model on)": True}
BUILD_TIMEOUT_S = 600


def _wait_built(slot) -> dict:
    """After switching `read_model` on: until the relay has rebuilt every document (admin API)."""
    started = time.monotonic()
    while time.monotonic() - started < BUILD_TIMEOUT_S:
        status = StackClient().readmodel()
        if "error" in status:
            raise ApiError(f"The admin read-model API did not answer: {status['error']}.")
        if status.get("built"):
            return status
        if slot is not None:
            relay = (status.get("relay") or {}).get("state", "not reporting")
            slot.info(f"The relay builds the documents: {status.get('documents', 0):,} so far ({relay}), "
                      f"{time.monotonic() - started:.0f} s")
        time.sleep(0.5)
    raise ApiError(f"The relay did not rebuild the read model within {BUILD_TIMEOUT_S} s; see the data dir's "
                   "logs/relay.log.")


def read_model(duration_s: float, connections: int, slot=None) -> dict:
    """Two closed-loop runs of profile reads (95/5, Zipf), application cache off: the SQL path, then
    the read model once the relay has built it; the documents' staleness from the admin API after the
    second. The topology is put back at the end."""
    rows, notes = [], []
    with changed_topology(notes) as topo:
        for label, on in READ_MODEL_CASES.items():
            apply({"read_model": on, "cache": {"mode": "off", "l1": False, "query_cache": False}}, topo)
            if on:
                _wait_built(slot)
            run = measured.measure({"mode": "closed", "connections": connections, "duration_s": duration_s,
                                    **PROFILES}, f"trade-offs: profiles, {label}", slot)
            status = StackClient().readmodel()
            rows.append({"case": label, "read_model": on, "run": run,
                         "readmodel": None if "error" in status or not on else status})
    return {"duration_s": duration_s, "connections": connections, "rows": rows, "restored": notes[-1], "at": _now()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
