"""Inject a fault into the running stack: `python manage.py chaos kill|stop|start|slow|failover ...`.

    chaos kill replica-1        SIGKILL; supervision restarts it
    chaos stop primary          SIGKILL and hold it down until `chaos start primary`
    chaos start primary         release the hold
    chaos slow replica-2 200    every query on that database node waits 200 ms more (0: off)
    chaos failover [--shard K]  fence the shard's primary and promote its most advanced replica
    chaos status                what is held down or slowed, and the timeline's chaos events
"""
import json

import requests
from django.core.management.base import BaseCommand, CommandError

from workbench.stack import config, launcher


class Command(BaseCommand):
    help = "Kill, stop, start or slow a process or database node, or fail a shard's primary over."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["kill", "stop", "start", "slow", "failover", "status"])
        parser.add_argument("role", nargs="?", help="app-2, caddy, valkey-cache, valkey-cache-3, primary, "
                                                    "replica-1, shard-2, shard-2-replica-1, meta, ...")
        parser.add_argument("ms", nargs="?", type=float, help="slow: milliseconds added per query (0: off)")
        parser.add_argument("--shard", type=int, default=None, help="failover: the shard (default 1)")

    def handle(self, *args, action, role, ms, shard, **options):
        cfg = config.load()
        if launcher.status(cfg) is None:
            raise CommandError("no stack is running here: start it with `python manage.py up`")
        if action == "status":
            state = launcher.status(cfg)["chaos"]
            events = [e for e in launcher._get(cfg, "/events")["events"]
                      if e["event"].startswith(("chaos_", "failover", "primary_", "replica_promoted", "died",
                                                "restarted"))]
            self.stdout.write(json.dumps({"chaos": state, "timeline": events[-20:]}, indent=1))
            return
        if action == "slow" and ms is None:
            raise CommandError("slow needs the milliseconds: chaos slow replica-1 200")
        if action != "failover" and not role:
            raise CommandError(f"{action} needs a role, e.g. chaos {action} replica-1")
        try:
            code, answer = launcher.chaos(cfg, action, role, ms=ms, shard=shard)
        except requests.RequestException as exc:
            raise CommandError(f"the controller did not answer: {exc}")
        if code != 200:
            raise CommandError(f"{answer.get('field', '')}: {answer.get('error')}")
        self.stdout.write(json.dumps(answer, indent=1))
