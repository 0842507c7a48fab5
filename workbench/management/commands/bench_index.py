"""The index effect (query optimization, Phase 3): a user's posts page read with the supporting
index `api_post_user_time` on and off, in one session, repetitions interleaved (on off on off ...).

Each side is set through the admin topology API (`indexes.post_user_time`); the controller drops
or rebuilds the index concurrently, and the command waits until the API reports nothing pending
before measuring. Per side and repetition: the admin EXPLAIN of the posts page for a few fixed
users, a closed-loop run (throughput) and an open-model run (latency from the intended send).
The parameters are printed before the first run; the index is left on at the end.
Writes its section into docs/benchmarks.md between its own markers.
"""
import json
import time
from datetime import datetime, timezone

import requests
from django.core.management.base import BaseCommand, CommandError

from workbench.loadgen.client import RunClient, RunError, TopologyClient, TopologyError
from workbench.loadgen.report import (BENCHMARKS_DOC, add_bench_arguments, emulation_note, median as _median,
                                      record_pair, write_doc_block)
from workbench.loadgen.runs import machine, versions
from workbench.stack import config


SECTION = "Query optimization: the supporting index"
WORKLOAD = {"read_ratio": 1.0, "reads": {"user_posts": 1}}  # GET /api/v1/users/{id}/posts?limit=20
SIDES = (("index on", True), ("index off", False))


class Admin(TopologyClient):
    """The admin API with the controller's token: the index toggle (through the topology) and EXPLAIN."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.api_url = cfg.api_url

    def set_index(self, on: bool, timeout: float) -> float:
        """Ask for the index on or off and wait until the controller has done it; returns seconds."""
        started = time.monotonic()
        try:
            self.apply({"indexes": {"post_user_time": on}}, timeout=timeout)
        except TopologyError as exc:
            raise CommandError(str(exc)) from None
        return time.monotonic() - started

    def explain(self, user_id: int) -> dict:
        response = requests.get(self.api_url + "/api/v1/admin/explain", params={"user_id": user_id},
                                headers=self.headers, timeout=120)
        if response.status_code != 200:
            raise CommandError(f"explain: {response.status_code} {response.text[:300]}")
        return {q["query"]: q for q in response.json()["data"]["queries"]}

    def first_users(self, count: int) -> list[int]:
        response = requests.get(self.api_url + "/api/v1/users", params={"limit": count}, timeout=30)
        response.raise_for_status()
        return [int(u["id"]) for u in response.json()["data"]["results"]]


class Command(BaseCommand):
    help = "Measure the posts page with the supporting index on and off (interleaved) and record it in docs/benchmarks.md."
    requires_system_checks = []

    def add_arguments(self, parser):
        add_bench_arguments(parser, duration=6.0, rate=5.0, connections=4)
        parser.add_argument("--explain-users", type=int, default=3, help="EXPLAIN the first N users by id")
        parser.add_argument("--settle-timeout", type=float, default=300.0, help="seconds to wait for the controller")

    def handle(self, *args, **o):
        cfg = config.load()
        client, admin = RunClient(cfg), Admin(cfg)
        self.stdout.write(f"parameters (fixed before measuring): repeats {o['repeats']}, {o['duration']:g} s per run, "
                          f"open model {o['rate']:g} req/s, closed loop {o['connections']} connections, "
                          f"EXPLAIN of the first {o['explain_users']} users; workload {json.dumps(WORKLOAD)}; "
                          f"order {' / '.join(name for name, _ in SIDES)} per repetition")
        users = admin.first_users(o["explain_users"])
        table = {name: {k: [] for k in ("thr", "p50", "p95", "valid", "errors", "explain_page", "explain_range",
                                        "plan", "settle_s", "runs")} for name, _ in SIDES}
        topology = None
        try:
            for rep in range(o["repeats"]):
                for name, on in SIDES:
                    row = table[name]
                    row["settle_s"].append(admin.set_index(on, o["settle_timeout"]))
                    for user_id in users:
                        plans = admin.explain(user_id)
                        row["explain_page"].append(plans["posts_page"]["execution_ms"])
                        row["explain_range"].append(plans["posts_time_range"]["execution_ms"])
                        row["plan"].append(" > ".join(plans["posts_page"]["plan_nodes"]))
                    closed, opened = client.closed_and_open(WORKLOAD, o, f"bench_index {name} #{rep + 1}")
                    topology = topology or opened["topology"]
                    s = opened["summary"]
                    record_pair(row, closed, opened)
                    row["errors"].append(closed["summary"]["error_count"] + s["error_count"])
                    self.stdout.write(
                        f"  #{rep + 1} {name}: applied in {row['settle_s'][-1]:.1f} s; EXPLAIN posts page "
                        f"{row['explain_page'][-1]} ms ({row['plan'][-1]}); {closed['summary']['achieved_rps']} "
                        f"req/s closed; open p50 {s['latency']['p50_ms']} ms p95 {s['latency']['p95_ms']} ms "
                        f"({'valid' if s['valid'] else 'INVALID'}); errors {row['errors'][-1]}")
        except RunError as exc:
            raise CommandError(str(exc)) from None
        finally:
            admin.set_index(True, o["settle_timeout"])  # leave the stack as the topology's default
        text = render(cfg, table, topology, o)
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block("bench-index", text, SECTION)
            self.stdout.write(f"written to {BENCHMARKS_DOC}")


def render(cfg, table, topology, o) -> str:
    m = machine()
    on, off = (table[name] for name, _ in SIDES)
    cmd = (f"python manage.py bench_index --repeats {o['repeats']} --duration {o['duration']:g} --rate {o['rate']:g} "
           f"--connections {o['connections']} --explain-users {o['explain_users']}")
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{cmd}` on {m['cores']} cores / "
        f"{m['memory_bytes'] / 2**30:.0f} GiB ({m['platform']}), everything on loopback, generator and stack "
        f"sharing the machine. Topology version {topology.get('version')}: {topology.get('replicas')} replicas, "
        f"pool {'on' if topology.get('pool') else 'off'}, {emulation_note(topology)}; {cfg.app_servers} app servers x "
        f"{cfg.app_workers} gthread workers x {cfg.app_threads} threads behind Caddy; 1 PostgreSQL primary.",
        "",
        f"Workload: `{json.dumps(WORKLOAD)}`, i.e. `GET /api/v1/users/{{id}}/posts?limit=20` for uniformly drawn "
        f"users (two queries each: the user's existence, then the page). {o['repeats']} repetitions, sides "
        f"interleaved (on, off, on, off, ...); medians. Throughput: closed loop, {o['connections']} connections, "
        f"{o['duration']:g} s. Latency: open model at {o['rate']:g} req/s for {o['duration']:g} s, timed from the "
        f"intended send. EXPLAIN: `GET /api/v1/admin/explain` for the first {o['explain_users']} users by id, "
        f"once per side and repetition. Each side starts once the controller has applied the toggle. "
        f"A repetition with an INVALID run (the generator set the pace) adds no figure to the medians.",
        "",
        "| side | throughput (req/s) | p50 (ms) | p95 (ms) | EXPLAIN posts page (ms) | EXPLAIN time range (ms) "
        "| posts page plan | toggle applied in (s) | repetitions valid | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        plans = sorted(set(row["plan"]))
        lines.append(f"| {name} | {_median(row['thr']):,.1f} | {_median(row['p50']):.2f} | {_median(row['p95']):.2f} | "
                     f"{_median(row['explain_page']):.3f} | {_median(row['explain_range']):.3f} | "
                     f"{'; '.join(plans)} | {_median(row['settle_s']):.1f} | "
                     f"{sum(row['valid'])}/{len(row['valid'])} | {sum(row['errors'])} |")
    lines += ["", f"Index on vs off: throughput {_median(on['thr']) / _median(off['thr']):.1f}x, p50 "
                  f"{_median(off['p50']) / _median(on['p50']):.1f}x lower, p95 {_median(off['p95']) / _median(on['p95']):.1f}x "
                  f"lower, EXPLAIN execution {_median(off['explain_page']) / _median(on['explain_page']):.0f}x lower.",
              "", "Per repetition (on / off): throughput " + _pairs(on["thr"], off["thr"]) + "; p95 ms "
              + _pairs(on["p95"], off["p95"]) + "; EXPLAIN posts page ms (each user, each repetition) " + _pairs(on["explain_page"], off["explain_page"]),
              "", "Software: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              "Run ids (in the data directory's `results/`): " + json.dumps({k: v["runs"] for k, v in table.items()})]
    return "\n".join(lines)


def _pairs(a: list, b: list) -> str:
    return ", ".join(" / ".join("invalid" if v is None else str(v) for v in pair) for pair in zip(a, b))

