import json

from django.core.management.base import BaseCommand

from workbench.stack import config, launcher


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def _cpu(value) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _count(value) -> str:
    return "-" if value is None else f"{value:,}"


class Command(BaseCommand):
    help = ("Show each process of the stack: role, pid, port, health, uptime, CPU (100% = one core, since the "
            "previous status call, children included) and RSS; then the app servers as the load balancer sees "
            "them, and the data nodes.")
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
        self.stdout.write(f"{'ROLE':<11}{'NAME':<20}{'PID':>8}{'PORT':>7}  {'HEALTH':<9}{'UPTIME':>9}{'CPU':>8}"
                          f"{'RSS':>10}{'RESTARTS':>10}")
        for p in state["processes"]:
            health = "healthy" if p["healthy"] else "DOWN"
            self.stdout.write(f"{p['role']:<11}{p['name']:<20}{p['pid'] or '-':>8}{p['port'] or '-':>7}  {health:<9}"
                              f"{p['uptime_s']:>8.0f}s{_cpu(p.get('cpu_percent')):>8}{_mib(p['rss_bytes']):>10}"
                              f"{p['restarts']:>10}")
        self._app_servers(state)
        report = state.get("data_nodes")
        if report:
            self._data_nodes(report)

    def _app_servers(self, state: dict) -> None:
        """What Caddy sees of each app server: requests in flight now and failures (its upstream
        stats), health (its own check), and what each server answered since the start."""
        upstreams = state.get("upstreams") or []
        if not upstreams:
            return
        running = (state.get("data_nodes") or {}).get("running") or {}
        self.stdout.write("")
        self.stdout.write(f"load balancer: {running.get('lb_policy') or '-'}   https: {state.get('https_url') or '-'}")
        self.stdout.write(f"{'APP SERVER':<20}{'IN ROTATION':<13}{'IN FLIGHT':>10}{'FAILS':>7}{'ANSWERED':>11}")
        served = state.get("served") or {}
        for row in upstreams:
            rotation = {True: "yes", False: "no"}.get(row.get("healthy"), "-")
            self.stdout.write(f"{row['app_server']:<20}{rotation:<13}{row['in_flight']:>10}{row['fails']:>7}"
                              f"{served.get(row['app_server'], 0):>11,}")

    def _data_nodes(self, report: dict) -> None:
        """The nodes of each shard together, primary first; with more than one shard, a line per
        shard with its users and posts (the primary's live-row estimates)."""
        groups: dict = {}
        for name, node in report["nodes"].items():
            groups.setdefault(node.get("shard"), []).append((name, node))
        sharded = len([shard for shard in groups if shard is not None]) > 1
        self.stdout.write("")
        self.stdout.write(f"{'DATA NODE':<20}{'HEALTH':<9}{'STATE':<11}{'LAG MS':>9}{'LAG BYTES':>11}"
                          f"{'CONNS':>7}{'QUERIES':>10}")
        for shard in sorted(groups, key=lambda s: (s is None, s or 0)):  # meta and PgBouncer last
            members = sorted(groups[shard], key=lambda kv: (kv[1].get("state") != "primary", kv[0]))
            if sharded and shard is not None:
                primary = next((node for _, node in members if node.get("state") == "primary"), {})
                self.stdout.write(f"shard {shard}: users {_count(primary.get('users'))}, "
                                  f"posts {_count(primary.get('posts'))}")
            for name, node in members:
                health = "-" if "healthy" not in node else "healthy" if node["healthy"] else "DOWN"
                lag_ms = "-" if node.get("lag_ms") is None else f"{node['lag_ms']:.1f}"
                lag_bytes = "-" if node.get("lag_bytes") is None else str(node["lag_bytes"])
                self.stdout.write(f"{name:<20}{health:<9}{node.get('state', '-'):<11}{lag_ms:>9}{lag_bytes:>11}"
                                  f"{node.get('connections', '-'):>7}{node.get('queries', 0):>10}")
        if report.get("progress"):
            self.stdout.write(f"controller: {report['progress']}")
