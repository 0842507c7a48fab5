"""Test-only fault points: a request may ask to pause at a named point, so a test can SIGKILL the
app server in the middle of a protocol. Off unless WORKBENCH_FAULTS=1 (the test stack sets it)."""
import os
import threading
import time

ENABLED = os.environ.get("WORKBENCH_FAULTS") == "1"
_local = threading.local()


def arm(request) -> None:
    _local.pause = request.headers.get("X-Workbench-Pause", "") if ENABLED else ""


def disarm() -> None:
    _local.pause = ""


def point(name: str) -> None:
    """Pause here for up to 60 s if this request asked for it."""
    if ENABLED and getattr(_local, "pause", "") == name:
        time.sleep(60)
