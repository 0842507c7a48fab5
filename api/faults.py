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
    """Pause here if this request asked for it: `X-Workbench-Pause: name` (60 s) or `name:seconds`."""
    if not ENABLED:
        return
    wanted, _, seconds = getattr(_local, "pause", "").partition(":")
    if wanted == name:
        time.sleep(min(float(seconds or 60), 120))
