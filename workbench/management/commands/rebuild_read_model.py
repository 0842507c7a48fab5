"""Rebuild every profile document of the read model from PostgreSQL (api/readmodel.py).

Every shard, a batch of users at a time, in one snapshot per batch; each document is written under
the same version guard as the relay's, so running it while the API serves and the relay runs never
puts an older document over a newer one. Idempotent: run it as often as you like. Documents of
users that no longer exist are dropped at the end.
"""
import time

from django.core.management.base import BaseCommand

from api import readmodel


class Command(BaseCommand):
    help = "Rebuild every read-model profile document (user + latest posts) from PostgreSQL, all shards."

    def add_arguments(self, parser):
        parser.add_argument("--batch", type=int, default=500, help="users per batch (default 500)")

    def handle(self, *args, **options):
        started = time.monotonic()

        def progress(shard, done):
            self.stdout.write(f"shard {shard}: {done:,} documents written so far "
                              f"({time.monotonic() - started:.1f} s)")

        count = readmodel.rebuild_all(batch=max(1, options["batch"]), progress=progress)
        self.stdout.write(f"rebuilt {count:,} documents in {time.monotonic() - started:.1f} s")
