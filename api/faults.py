"""Test-only fault points: a request may ask to pause at a named point, so a test can SIGKILL the
app server in the middle of a protocol, or to fail with an unhandled exception where its view
would run (`X-Workbench-Fault`), so a test can see error tracking (api/errors.py) group it. Off
unless WORKBENCH_FAULTS=1 (the test stack sets it)."""
import os
import threading
import time

ENABLED = os.environ.get("WORKBENCH_FAULTS") == "1"
_local = threading.local()


def arm(request) -> None:
    _local.pause = request.headers.get("X-Workbench-Pause", "") if ENABLED else ""
    _local.fault = request.headers.get("X-Workbench-Fault", "") if ENABLED else ""


def disarm() -> None:
    _local.pause = _local.fault = ""


def point(name: str) -> None:
    """Pause here if this request asked for it: `X-Workbench-Pause: name` (60 s) or `name:seconds`."""
    if not ENABLED:
        return
    wanted, _, seconds = getattr(_local, "pause", "").partition(":")
    if wanted == name:
        time.sleep(min(float(seconds or 60), 120))


def raise_if_asked() -> None:
    """Fail like a bug if this request asked for it: `X-Workbench-Fault: raise` (a RuntimeError whose
    message differs per call, so a test sees the message not split the group) or `raise:lookup` (a
    KeyError raised elsewhere: another group)."""
    if not ENABLED:
        return
    fault = getattr(_local, "fault", "")
    if fault == "raise":
        raise RuntimeError(f"injected fault at {time.time():.6f}")
    if fault == "raise:lookup":
        _lookup({})


def _lookup(table: dict) -> None:
    table[f"missing-{time.time():.6f}"]  # noqa: B018 - the KeyError is the point
