"""Settings of the test session. pytest-django imports this before any conftest runs, so the
test stack's data directory and port base are in the environment before Django reads them."""
import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WORKBENCH_DATA_DIR", str(ROOT / ".workbench-test"))
os.environ.setdefault("WORKBENCH_PORT_BASE", "9000")
# `pytest -n N` (pytest-xdist; ./workbench.sh test runs two): each worker gets a stack of its own,
# 700 ports above the last and in its own data directory. A worker inherits the environment of the
# process that started it, so the shift is applied once per worker, marked by name.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if os.environ.get("WORKBENCH_TEST_WORKER") != _worker:
    os.environ["WORKBENCH_TEST_WORKER"] = _worker
    _index = int(_worker[2:]) if _worker.startswith("gw") else 0
    if _index:
        os.environ["WORKBENCH_DATA_DIR"] += f"-{_worker}"
        os.environ["WORKBENCH_PORT_BASE"] = str(int(os.environ["WORKBENCH_PORT_BASE"]) + 700 * _index)
        if "WORKBENCH_SERVICE_PORT_BASE" in os.environ:
            os.environ["WORKBENCH_SERVICE_PORT_BASE"] = str(int(os.environ["WORKBENCH_SERVICE_PORT_BASE"]) + 300 * _index)
os.environ.setdefault("WORKBENCH_SEED_USERS", "300")
os.environ.setdefault("WORKBENCH_SEED_POSTS_PER_USER", "5")
os.environ.setdefault("WORKBENCH_RECONCILE_INTERVAL", "2")
os.environ["WORKBENCH_FAULTS"] = "1"  # lets a request pause at a named point so a test can SIGKILL
os.environ["WORKBENCH_TEST_FAST_PASSWORD_HASHING"] = "1"  # sign-ups cost 0.2 s of CPU each otherwise
# One JWT signing key for this process and the stack it starts (which inherits the environment): the
# stack fixture deletes the data directory, where the key would otherwise be made, after this runs.
os.environ.setdefault("WORKBENCH_JWT_SIGNING_KEY", secrets.token_urlsafe(50))

from workbench.settings import *  # noqa: E402,F401,F403
