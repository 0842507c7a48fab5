from django.core.management.base import BaseCommand

from api.avatars import sweep


class Command(BaseCommand):
    help = ("Delete avatar blobs that no user row names: those of deleted users whose blob delete "
            "failed, and of uploads that died between writing the blob and recording it.")

    def handle(self, *args, **options):
        counts = sweep()
        self.stdout.write(" ".join(f"{k}={v}" for k, v in counts.items()))
