"""Ask the stack controller for a measured run, show live progress, then a summary table."""
import json
import sys

from django.core.management.base import BaseCommand, CommandError

from workbench.loadgen.client import RunClient, RunError
from workbench.loadgen.report import compare_table, summary_table
from workbench.stack import config


class Command(BaseCommand):
    help = "Run a load test through the stack controller (open model by default)."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--rate", type=float, default=200, help="requests/s (open mode)")
        parser.add_argument("--duration", type=float, default=10, help="seconds")
        parser.add_argument("--mode", choices=["open", "closed"], default="open")
        parser.add_argument("--connections", type=int, default=16, help="closed mode: concurrent loops")
        parser.add_argument("--read-ratio", type=float, default=0.9)
        parser.add_argument("--zipf", type=float, default=None, metavar="S", help="Zipf popularity exponent")
        parser.add_argument("--hot-keys", type=int, default=0, metavar="N",
                            help="draw from only N keys (a hot set); 0: every seeded key")
        parser.add_argument("--spike", default=None, metavar="AT:FOR:FACTOR", help="e.g. 5:5:10")
        parser.add_argument("--source-ips", type=int, default=1)
        parser.add_argument("--processes", type=int, default=0)
        parser.add_argument("--path", default=None, help="a fixed GET path instead of the mix")
        parser.add_argument("--label", default="")
        parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
        parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="ratios of two saved runs")

    def handle(self, *args, **o):
        client = RunClient(config.load())
        try:
            if o["compare"]:
                a, b = (client.get(run_id) for run_id in o["compare"])
                self.stdout.write(compare_table(a, b))
                return
            workload = {"rate": o["rate"], "duration_s": o["duration"], "mode": o["mode"],
                        "connections": o["connections"], "read_ratio": o["read_ratio"],
                        "source_ips": o["source_ips"], "processes": o["processes"], "path": o["path"],
                        "hot_keys": o["hot_keys"]}
            if o["zipf"] is not None:
                workload.update(popularity="zipf", zipf_s=o["zipf"])
            if o["spike"]:
                try:
                    at, length, factor = (float(x) for x in o["spike"].split(":"))
                except ValueError:
                    raise CommandError("--spike takes AT:FOR:FACTOR, e.g. 5:5:10") from None
                workload["spike"] = {"at_s": at, "for_s": length, "factor": factor}
            run_id = client.start(workload, o["label"])
            self.stderr.write(f"run {run_id} started")
            result = client.wait(run_id, on_progress=self._progress)
            sys.stderr.write("\n")
        except RunError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(json.dumps(result, indent=1) if o["json"] else summary_table(result))

    def _progress(self, p):
        sys.stderr.write(f"\r  {p['elapsed_s']:5.1f}/{p['duration_s']:g}s  ok {p['ok']:>8,}  errors {p['errors']:>6,}")
        sys.stderr.flush()
