"""`backup`: a base backup of every shard primary and of `meta`, with one restore point across all
of them, on top of the continuous WAL archive (workbench/stack/backup.py, archive.py)."""
import json

from django.core.management.base import BaseCommand, CommandError

from workbench.stack import backup, config


class Command(BaseCommand):
    help = "Back up every PostgreSQL primary at one consistent, named point; --list shows the backups."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--keep", type=int, help="backups to keep (default: [backup] keep in parameters.toml)")
        parser.add_argument("--list", action="store_true", help="list the backups and their restore points")
        parser.add_argument("--json", action="store_true", help="print the manifest (or the list) as JSON")

    def handle(self, *args, keep, json: bool, **options):
        cfg = config.load()
        if options["list"]:
            return self._list(cfg, json)
        if keep is not None and keep < 1:
            raise CommandError(f"--keep {keep}: keep at least 1 backup")
        out = (lambda *_: None) if json else self.stdout.write
        try:
            manifest = backup.take(cfg, out=out, keep=keep)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        if json:
            self.stdout.write(_json(manifest))

    def _list(self, cfg, as_json: bool):
        found = backup.manifests(cfg)
        if as_json:
            return self.stdout.write(_json(found))
        if not found:
            return self.stdout.write("no backups yet: `python manage.py backup` takes one")
        for m in found:
            rows = sum(t["rows"] for n in m["nodes"].values() for t in n["tables"].values())
            self.stdout.write(f"{m['point']}  at {m['point_time']}  nodes: {', '.join(m['nodes'])}  rows: {rows:,}  "
                              f"writes paused {m['write_pause_ms']} ms")


def _json(value) -> str:
    return json.dumps(value, indent=2)
