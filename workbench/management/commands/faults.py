"""Fault runs under load, with the books checked (workbench/loadgen/faults.py):

    python manage.py faults all                  every scenario; writes the table in docs/reliability.md
    python manage.py faults primary --replication remote_apply
                                                 one scenario; prints its row and the controller's timeline

Scenarios: replica, cache-node, app-server, primary (with --replication async | remote_write |
remote_apply), meta. Each changes the topology it needs and leaves it so; held processes are
started again at the end.
"""
from datetime import datetime, timezone

from django.core.management.base import BaseCommand, CommandError

from workbench.loadgen import faults
from workbench.loadgen.report import write_doc_block
from workbench.loadgen.runs import machine
from workbench.stack import config, launcher

RELIABILITY_DOC = config.PROJECT_DIR / "docs" / "reliability.md"
HEADER = ("| fault | load | failed requests | outage window (first to last failure) | recovered after | "
          "writes lost (of acknowledged) | availability | 99.99% budget burned | command |\n"
          "|---|---|---|---|---|---|---|---|---|")


class Command(BaseCommand):
    help = "Inject a real fault under load and report errors, the outage window, writes lost and availability."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("scenario", choices=[*faults.SCENARIOS, "all"])
        parser.add_argument("--replication", default="async", choices=["async", "remote_write", "remote_apply"])
        parser.add_argument("--rate", type=float, default=50)
        parser.add_argument("--duration", type=float, default=10)
        parser.add_argument("--fault-at", type=float, default=3)
        parser.add_argument("--no-write", action="store_true", help="print only; leave docs/reliability.md alone")

    def handle(self, *args, scenario, replication, rate, duration, fault_at, no_write, **options):
        cfg = config.load()
        if launcher.status(cfg) is None:
            raise CommandError("no stack is running here: start it with `python manage.py up`")
        plan = ([(name, "async") for name in faults.SCENARIOS] + [("primary", "remote_apply")]
                if scenario == "all" else [(scenario, replication)])
        rows = []
        for name, mode in plan:
            outcome = faults.run(cfg, faults.SCENARIOS[name], rate=rate, duration_s=duration, fault_at_s=fault_at,
                                 replication=mode)
            command = (f"python manage.py faults {name}" + (f" --replication {mode}" if name == "primary" else "")
                       + f" --rate {rate:g} --duration {duration:g} --fault-at {fault_at:g}")
            rows.append(faults.row(outcome, command))
            self.stdout.write(rows[-1])
            for line in faults.timeline(outcome):
                self.stdout.write("    " + line)
            if not outcome.valid:
                self.stdout.write("    (the generator ran late: this run is invalid as a latency measurement)")
        if scenario == "all" and not no_write:
            m = machine()
            text = (f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {m['cores']} cores, "
                    f"{m['memory_bytes'] / 2**30:.0f} GiB, loopback; default stack (2 app servers, Caddy, one shard) "
                    f"with each scenario's topology change; open-loop load, 80% reads (user, user_posts), "
                    f"20% post creations made by their owners.\n\n{HEADER}\n" + "\n".join(rows))
            write_doc_block("fault-runs", text, "Faults under load (measured)", RELIABILITY_DOC)
            self.stdout.write(f"wrote the table into {RELIABILITY_DOC}")
