"""The product's benchmark table: every case measured in one session, repetitions interleaved
(A B C A B C ...) so drift on a noisy machine hits every case alike; medians, then ratios to the
baseline through the same entry point. Writes the table into docs/benchmarks.md."""
import json
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from workbench.loadgen.client import RunClient, RunError
from workbench.loadgen.ramp import find_capacity
from workbench.loadgen.report import (BENCHMARKS_DOC, add_bench_arguments, median as _median, new_row,
                                      record_pair, write_doc_block)
from workbench.loadgen.runs import machine, versions
from workbench.stack import config



def cases(cfg) -> list[tuple[str, dict]]:
    reads = {"read_ratio": 1.0, "reads": {"user": 1}}
    return [
        ("baseline: bare JSON view, through Caddy", {"path": "/healthz"}),
        ("bare JSON view, direct to app-1", {"path": "/healthz", "target": cfg.direct_url(1)}),
        ("GET /users/{id}, uncached", reads),
        ("POST /users/{id}/posts", {"read_ratio": 0.0, "writes": {"create_post": 1}}),
    ]


class Command(BaseCommand):
    help = "Measure the benchmark table (through the stack controller) and write it to docs/benchmarks.md."
    requires_system_checks = []

    def add_arguments(self, parser):
        add_bench_arguments(parser, duration=5.0, rate=100.0, connections=8)
        parser.add_argument("--slo-ms", type=float, default=100.0, help="p95 target of the capacity ramp")
        parser.add_argument("--no-ramp", action="store_true")

    def handle(self, *args, **o):
        cfg = config.load()
        client = RunClient(cfg)
        table = {name: new_row() for name, _ in cases(cfg)}
        try:
            for rep in range(o["repeats"]):
                for name, extra in cases(cfg):
                    closed, opened = client.closed_and_open(extra, o, f"bench {name} #{rep + 1}")
                    record_pair(table[name], closed, opened)
                    self.stdout.write(f"  #{rep + 1} {name}: {closed['summary']['achieved_rps']} req/s closed; "
                                      f"open p95 {opened['summary']['latency']['p95_ms']} ms "
                                      f"({'valid' if opened['summary']['valid'] else 'INVALID'})")
            ramp = None
            if not o["no_ramp"]:
                ramp = find_capacity(client, {}, slo_p95_ms=o["slo_ms"], step_s=o["duration"], label="bench ramp",
                                     on_step=lambda s: self.stdout.write(f"  ramp {s}"))
        except RunError as exc:
            raise CommandError(str(exc)) from None
        text = render(cfg, table, ramp, o)
        self.stdout.write(text)
        if not o["no_write"]:
            write_doc_block("bench", text, "The bench table")
            self.stdout.write(f"written to {BENCHMARKS_DOC}")


def render(cfg, table, ramp, o) -> str:
    base = table[next(iter(table))]
    base_thr, base_p50 = _median(base["thr"]), _median(base["p50"])
    m = machine()
    lines = [
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python manage.py bench --repeats {o['repeats']} "
        f"--duration {o['duration']:g} --rate {o['rate']:g} --connections {o['connections']}` on "
        f"{m['cores']} cores / {m['memory_bytes'] / 2**30:.0f} GiB ({m['platform']}), generator and stack sharing "
        f"the machine. Topology: {cfg.app_servers} app servers x {cfg.app_workers} gthread workers x "
        f"{cfg.app_threads} threads behind Caddy round-robin; 1 PostgreSQL primary; no cache, no replicas.",
        "",
        f"Medians of {o['repeats']} interleaved repetitions. Throughput: closed loop, {o['connections']} connections. "
        f"Latency: open model at {o['rate']:g} req/s, timed from the intended send.",
        "",
        "| case | throughput (req/s) | vs baseline | p50 (ms) | p95 (ms) | p50 vs baseline | open runs valid |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        thr, p50, p95 = _median(row["thr"]), _median(row["p50"]), _median(row["p95"])
        lines.append(f"| {name} | {thr:,.0f} | {thr / base_thr:.2f}x | {p50:.2f} | {p95:.2f} | "
                     f"{p50 / base_p50:.2f}x | {sum(row['valid'])}/{len(row['valid'])} |")
    if ramp:
        lines += ["", f"Capacity C of the default read/write mix (90% reads) at p95 < {ramp['slo_p95_ms']:g} ms "
                      f"(open model, valid runs with no errors): **{ramp['capacity_rps']:,.0f} req/s** "
                      f"(first failing step: {ramp['first_failing_rps'] or 'none'} req/s).", "",
                  "| step rate | achieved | p95 (ms) | errors | valid | passed |", "|---|---|---|---|---|---|"]
        for s in ramp["steps"]:
            lines.append(f"| {s['rate']:,.0f} | {s['achieved_rps']:,.0f} | {s['p95_ms']} | {s['errors']} | "
                         f"{s['valid']} | {s['passed']} |")
    lines += ["", "Software: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
              "Run ids (in `.workbench/results/`): " + json.dumps({k: v["runs"] for k, v in table.items()})]
    return "\n".join(lines)
