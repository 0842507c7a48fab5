"""`restore`: bring back every database from a backup plus the archived WAL, to the backup's point,
another named point, a time, or the end of the archive; as a drill beside the running stack
(checked, then thrown away) or in place on a stopped stack (workbench/stack/backup.py)."""
import time

from django.core.management.base import BaseCommand, CommandError

from workbench.stack import backup, config


class Command(BaseCommand):
    help = "Restore the backup (point-in-time) as a drill beside the stack, or in place on a stopped stack."
    requires_system_checks = []

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--to-point", metavar="NAME", help="a restore point from `backup --list` (default: the newest)")
        target.add_argument("--to-time", metavar="TIME", help="an ISO 8601 time with its zone, e.g. 2026-11-28T12:30:05+00:00")
        target.add_argument("--to-end", action="store_true", help="everything archived (what survives a lost disk)")
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--drill", action="store_true", help="restore beside the stack, compare, discard (default)")
        mode.add_argument("--in-place", action="store_true", help="replace the stopped stack's databases")
        mode.add_argument("--discard", action="store_true", help="stop and delete a drill left by --keep-running")
        parser.add_argument("--keep-running", action="store_true", help="leave the drill's databases running")

    def handle(self, *args, to_point, to_time, to_end, drill, in_place, discard, keep_running, **options):
        cfg = config.load()
        if discard:
            if any((to_point, to_time, to_end, keep_running)):
                raise CommandError("--discard takes no other option")
            found = backup.discard_drill(cfg)
            return self.stdout.write("drill discarded" if found else "no drill to discard")
        if keep_running and in_place:
            raise CommandError("--keep-running is for a drill; an in-place restore is started by `up`")
        started = time.monotonic()
        try:
            moment = backup.parse_time(to_time) if to_time is not None else None
            result = backup.restore(cfg, point=to_point, moment=moment, to_end=to_end, in_place=in_place,
                                    out=self.stdout.write)
        except backup.BackupError as exc:
            raise CommandError(str(exc)) from None
        elapsed = time.monotonic() - started
        where = "in place" if in_place else "as a drill"
        self.stdout.write(f"restored {', '.join(result.urls)} from backup {result.manifest['id']} to "
                          f"{_target(result.target)} {where} in {elapsed:.1f}s")
        for note in result.notes:
            self.stdout.write(f"  note: {note}")
        for lineage, tables in result.tables.items():
            self.stdout.write(f"  {lineage}: " + ", ".join(f"{t.split('.')[-1]} {v['rows']:,}" for t, v in tables.items()
                                                        if v["rows"]))
        if "point" in result.target:
            if result.mismatches:
                if not in_place and not keep_running:
                    backup.discard_drill(cfg)
                raise CommandError("the restored data differs from the backup's point:\n  " +
                                   "\n  ".join(result.mismatches))
            tables = sum(len(t) for t in result.tables.values())
            self.stdout.write(f"  every table ({tables}) matches the row count and checksum taken at the point")
        if in_place:
            placement = result.manifest.get("placement")
            if placement:
                self.stdout.write(f"  the backup was taken with shards={placement['shards']} sharding="
                                  f"{placement['sharding']}: the stack must run that placement (the topology lives "
                                  "in the state Valkey, which a restore does not touch)")
            self.stdout.write("start the stack with `python manage.py up`: it copies new replicas from the restored "
                              "primaries")
        elif keep_running:
            for lineage, url in result.urls.items():
                self.stdout.write(f"  {lineage}: {url}")
            self.stdout.write("discard it with `python manage.py restore --discard`")
        else:
            backup.discard_drill(cfg)
            self.stdout.write("drill discarded")


def _target(target: dict) -> str:
    if "point" in target:
        return f"point {target['point']}"
    if "time" in target:
        return f"time {target['time']}"
    return "the end of the archive"
