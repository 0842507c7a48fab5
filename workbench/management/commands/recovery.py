"""Measure recovery: SIGKILL a supervised process and time until the controller reports a new,
healthy one. A benchmark, not a test: the figure goes to docs/reliability.md."""
import os
import signal
import statistics
import time

from django.core.management.base import BaseCommand, CommandError

from lessons.client import StackClient


class Command(BaseCommand):
    help = "SIGKILL a process N times and report the time to a healthy replacement."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("name", help="a process name from `status`, e.g. app-2, valkey-cache, pg-primary")
        parser.add_argument("--times", type=int, default=5)
        parser.add_argument("--timeout", type=float, default=120)

    def handle(self, *args, name, times, timeout, **options):
        client = StackClient()
        figures = []
        for attempt in range(1, times + 1):
            before = self._process(client, name)
            if not before["healthy"]:
                raise CommandError(f"{name} is not healthy to begin with")
            killed_at = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)
            deadline = killed_at + timeout
            while time.monotonic() < deadline:
                now = self._process(client, name)
                if now["healthy"] and now["pid"] not in (None, before["pid"]):
                    break
                time.sleep(0.05)
            else:
                raise CommandError(f"{name} was not healthy again within {timeout:.0f}s")
            figures.append(time.monotonic() - killed_at)
            self.stdout.write(f"  #{attempt}: {figures[-1]:.2f}s")
            time.sleep(61)  # past the controller's backoff reset, so every attempt starts alike
        self.stdout.write(f"{name}: SIGKILL to healthy replacement, {times} times: median "
                          f"{statistics.median(figures):.2f}s, max {max(figures):.2f}s")

    def _process(self, client, name):
        state = client.status()
        if not state:
            raise CommandError("the stack controller does not answer")
        for proc in state["processes"]:
            if proc["name"] == name:
                return proc
        raise CommandError(f"no process named {name}")
