"""Shared by the hostile-input tests (tests/test_hostile_*.py): how many cases each tried, written
to tests/artifacts/hostile-counts.json (docs/reliability.md, "Hostile input", quotes them), and
requests sessions that send exactly the headers they are given."""
import contextlib
import fcntl
import json
import os
import threading
import time

import requests
import requests.adapters

from conftest import ARTIFACTS, _send

COUNTS = ARTIFACTS / "hostile-counts.json"
SOAK = os.environ.get("WORKBENCH_SOAK") == "1"  # longer runs: more examples, more clients, longer floods
_lock = threading.Lock()


def record(category: str, **figures) -> None:
    """Merge one category's figures into the counts file and print them (pytest -s shows them)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # A file lock too: with `pytest -n 2` another worker may be writing the same file.
    with _lock, open(ARTIFACTS / "hostile-counts.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counts = json.loads(COUNTS.read_text()) if COUNTS.exists() else {}
        counts[category] = {**figures, "soak": SOAK}
        COUNTS.write_text(json.dumps(counts, indent=2, sort_keys=True))
    print(f"hostile {category}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


class Plain(requests.Session):
    """A session without conftest's operator default: a request without Authorization goes anonymous."""
    request = _send


def new_member(api_url: str, prefix: str) -> tuple[dict, dict]:
    """A member signed up now, with a name unique to the run, and the Authorization header of a token
    of its own (minted with the stack's key, as mint-tokens does)."""
    from api.gateway import auth
    name = f"{prefix}_{time.monotonic_ns() % 10**9}"
    with Plain() as http:
        response = http.post(f"{api_url}/users", json={"username": name, "email": f"{name}@example.org",
                                                       "password": "correct-horse"}, timeout=30)
    assert response.status_code == 201, response.text
    user = response.json()["data"]
    return user, {"Authorization": f"Bearer {auth.access_token(int(user['id']), 'member')}"}


class _From(requests.adapters.HTTPAdapter):
    def __init__(self, address: str):
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str | None) -> Plain:
    """A Plain session whose connections leave from this loopback address (None: the default)."""
    session = Plain()
    if address:
        session.mount("http://", _From(address))
    return session


@contextlib.contextmanager
def unpatched():
    """Every requests session sends exactly its headers meanwhile, not conftest's operator default
    (for libraries that make their own sessions: schemathesis' probe without credentials)."""
    patched = requests.Session.request
    requests.Session.request = _send
    try:
        yield
    finally:
        requests.Session.request = patched
