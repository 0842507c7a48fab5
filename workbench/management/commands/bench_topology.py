"""Benchmarks of topology toggles: each suite measures several topologies in one session, the
repetitions interleaved (A B C A B C ...) so drift on a noisy machine hits each alike, and writes
its table (medians; ratios to the suite's first row) into docs/benchmarks.md.

  replicas     read throughput and p95 with 0, 1 and 2 replicas, emulation off and on (RTT sweep)
  replication  the write cost of async vs remote_write vs remote_apply (1 replica)
  pooling      a new connection per request vs pooled connections vs PgBouncer
"""
import json
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from workbench import parameters
from workbench.loadgen.client import RunClient, RunError, TopologyClient, TopologyError
from workbench.loadgen.report import (BENCHMARKS_DOC, add_bench_arguments, median as _median, new_row,
                                      record_pair, write_doc_block)
from workbench.loadgen.runs import machine, versions
from workbench.stack import config

READS = {"read_ratio": 1.0}  # the default read mix: a user, a user's posts, a time range, a post
POINT_READS = {"read_ratio": 1.0, "reads": {"user": 1}}
WRITES = {"read_ratio": 0.0, "writes": {"create_post": 1}}


def _emulated(rtt: float | None) -> dict:
    if rtt is None:
        return {"enabled": False}
    return {"enabled": True, "rtt_ms": rtt, "node_concurrency": parameters.emulation()["node_concurrency"]}


def suites() -> dict:
    """name -> (heading, what the table shows, workload, [(case label, topology)])."""
    sweep = parameters.emulation()["rtt_sweep_ms"]
    replica_cases = []
    for replicas in (0, 1, 2):
        for rtt in (None, *sweep):
            label = f"replicas={replicas}, " + ("emulation off" if rtt is None else f"emulation on, RTT {rtt:g} ms")
            replica_cases.append((label, {"replicas": replicas, "emulation": _emulated(rtt)}))
    return {
        "replicas": ("Read replicas, with and without emulation",
                     "the default read mix (users, a user's posts, time ranges, single posts), reads only",
                     READS, replica_cases),
        "replication": ("Replication mode: the write cost",
                        "POST /users/{id}/posts only, with 1 replica",
                        WRITES, [(f"replication={mode}", {"replicas": 1, "replication": mode})
                                 for mode in ("async", "remote_write", "remote_apply")]),
        "pooling": ("Connection pooling",
                    "GET /users/{id} only, 0 replicas",
                    POINT_READS, [("pooled (psycopg pool per node and worker)", {"pool": True}),
                                  ("a new connection per request", {"pool": False}),
                                  ("PgBouncer (session mode), a new client connection per request",
                                   {"pool": False, "pgbouncer": True})]),
    }


class Command(BaseCommand):
    help = "Measure a suite of topology toggles (replicas, replication, pooling) and write it to docs/benchmarks.md."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("suite", choices=sorted(suites()))
        add_bench_arguments(parser, duration=5.0, rate=100.0, connections=8)

    def handle(self, *args, **o):
        cfg = config.load()
        runs, topo = RunClient(cfg), TopologyClient(cfg)
        heading, what, workload, cases = suites()[o["suite"]]
        self.stdout.write(f"suite {o['suite']}: {len(cases)} cases x {o['repeats']} repetitions; closed "
                          f"{o['connections']} connections and open {o['rate']:g} req/s, {o['duration']:g} s each")
        table = {label: new_row() for label, _ in cases}
        try:
            before = topo.data()["topology"]
            try:
                for rep in range(o["repeats"]):
                    for label, change in cases:
                        # Each case is the suite's own topology on top of the defaults: nothing else carries over.
                        topo.apply(change, replace=True)
                        closed, opened = runs.closed_and_open(workload, o, f"bench {o['suite']} {label} #{rep + 1}")
                        row = table[label]
                        record_pair(row, closed, opened)
                        self.stdout.write(f"  #{rep + 1} {label}: {closed['summary']['achieved_rps']} req/s closed; "
                                          f"open p50 {opened['summary']['latency']['p50_ms']} ms, p95 "
                                          f"{opened['summary']['latency']['p95_ms']} ms "
                                          f"({'valid' if row['valid'][-1] else 'INVALID'})")
            finally:
                topo.apply(before, replace=True)
        except (RunError, TopologyError) as exc:
            raise CommandError(str(exc)) from None
        text = render(cfg, o, heading, what, table)
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block(f"bench-{o['suite']}", text, heading)
            self.stdout.write(f"written to {BENCHMARKS_DOC}")


def render(cfg, o, heading, what, table) -> str:
    base = table[next(iter(table))]
    base_thr, base_p50 = _median(base["thr"]), _median(base["p50"])
    m = machine()
    emu = parameters.emulation()
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python manage.py bench_topology {o['suite']} "
        f"--repeats {o['repeats']} --duration {o['duration']:g} --rate {o['rate']:g} --connections "
        f"{o['connections']}` on {m['cores']} cores / {m['memory_bytes'] / 2**30:.0f} GiB ({m['platform']}); the "
        f"generator, {cfg.app_servers} app servers x {cfg.app_workers} gthread workers x {cfg.app_threads} threads, "
        f"Caddy round-robin, and every PostgreSQL node share the machine. Workload: {what}. No cache.",
        "",
        f"Medians of {o['repeats']} interleaved repetitions. Throughput: closed loop, {o['connections']} "
        f"connections. Latency: open model at {o['rate']:g} req/s, timed from the intended send. Emulation, where "
        f"on, injects the round trip before every data-node query and lets each node run "
        f"{emu['node_concurrency']} queries at once (parameters and sources: workbench/parameters.toml). Per-node "
        "figures are shared-CPU figures: every node runs on the same 2 cores.",
        "",
        "| case | throughput (req/s) | vs first row | p50 (ms) | p95 (ms) | p50 vs first row | runs valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in table.items():
        thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
        ratio = f"{thr / base_thr:.2f}x" if thr and base_thr else "-"
        p50_ratio = f"{p50 / base_p50:.2f}x" if p50 and base_p50 else "-"
        lines.append(f"| {label} | {thr or 0:,.0f} | {ratio} | {p50 or 0:.2f} | {p95 or 0:.2f} | {p50_ratio} | "
                     f"{sum(row['valid'])}/{len(row['valid'])} |")
    lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              "Run ids (in the data dir's `results/`): " + json.dumps({k: v["runs"] for k, v in table.items()})]
    return "\n".join(lines)
