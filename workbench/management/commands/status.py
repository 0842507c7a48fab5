import json

from django.core.management.base import BaseCommand

from workbench.stack import config, launcher


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class Command(BaseCommand):
    help = "Show each process of the stack: role, pid, port, health, uptime, RSS."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="machine-readable output")

    def handle(self, *args, **options):
        state = launcher.status(config.load())
        if options["json"]:
            self.stdout.write(json.dumps(state or {"running": False, "processes": []}, indent=2))
            return
        if not state:
            self.stdout.write("The workbench is not running. Start it with: python manage.py up")
            return
        self.stdout.write(f"phase: {state['phase']}   api: {state['api_url']}   dashboard: {state['dashboard_url']}")
        self.stdout.write(f"{'ROLE':<11}{'NAME':<14}{'PID':>8}{'PORT':>7}  {'HEALTH':<9}{'UPTIME':>9}{'RSS':>10}{'RESTARTS':>10}")
        for p in state["processes"]:
            health = "healthy" if p["healthy"] else "DOWN"
            self.stdout.write(f"{p['role']:<11}{p['name']:<14}{p['pid'] or '-':>8}{p['port'] or '-':>7}  {health:<9}"
                              f"{p['uptime_s']:>8.0f}s{_mib(p['rss_bytes']):>10}{p['restarts']:>10}")
        report = state.get("data_nodes")
        if report:
            self.stdout.write("")
            self.stdout.write(f"{'DATA NODE':<14}{'HEALTH':<9}{'STATE':<11}{'LAG MS':>9}{'LAG BYTES':>11}"
                              f"{'CONNS':>7}{'QUERIES':>10}")
            for name, node in sorted(report["nodes"].items(), key=lambda kv: (kv[0] != "primary", kv[0])):
                health = "-" if "healthy" not in node else "healthy" if node["healthy"] else "DOWN"
                lag_ms = "-" if node.get("lag_ms") is None else f"{node['lag_ms']:.1f}"
                lag_bytes = "-" if node.get("lag_bytes") is None else str(node["lag_bytes"])
                self.stdout.write(f"{name:<14}{health:<9}{node.get('state', '-'):<11}{lag_ms:>9}{lag_bytes:>11}"
                                  f"{node.get('connections', '-'):>7}{node.get('queries', 0):>10}")
            if report.get("progress"):
                self.stdout.write(f"controller: {report['progress']}")
