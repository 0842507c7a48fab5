"""The dashboard's small HTTP client. The dashboard only ever talks to the stack over HTTP: the
controller's API for process status, and the public API through Caddy like any other client."""
from __future__ import annotations

import time

import requests

from workbench.stack import config


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
