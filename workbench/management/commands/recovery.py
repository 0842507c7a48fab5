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
        figures, noticed, rejoined = [], [], []
        for attempt in range(1, times + 1):
            before = self._process(client, name)
            if not before["healthy"]:
                raise CommandError(f"{name} is not healthy to begin with")
            killed_at = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)
            deadline = killed_at + timeout
            out_at = None
            while time.monotonic() < deadline:
                state = client.status()
                now = self._process(client, name, state)
                in_rotation = self._in_rotation(state, name)
                if out_at is None and in_rotation is False:
                    out_at = time.monotonic()  # the controller took the replica out of rotation
                if now["healthy"] and now["pid"] not in (None, before["pid"]) and in_rotation is not False:
                    break
                time.sleep(0.02)
            else:
                raise CommandError(f"{name} was not healthy again within {timeout:.0f}s")
            figures.append(time.monotonic() - killed_at)
            line = f"  #{attempt}: healthy again after {figures[-1]:.2f}s"
            if out_at is not None:
                noticed.append(out_at - killed_at)
                rejoined.append(figures[-1])
                line += f"; out of rotation after {noticed[-1]:.3f}s"
            self.stdout.write(line)
            time.sleep(61 if attempt < times else 0)  # past the controller's backoff reset, so every attempt starts alike
        self.stdout.write(f"{name}: SIGKILL to healthy replacement, {times} times: median "
                          f"{statistics.median(figures):.2f}s, max {max(figures):.2f}s")
        if noticed:
            self.stdout.write(f"{name}: SIGKILL to out of rotation (the controller noticed): median "
                              f"{statistics.median(noticed):.3f}s, max {max(noticed):.3f}s; back in rotation "
                              f"after median {statistics.median(rejoined):.2f}s")

    @staticmethod
    def _in_rotation(state, name):
        """For a replica: whether the controller's report has it in rotation; None for other processes."""
        node = ((state or {}).get("data_nodes") or {}).get("nodes", {}).get(name)
        return None if node is None else bool(node.get("healthy"))

    def _process(self, client, name, state=None):
        state = state or client.status()
        if not state:
            raise CommandError("the stack controller does not answer")
        for proc in state["processes"]:
            if proc["name"] == name:
                return proc
        raise CommandError(f"no process named {name}")
