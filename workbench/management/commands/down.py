from django.core.management.base import BaseCommand

from workbench.stack import config, launcher


class Command(BaseCommand):
    help = "Stop everything `up` started, by PID."
    requires_system_checks = []

    def handle(self, *args, **options):
        launcher.down(config.load(), out=self.stdout.write)
