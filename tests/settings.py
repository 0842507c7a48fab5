"""Settings of the test session. pytest-django imports this before any conftest runs, so the
test stack's data directory and port base are in the environment before Django reads them."""
import os
import secrets
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WORKBENCH_DATA_DIR", str(ROOT / ".workbench-test"))
os.environ.setdefault("WORKBENCH_PORT_BASE", "9000")
os.environ.setdefault("WORKBENCH_SEED_USERS", "300")
os.environ.setdefault("WORKBENCH_SEED_POSTS_PER_USER", "5")
os.environ.setdefault("WORKBENCH_RECONCILE_INTERVAL", "2")
os.environ["WORKBENCH_FAULTS"] = "1"  # lets a request pause at a named point so a test can SIGKILL
os.environ["WORKBENCH_TEST_FAST_PASSWORD_HASHING"] = "1"  # sign-ups cost 0.2 s of CPU each otherwise
# One JWT signing key for this process and the stack it starts (which inherits the environment): the
# stack fixture deletes the data directory, where the key would otherwise be made, after this runs.
os.environ.setdefault("WORKBENCH_JWT_SIGNING_KEY", secrets.token_urlsafe(50))

from workbench.settings import *  # noqa: E402,F401,F403
