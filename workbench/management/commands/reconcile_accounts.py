import time

from django.core.management.base import BaseCommand
from django.db import DatabaseError, close_old_connections

from api.services import accounts_reconcile


class Command(BaseCommand):
    help = "Finish or undo account protocols (sign-up, email change, delete) whose request died."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, default=5.0, help="seconds a pending sign-up may take")
        parser.add_argument("--loop", type=float, default=0, metavar="SECONDS",
                            help="run forever, one pass every SECONDS (the controller's `reconciler`)")

    def handle(self, *args, **options):
        while True:
            try:
                counts = accounts_reconcile(older_than_s=options["older_than"])
            except DatabaseError as exc:  # a database restarting: try again next pass
                counts = {"error": type(exc).__name__}
                if not options["loop"]:
                    raise
            if not options["loop"] or any(v for k, v in counts.items() if k != "busy"):
                self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.items()), ending="\n")
                self.stdout.flush()
            if not options["loop"]:
                return
            close_old_connections()
            time.sleep(options["loop"])
