"""Show or change the live topology (workbench/topology.py): the same store the admin API writes."""
import getpass
import json
import time

import redis
from django.core.management.base import BaseCommand, CommandError

from workbench import topology


def parse_assignments(pairs: list[str]) -> dict:
    """`a=1 emulation.rtt_ms=2` -> {"a": 1, "emulation": {"rtt_ms": 2}}. A value is JSON where it
    parses (numbers, true/false, objects) and a plain string otherwise (`read_policy=random`)."""
    patch: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CommandError(f"{pair!r}: write key=value, with dotted keys for nested fields")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = patch
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise CommandError(f"{key}: {name} is set to a value and has fields set too")
        node[leaf] = value
    return patch


def _flat(data: dict, prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class Command(BaseCommand):
    help = "Show or change the live topology. `set` merges dotted key=value pairs; `reset` restores the defaults."
    requires_system_checks = []

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        show = actions.add_parser("show", help="print the topology, its version and pending changes")
        show.add_argument("--json", action="store_true", help="machine-readable output")
        change = actions.add_parser("set", help="merge key=value pairs into the topology")
        change.add_argument("pairs", nargs="+", metavar="key=value")
        reset = actions.add_parser("reset", help="replace the topology by the defaults (a new version)")
        for parser_ in (change, reset):
            parser_.add_argument("--wait", action="store_true",
                                 help="wait until the controller runs what the topology asks for")

    def handle(self, *args, **options):
        who = f"cli ({getpass.getuser()})"
        store = topology.store()
        try:
            if options["action"] == "show":
                doc = store.read()
                if options["json"]:
                    self.stdout.write(json.dumps(doc.to_dict(topology.report()), indent=2))
                    return
            elif options["action"] == "set":
                doc = store.patch(parse_assignments(options["pairs"]), who)
            else:
                doc = store.replace({}, who)
        except topology.TopologyError as exc:
            lines = "\n".join(f"  {name}: {message}" for name, message in exc.errors)
            raise CommandError(f"invalid topology; nothing was changed:\n{lines}") from None
        except (topology.Conflict, redis.RedisError) as exc:
            raise CommandError(f"the topology could not be changed: {exc}") from None
        if options.get("wait"):
            self._wait(doc)
        self._print(doc)

    def _wait(self, doc: topology.Document, timeout: float = 300) -> None:
        """Poll the controller's report until nothing it carries out is pending."""
        deadline = time.monotonic() + timeout
        said = None
        while True:
            shown = doc.to_dict(topology.report())
            waiting = topology.still_applying(shown["pending"])
            if not waiting:
                return
            if shown["progress"] != said and shown["progress"]:
                said = shown["progress"]
                self.stdout.write(f"  controller: {said}")
            if time.monotonic() > deadline:
                raise CommandError(f"the controller has not applied version {doc.version} after {timeout:.0f}s: "
                                   f"{', '.join(p['field'] for p in waiting)} still pending")
            time.sleep(0.2)

    def _print(self, doc: topology.Document) -> None:
        self.stdout.write(f"version {doc.version}   updated {doc.updated_at or '-'} by {doc.updated_by or '-'}")
        rows = list(_flat(doc.topology.to_dict()))
        width = max(len(key) for key, _ in rows) + 2  # the longest field name still leaves a gap
        for key, value in rows:
            self.stdout.write(f"  {key:<{width}}{json.dumps(value)}")
        shown = doc.to_dict(topology.report())
        for change in shown["pending"]:
            self.stdout.write(f"  pending for the controller: {change['field']} {json.dumps(change['running'])} -> "
                              f"{json.dumps(change['wanted'])}")
        if shown["progress"]:
            self.stdout.write(f"  controller: {shown['progress']}")
