"""The dashboard's small HTTP client. The dashboard only ever talks to the stack over HTTP: the
controller's API for process status, and the public API through Caddy like any other client."""
from __future__ import annotations

import json
import time

import requests

from workbench.stack import config

DEMO_ADMIN = "admin"  # workbench/management/commands/demo_accounts.py


class ApiError(RuntimeError):
    """A call that failed, said as what failed and how to fix it (for the page to show as it is).
    `status` is the HTTP status (0 when nothing answered), `field` the field the API named."""

    def __init__(self, message: str, status: int = 0, field: str | None = None):
        super().__init__(message)
        self.status, self.field = status, field


class StackClient:
    def __init__(self, cfg: config.StackConfig | None = None):
        self.cfg = cfg or config.load()
        self.session = requests.Session()

    def _controller_headers(self) -> dict:
        return self.cfg.operator_headers()

    def status(self) -> dict | None:
        try:
            response = self.session.get(self.cfg.controller_url + "/status", headers=self._controller_headers(),
                                        timeout=3)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError):
            return None

    def events(self) -> list[dict]:
        try:
            response = self.session.get(self.cfg.controller_url + "/events", headers=self._controller_headers(),
                                        timeout=3)
            response.raise_for_status()
            return response.json()["events"]
        except (requests.RequestException, ValueError, KeyError):
            return []

    def chaos(self, action: str, role: str | None = None, **extra) -> dict:
        """A chaos action through the controller (workbench/stack/chaos.py); {"error", "field"} when
        it was refused or the controller did not answer."""
        from workbench.stack import launcher
        try:
            return launcher.chaos(self.cfg, action, role, **extra)[1]
        except (requests.RequestException, ValueError) as exc:
            return {"error": f"the controller did not answer: {exc}", "field": None}

    def topology(self) -> dict:
        """The admin topology API through Caddy, with the controller token: the stored topology, the
        changes still pending and the controller's progress; {"error": ...} when it cannot be read."""
        return self._admin("topology")

    def shards(self, n: int | None = None) -> dict:
        """The admin shards API: per-shard counts, the last reshard, the key distribution for n shards."""
        return self._admin("shards", params={"n": n} if n else None)

    def cache(self) -> dict:
        """The admin cache API: each caching layer's counters, the cache Valkey, write-behind, stale reads."""
        return self._admin("cache")

    def readmodel(self) -> dict:
        """The admin read-model API: documents, outbox backlog per shard, staleness."""
        return self._admin("readmodel")

    def ratelimit(self) -> dict:
        """The admin rate-limit API: the limiter's live rules, allowed and limited counts."""
        return self._admin("ratelimit")

    def _admin(self, name: str, params: dict | None = None) -> dict:
        try:
            response = self.session.get(f"{self.cfg.api_url}/api/v1/admin/{name}", params=params,
                                        headers=self._controller_headers(), timeout=5)
            response.raise_for_status()
            return response.json()["data"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            return {"error": str(exc)}

    def probe(self, path: str = "/api/v1/users?limit=1") -> dict:
        """One real request through Caddy: what came back and how long it took, as measured here."""
        started = time.perf_counter()
        try:
            response = self.session.get(self.cfg.api_url + path, timeout=5)
        except requests.RequestException as exc:
            return {"ok": False, "error": str(exc), "ms": (time.perf_counter() - started) * 1000}
        return {"ok": response.ok, "status": response.status_code, "ms": (time.perf_counter() - started) * 1000,
                "app_server": response.headers.get("X-App-Server"), "request_id": response.headers.get("X-Request-Id")}

    def readiness(self) -> dict:
        try:
            return self.session.get(self.cfg.api_url + "/readyz", timeout=5).json()
        except (requests.RequestException, ValueError) as exc:
            return {"status": "unreachable", "detail": str(exc)}

    # --- resharding (the controller's POST /reshard, GET /reshard: workbench/stack/reshardjob.py) ----
    def reshard(self, to: int, strategy: str | None = None) -> dict:
        """Start `manage.py reshard --to N [--strategy S]` as the controller's child; its state (as
        reshard_state). Raises ApiError: refused input names its field, a busy stack says why (409)."""
        body = {"to": to, **({"strategy": strategy} if strategy else {})}
        return self._reshard("POST", body)

    def reshard_state(self) -> dict:
        """{running, pid, to, strategy, started_at, finished_at, returncode, last_line, log}. Raises ApiError."""
        return self._reshard("GET")

    def _reshard(self, method: str, body: dict | None = None) -> dict:
        url = self.cfg.controller_url + "/reshard"
        try:
            response = self.session.request(method, url, json=body, headers=self._controller_headers(), timeout=10)
            answer = response.json()
        except requests.RequestException as exc:
            raise ApiError(f"The stack controller does not answer at `{url}` ({type(exc).__name__}). Start the "
                           "workbench with `python manage.py up`, or check that WORKBENCH_PORT_BASE and "
                           "WORKBENCH_DATA_DIR match the running stack.") from None
        except ValueError:
            raise ApiError(f"The stack controller's answer at `{url}` could not be read (HTTP "
                           f"{response.status_code}): {response.text[:200]}", response.status_code) from None
        code = response.status_code
        if code in (200, 202):
            return answer
        said = answer.get("error") or response.reason
        if code == 400:
            raise ApiError(f"The controller refused the reshard, field `{answer.get('field')}`: {said}. Nothing was "
                           "started.", 400, answer.get("field"))
        if code == 409:
            raise ApiError(f"The controller cannot reshard now: {said}. Nothing was started.", 409, answer.get("field"))
        if code == 401:
            raise ApiError(f"The stack controller refused the token (401): check `{self.cfg.token_file}` "
                           "(WORKBENCH_DATA_DIR).", 401)
        if code == 404:
            raise ApiError("This stack's controller has no /reshard endpoint: it was started before it existed. "
                           "Restart the stack (`python manage.py down`, then `python manage.py up`).", 404)
        raise ApiError(f"The stack controller answered HTTP {code} at `{url}`: {said}.", code)

    # --- saved load-test runs (the controller's GET /runs, GET /runs/{id}) -------------------------
    def runs(self) -> list[dict]:
        """The saved runs in brief, newest first. Raises ApiError."""
        return self._runs(lambda c: c.list()["runs"])

    def run(self, run_id: str) -> dict:
        """One saved run's result, as the controller saved it. Raises ApiError."""
        return self._runs(lambda c: c.get(run_id))

    def _runs(self, fn):
        from workbench.loadgen.client import RunClient, RunError
        try:
            return fn(RunClient(self.cfg))
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise ApiError(f"The stack controller does not answer at `{self.cfg.controller_url}/runs` "
                           f"({type(exc).__name__}). Start the workbench with `python manage.py up`, or check that "
                           "WORKBENCH_PORT_BASE and WORKBENCH_DATA_DIR match the running stack.") from None
        except RunError as exc:
            hint = (f" Check the token in `{self.cfg.token_file}` (WORKBENCH_DATA_DIR)." if exc.status == 401 else "")
            raise ApiError(f"The stack controller refused: {exc} (HTTP {exc.status}).{hint}", exc.status) from None
        except (requests.RequestException, ValueError, KeyError) as exc:
            raise ApiError(f"The stack controller's answer could not be read: {type(exc).__name__}: {exc}.") from None

    # --- signing in, and the signed-in member's own workspace (api/views/workspace.py) ------------
    def demo_credentials(self, username: str = DEMO_ADMIN) -> tuple[str, str]:
        """The demo account's username and password, as `up` saved them in the data directory."""
        path = self.cfg.credentials_file
        fix = (f"Start the stack with `python manage.py up` (it writes them), or run `python manage.py "
               f"demo_accounts` with the same WORKBENCH_DATA_DIR; check that WORKBENCH_DATA_DIR "
               f"({self.cfg.data_dir}) is the running stack's.")
        try:
            accounts = {a["username"]: a for a in json.loads(path.read_text())["accounts"]}
            return username, accounts[username]["password"]
        except FileNotFoundError:
            raise ApiError(f"The dashboard signs in as the demo {username}, but `{path}`, where its password is "
                           f"kept, does not exist. {fix}") from None
        except PermissionError:
            raise ApiError(f"The dashboard cannot read `{path}` (the demo passwords; owner-only): run it as the "
                           "user that started the stack.") from None
        except (ValueError, KeyError, TypeError):
            raise ApiError(f"`{path}` holds no password for the demo {username}. {fix}") from None

    def sign_in(self, username: str, password: str) -> str:
        """An access token for these credentials (POST /api/v1/auth/token)."""
        url = self.cfg.api_url + "/api/v1/auth/token"
        try:
            response = self.session.post(url, json={"username": username, "password": password}, timeout=10)
        except requests.RequestException as exc:
            raise self._unreachable(url, exc) from None
        if response.status_code == 200:
            return response.json()["data"]["access"]
        if response.status_code == 401:
            raise ApiError(f"The API refused the password of `{username}` (401). For the demo accounts the password "
                           f"in `{self.cfg.credentials_file}` no longer matches the stack's: run `python manage.py "
                           "demo_accounts` to set a new one, then reload.", 401, "password")
        raise self._failed("Signing in", response)

    def sign_in_demo(self, username: str = DEMO_ADMIN) -> str:
        return self.sign_in(*self.demo_credentials(username))

    def workspace(self, kind: str, token: str) -> dict:
        """The signed-in member's `kind` document: {kind, data, version, updated_at}."""
        return self._me("GET", f"workspace/{kind}", token)

    def save_workspace(self, kind: str, data: dict, token: str, version: int | None = None) -> dict:
        """Save it; with `version` (the one read), refused with a 409 ApiError if it changed since."""
        body = {"data": data} if version is None else {"data": data, "version": version}
        return self._me("PUT", f"workspace/{kind}", token, body)

    def _me(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        url = f"{self.cfg.api_url}/api/v1/me/{path}"
        try:
            response = self.session.request(method, url, json=body, timeout=10,
                                            headers={"Authorization": f"Bearer {token}"})
        except requests.RequestException as exc:
            raise self._unreachable(url, exc) from None
        if response.status_code == 200:
            return response.json()["data"]
        what = "Reading your workspace" if method == "GET" else "Saving your workspace"
        raise self._failed(what, response)

    def _unreachable(self, url: str, exc: Exception) -> ApiError:
        return ApiError(f"The API does not answer at `{url}` ({type(exc).__name__}). Start the workbench with "
                        "`python manage.py up`, or check that WORKBENCH_PORT_BASE matches the running stack.")

    @staticmethod
    def _failed(what: str, response) -> ApiError:
        """A problem+json answer in words: its detail, the field it names, and what to do."""
        try:
            problem = response.json()
        except ValueError:
            problem = {}
        code = response.status_code
        detail = problem.get("detail") or response.text[:200] or response.reason
        hint = {401: " Reload the page to sign in again.",
                429: f" Retry in {response.headers.get('Retry-After', 'a few')} s.",
                503: " Check the stack with `python manage.py status`."}.get(code, "")
        return ApiError(f"{what} failed: {detail} (HTTP {code}).{hint}", code, problem.get("field"))
