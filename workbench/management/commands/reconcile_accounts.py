from django.core.management.base import BaseCommand

from api.services import accounts_reconcile


class Command(BaseCommand):
    help = "Finish or undo account protocols (sign-up, email change, delete) whose request died."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=float, default=5.0, help="seconds a pending sign-up may take")

    def handle(self, *args, **options):
        counts = accounts_reconcile(older_than_s=options["older_than"])
        self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.items()))
